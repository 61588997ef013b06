"""
Shared end-to-end machinery: an isolated git client and the real daemon.

The daemon is started exactly as a user starts it (`twistd -n gitserve ...`),
from this checkout (the repository root goes on PYTHONPATH, because twistd
finds plugins by scanning sys.path, which an editable install may not cover),
on a port the kernel picks; the test waits for its readiness line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.rawhttp import pushCommands

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"gitserve listening on ([0-9.]+):(\d+)")
START_TIMEOUT = 30.0

# Whether the daemons move bodies to plain sockets in the kernel (git's
# output with splice(2), dumb files with sendfile(2)): GITSERVE_TEST_DAEMON_ARGS
# may turn it off for a whole suite, and the behaviour tests then prove the
# fallback path.
SPLICING = "--no-splice" not in os.environ.get("GITSERVE_TEST_DAEMON_ARGS", "")
spliceOn = pytest.mark.skipif(not SPLICING, reason="the suite runs with --no-splice")


@dataclass
class GitClient:
    """The real git CLI with a private config: nothing from the machine leaks in."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".gitconfig").write_text(
            "[user]\n\tname = Test User\n\temail = test@example.com\n"
            "[init]\n\tdefaultBranch = main\n"
            "[advice]\n\tdetachedHead = false\n"
        )
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(self.home / ".gitconfig"),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "",
            "SSH_ASKPASS": "",
            "LANG": "C",
            "LC_ALL": "C",
        }

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        """Run git; with C{check}, a failure shows git's own output."""
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def output(self, *args: str, cwd: Path | None = None) -> str:
        return self.run(*args, cwd=cwd).stdout.strip()

    def commit(self, worktree: Path, name: str, content: str, message: str | None = None) -> str:
        """Write a file, commit it, return the new commit id."""
        path = worktree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        self.run("add", name, cwd=worktree)
        self.run("commit", "-q", "-m", message or f"change {name}", cwd=worktree)
        return self.output("rev-parse", "HEAD", cwd=worktree)

    def pushBody(self, work: Path, old: str, new: str, ref: str = "refs/heads/main") -> bytes:
        """
        The body a v0 push of C{ref} from C{old} to C{new} sends: the command
        (with report-status), a flush, and the pack git builds for it.
        """
        pack = subprocess.run(
            ["git", "pack-objects", "--stdout", "--revs", "-q"],
            input=f"{new}\n^{old}\n".encode(),
            cwd=work,
            env=self.env,
            capture_output=True,
            check=True,
        ).stdout
        return pushCommands(old, new, ref) + pack

    def seed(self, work: Path, repo: Path, **config: str) -> str:
        """A worktree with one commit, pushed to main of a new bare C{repo}; the commit."""
        self.run("init", "-q", str(work))
        head = self.commit(work, "a.txt", "a\n")
        self.bare(repo, **config)
        self.run("push", "-q", str(repo), "main", cwd=work)
        return head

    def bare(self, path: Path, **config: str) -> Path:
        """A new bare repository with C{section.key=value} settings."""
        self.run("init", "-q", "--bare", str(path))
        for key, value in config.items():
            self.run("config", "-f", str(path / "config"), key.replace("__", "."), value)
        return path


@dataclass
class Daemon:
    """A running `twistd -n gitserve`, with its log collected."""

    process: subprocess.Popen[str]
    host: str
    port: int
    lines: list[str]
    scratch: Path | None = None

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def rss(self) -> int:
        """The daemon's own resident memory in bytes (children not included)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def children(self) -> list[int]:
        """Pids of the daemon's live child processes (git)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def startedChildren(self, timeout: float = 10.0) -> list[int]:
        """The daemon's children once there is one (or none after C{timeout})."""
        deadline = time.monotonic() + timeout
        while not (children := self.children()) and time.monotonic() < deadline:
            time.sleep(0.01)
        return children

    def settledChildren(self, timeout: float = 10.0) -> list[int]:
        """
        The daemon's children once none is left, or those still alive after
        C{timeout}: a child ends a moment after its request does.
        """
        deadline = time.monotonic() + timeout
        while (children := self.children()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return children

    def waitForLog(self, text: str, timeout: float = 10.0) -> bool:
        """
        Whether C{text} is in the log within C{timeout}: a git child's lines
        (its stderr, its operation line) come when it exits, which may be a
        moment after the client got the whole answer.
        """
        deadline = time.monotonic() + timeout
        while text not in self.log:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def written(self) -> int:
        """
        The bytes the daemon's write(2)-family calls and sendfile(2) moved
        (C{wchar} in C{/proc/PID/io}). A socket's send(2), which Twisted
        writes with, is not counted: what grows by a download's size is what
        sendfile(2) sent.
        """
        for line in Path(f"/proc/{self.pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
        raise AssertionError("no wchar")

    def openFds(self) -> int:
        """How many file descriptors the daemon holds open."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def settledFds(self, atMost: int, timeout: float = 10.0) -> int:
        """
        The daemon's open descriptors once they are down to C{atMost}, or
        the count after C{timeout}: a peer's close reaches the reactor a
        moment later on a loaded machine.
        """
        deadline = time.monotonic() + timeout
        while (count := self.openFds()) > atMost and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def daemonCommand(*args: str, prelude: str = "") -> list[str]:
    """
    The twistd command line for gitserve with C{args}, run by this interpreter,
    after the Python statements in C{prelude} (a soak's memory tracer).
    """
    return [
        sys.executable,
        "-c",
        prelude + "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "--logfile=-",
        "gitserve",
        *args,
    ]


# What the daemon inherits from the test process, and nothing else: enough to
# find python, git and this checkout (dulwich's compat tests do the same).
# HOME, XDG_CONFIG_HOME and every GIT_* variable are left behind, so that a
# developer's ~/.gitconfig or a CI runner's git settings never reach the
# daemon or the git it runs.
INHERITED_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG")


def daemonEnvironment(home: Path, **extra: str) -> dict[str, str]:
    """
    The daemon's whole environment: an allowlist of this process's variables,
    C{home} as HOME, git's system config off and a private empty global one.

    @param home: a private directory, created if missing; the git the daemon
        runs reads C{home/.gitconfig} (the daemon passes HOME on to it).
    @param extra: variables set on top, last.
    """
    home.mkdir(parents=True, exist_ok=True)
    globalConfig = home.parent / f"{home.name}-global.gitconfig"
    globalConfig.touch()
    environ = {name: os.environ[name] for name in INHERITED_ENVIRONMENT if name in os.environ}
    environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPOSITORY_ROOT), *filter(None, [environ.get("PYTHONPATH")])]
    )
    environ.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(globalConfig),
        GIT_TERMINAL_PROMPT="0",
    )
    environ.update(extra)
    return environ


def startDaemon(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    home: Path | None = None,
    listen: str = "tcp:0:interface=127.0.0.1",
    prelude: str = "",
) -> Daemon:
    """
    Start the daemon on C{root} and wait until it says where it listens.

    @param args: more gitserve options.
    @param env: variables set on top of L{daemonEnvironment}'s isolated
        environment (never this process's whole environment).
    @param home: the daemon's HOME (default: a new private directory, removed
        when the daemon stops).
    @param prelude: Python run in the daemon's process before twistd.
    """
    scratch = None
    if home is None:
        scratch = Path(tempfile.mkdtemp(prefix="gitserve-daemon-"))
        home = scratch / "home"
    environ = daemonEnvironment(home, **(env or {}))
    process = subprocess.Popen(
        # GITSERVE_TEST_DAEMON_ARGS runs a whole suite with more options on
        # (e.g. "--pack-cache DIR", to prove the cache changes no answer).
        daemonCommand(
            "--root",
            str(root),
            "--listen",
            listen,
            *args,
            *os.environ.get("GITSERVE_TEST_DAEMON_ARGS", "").split(),
            prelude=prelude,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environ,
    )
    lines: list[str] = []
    ready = threading.Event()
    found: list[tuple[str, int]] = []

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            match = READY.search(line)
            if match and not found:
                found.append((match.group(1), int(match.group(2))))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not found:
        process.kill()
        process.wait()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise AssertionError("gitserve did not start:\n" + "".join(lines))
    host, port = found[0]
    return Daemon(process, host, port, lines, scratch)


def freePort() -> int:
    """
    A loopback port nobody listens on now: for servers that cannot report
    the port they took (git daemon, sshd, HAProxy, a replica restarted on the
    same port).
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bigRepository(git: GitClient, root: Path, work: Path, megabytes: int) -> str:
    """
    C{root/big.git}, holding one commit with an incompressible blob of
    C{megabytes}: a pack larger than any socket buffer. Returns the commit id.
    """
    git.run("init", "-q", str(work))
    (work / "blob.bin").write_bytes(os.urandom(megabytes * 1024 * 1024))
    git.run("add", "blob.bin", cwd=work)
    git.run("commit", "-q", "-m", "big", cwd=work)
    git.bare(root / "big.git")
    git.run("push", "-q", str(root / "big.git"), "main", cwd=work)
    return git.output("rev-parse", "HEAD", cwd=work)


def startUploadPack(daemon: Daemon, body: bytes) -> socket.socket:
    """
    Send an upload-pack request on a raw socket with a small receive buffer,
    and return the socket unread: a client that reads at its own pace.
    """
    sock = socket.create_connection((daemon.host, daemon.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(
        b"POST /big.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-git-upload-pack-request\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return sock


@pytest.fixture
def git(tmp_path: Path) -> GitClient:
    """A git client with an isolated HOME and config."""
    return GitClient(tmp_path / "client-home")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty directory to serve."""
    path = tmp_path / "srv"
    path.mkdir()
    return path


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons started in a test, all stopped after it."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.fixture
def serve(daemons: list[Daemon]):
    """Start gitserve on a root with options; stopped at the end of the test."""

    def start(root: Path, *args: str, **kwargs: object) -> Daemon:
        daemon = startDaemon(root, *args, **kwargs)  # type: ignore[arg-type]
        daemons.append(daemon)
        return daemon

    return start


@pytest.fixture
def populated(git: GitClient, root: Path, tmp_path: Path) -> Path:
    """A worktree with three commits on main, pushed straight to root/project.git."""
    work = tmp_path / "work"
    git.run("init", "-q", str(work))
    for i in range(3):
        git.commit(work, f"file{i}.txt", f"content {i}\n" * (i + 1))
    git.bare(root / "project.git")
    git.run("push", "-q", str(root / "project.git"), "main", cwd=work)
    return work
