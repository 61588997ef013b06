"""
End-to-end helpers for the SSH and git:// doors: their ports from the
daemon's readiness lines, OpenSSH's client as git runs it, and the real
`git daemon` to compare git:// answers with.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import Daemon, GitClient, freePort

# Distinct descriptions for the three listeners, so each readiness line says
# which door it is (all three bind a free loopback port).
SSH_LISTEN = "tcp:port=0:interface=127.0.0.1"
GIT_LISTEN = "tcp:interface=127.0.0.1:port=0"


def doorPort(daemon: Daemon, description: str, timeout: float = 30.0) -> int:
    """The port the listener of C{description} bound, from its readiness line."""
    pattern = re.compile(rf"gitserve listening on [0-9.]+:(\d+) \({re.escape(description)}\)")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = pattern.search(daemon.log)
        if match:
            return int(match.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no listener for {description}:\n{daemon.log}")


def makeKey(path: Path) -> Path:
    """A new ed25519 key pair at C{path} (and C{path}.pub), as a user makes one."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def sshOptions(port: int, key: Path, logLevel: str = "ERROR") -> list[str]:
    """OpenSSH options for the test server: this key only, no known_hosts, no prompts."""
    return ["-p", str(port), *sshClientOptions(key, logLevel)]


def sshClientOptions(key: Path, logLevel: str = "ERROR") -> list[str]:
    """
    OpenSSH client options for a private server on loopback (gitserve's, or a
    reference sshd in the benchmark): this key only, no known_hosts, no prompts.
    """
    return [
        "-i",
        str(key),
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        f"LogLevel={logLevel}",
    ]


@dataclass
class SSHUser:
    """A user's key and a git client that uses it over SSH."""

    git: GitClient
    key: Path
    port: int

    @property
    def sshCommand(self) -> str:
        return "ssh " + " ".join(sshOptions(self.port, self.key))

    def url(self, path: str) -> str:
        return f"ssh://git@127.0.0.1:{self.port}/{path.lstrip('/')}"

    def run(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """git with GIT_SSH_COMMAND set to this user's key."""
        env = {"GIT_SSH_COMMAND": self.sshCommand, **kwargs.pop("env", {})}  # type: ignore[dict-item]
        return self.git.run(*args, env=env, **kwargs)  # type: ignore[arg-type]

    def ssh(
        self, *args: str, timeout: float = 30, logLevel: str = "ERROR"
    ) -> subprocess.CompletedProcess[str]:
        """The ssh client itself, with C{args} after the options."""
        return subprocess.run(
            ["ssh", *sshOptions(self.port, self.key, logLevel), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=self.git.env,
        )


@dataclass
class GitDaemon:
    """A running `git daemon`, the reference for git:// answers."""

    process: subprocess.Popen[bytes]
    port: int

    def url(self, path: str) -> str:
        return f"git://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def startGitDaemon(git: GitClient, root: Path, *args: str) -> GitDaemon:
    """`git daemon --base-path=root` on a free loopback port, once it accepts connections."""
    port = freePort()
    process = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={root}",
            *args,
        ],
        env=git.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return GitDaemon(process, port)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError("git daemon did not start")
