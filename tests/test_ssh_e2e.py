"""
git over SSH end to end: the real daemon, OpenSSH's client and the real git.
Clone, fetch and push in protocol v0 and v2, two users whose rights differ,
keys refused and added while running, everything that is not git refused
with a message, command injection running nothing, a push killed midway
leaving no child and no lock; the clone compared with git daemon's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.doors import (
    GIT_LISTEN,
    SSH_LISTEN,
    SSHUser,
    doorPort,
    makeKey,
    startGitDaemon,
)

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ssh"], capture_output=True).returncode != 0,
    reason="needs OpenSSH's client (Debian openssh-client)",
)

# Only bob is refused by this repository's hook: rights that differ by user,
# decided by what the SSH door tells hooks (REMOTE_USER).
GUARD_HOOK = """#!/bin/sh
if [ "$REMOTE_USER" = bob ]; then
    echo "bob may not push to guarded.git" >&2
    exit 1
fi
"""


class Setup:
    """One daemon for the module: its root, keys directory, and two users."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "srv"
        self.root.mkdir()
        self.keys = base / "keys"
        (self.keys / "laptops").mkdir(parents=True)
        self.git = GitClient(base / "client-home")
        self.work = base / "seed"
        self.head = self.git.seed(self.work, self.root / "app.git")
        self.git.run("push", "-q", str(self.root / "app.git"), "main:side", cwd=self.work)
        self.git.run("config", "core.logAllRefUpdates", "true", cwd=self.root / "app.git")
        self.git.seed(base / "seed2", self.root / "guarded.git")
        hook = self.root / "guarded.git" / "hooks" / "pre-receive"
        hook.write_text(GUARD_HOOK)
        hook.chmod(0o755)
        aliceKey = makeKey(base / "alice")
        (self.keys / "alice.pub").write_text((base / "alice.pub").read_text())
        bobKey = makeKey(base / "bob")
        (self.keys / "laptops" / "bob@laptop.pub").write_text((base / "bob.pub").read_text())
        self.daemon: Daemon = startDaemon(
            self.root,
            "--listen-ssh",
            SSH_LISTEN,
            "--listen-git",
            GIT_LISTEN,
            "--ssh-keys",
            str(self.keys),
            "--ssh-host-key",
            str(base / "host_key"),
        )
        port = doorPort(self.daemon, SSH_LISTEN)
        self.gitPort = doorPort(self.daemon, GIT_LISTEN)
        self.alice = SSHUser(self.git, aliceKey, port)
        self.bob = SSHUser(self.git, bobKey, port)
        self.port = port


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The module's daemon, stopped after its last test."""
    built = Setup(tmp_path_factory.mktemp("ssh"))
    yield built
    built.daemon.stop()


@pytest.mark.parametrize("version", ["0", "2"])
def test_cloneFetchPush(setup: Setup, tmp_path: Path, version: str) -> None:
    """Clone, push and fetch over SSH in protocol v0 and v2; the log names ssh and the key."""
    alice = setup.alice
    clone = tmp_path / "clone"
    alice.run("-c", f"protocol.version={version}", "clone", "-q", alice.url("app.git"), str(clone))
    assert setup.git.output("rev-parse", "origin/side", cwd=clone) == setup.head
    new = setup.git.commit(clone, f"v{version}.txt", "pushed over ssh\n")
    alice.run("-c", f"protocol.version={version}", "push", "-q", "origin", "main", cwd=clone)
    assert setup.git.output("rev-parse", "main", cwd=setup.root / "app.git") == new
    # The scp-like form (a relative path; the port is in GIT_SSH_COMMAND),
    # and a fetch into that second clone.
    other = tmp_path / "other"
    alice.run("clone", "-q", "git@127.0.0.1:app.git", str(other))
    setup.git.commit(clone, f"more{version}.txt", "more\n")
    alice.run("push", "-q", "origin", "main", cwd=clone)
    alice.run("-c", f"protocol.version={version}", "fetch", "-q", "origin", cwd=other)
    assert setup.git.output("rev-parse", "origin/main", cwd=other) == setup.git.output(
        "rev-parse", "main", cwd=clone
    )
    setup.git.run("fsck", "--strict", cwd=other)
    line = re.compile(
        rf"git git-upload-pack repo=app\.git user=alice protocol=v{version} "
        r"remote=127\.0\.0\.1 exit=0 .* "
        r"transport=ssh key=SHA256:\S+"
    )
    assert line.search(setup.daemon.log), setup.daemon.log[-3000:]
    reflog = setup.git.output("log", "-g", "--format=%gn <%ge>", "main", cwd=setup.root / "app.git")
    assert "alice <alice@ssh.127.0.0.1>" in reflog


def test_tildePaths(setup: Setup, tmp_path: Path) -> None:
    """~/app.git (scp-like or ssh://) is the root's app.git; ~alice/ is refused in one line."""
    alice = setup.alice
    for url in ("git@127.0.0.1:~/app.git", f"ssh://git@127.0.0.1:{setup.port}/~/app.git"):
        assert "refs/heads/main" in alice.run("ls-remote", url).stdout, url
    alice.run("clone", "-q", "git@127.0.0.1:~/app.git", str(tmp_path / "clone"))
    other = f"ssh://git@127.0.0.1:{setup.port}/~alice/app.git"
    refused = alice.run("ls-remote", other, check=False)
    assert refused.returncode != 0
    assert refused.stderr.startswith("fatal: ~user paths are not served here"), refused.stderr


def test_twoUsersDifferentRights(setup: Setup, tmp_path: Path) -> None:
    """The key decides the user: bob is refused by the hook (with its message), alice is not."""
    for user, name in ((setup.bob, "bob"), (setup.alice, "alice")):
        clone = tmp_path / name
        user.run("clone", "-q", user.url("guarded.git"), str(clone))
        setup.git.commit(clone, f"{name}.txt", f"{name}\n")
        result = user.run("push", "origin", "main", cwd=clone, check=False)
        if name == "bob":
            assert result.returncode != 0
            assert "remote: bob may not push to guarded.git" in result.stderr
        else:
            assert result.returncode == 0, result.stderr


def test_unknownKeyThenAdded(setup: Setup, tmp_path: Path) -> None:
    """An unknown key fails authentication; copied into the keys directory, it works at once."""
    carol = SSHUser(setup.git, makeKey(tmp_path / "carol"), setup.port)
    result = carol.run("ls-remote", carol.url("app.git"), check=False)
    assert result.returncode != 0
    assert "Permission denied (publickey)" in result.stderr
    (setup.keys / "laptops" / "carol@work.pub").write_text((tmp_path / "carol.pub").read_text())
    result = carol.run("ls-remote", carol.url("app.git"))
    assert "refs/heads/main" in result.stdout
    assert setup.daemon.waitForLog("user=carol ")


def test_greeting(setup: Setup) -> None:
    """ssh without a command greets the user with the repositories they can read and push."""
    result = setup.alice.ssh("git@127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert "hello alice" in result.stdout
    assert " R W\tapp.git" in result.stdout and " R W\tguarded.git" in result.stdout


def test_notGitRefused(setup: Setup) -> None:
    """pty, subsystems, forwarding and other commands are refused with a line the user sees."""
    # A forced terminal: OpenSSH says the pty was refused, and gives up.
    pty = setup.alice.ssh("-tt", "git@127.0.0.1")
    assert pty.returncode == 255
    assert "PTY allocation request failed" in pty.stderr
    sftp = setup.alice.ssh("-s", "git@127.0.0.1", "sftp")
    assert sftp.returncode == 1
    assert "no subsystems" in sftp.stderr
    # OpenSSH prints the server's reason at its default log level.
    forward = setup.alice.ssh("-W", "127.0.0.1:22", "git@127.0.0.1", logLevel="INFO")
    assert forward.returncode != 0
    assert "forwarding is not available" in forward.stderr
    agent = setup.alice.ssh("-A", "git@127.0.0.1", "git-upload-pack '/nothing'")
    assert "fatal: '/nothing' does not appear to be a git repository" in agent.stderr
    shell = setup.alice.ssh("git@127.0.0.1", "ls /")
    assert shell.returncode == 128
    assert "fatal: unrecognized command" in shell.stderr and shell.stdout == ""


def archiveFiles(
    runner: Callable[..., subprocess.CompletedProcess[str]], remote: str, tar: Path
) -> list[str]:
    """C{git archive --remote=<remote> --format=tar HEAD}, listed by C{tar t}."""
    runner("archive", f"--remote={remote}", "--format=tar", "-o", str(tar), "HEAD")
    listing = subprocess.run(["tar", "tf", str(tar)], capture_output=True, text=True, check=True)
    return listing.stdout.split()


def test_archiveWhereAllowed(setup: Setup, tmp_path: Path) -> None:
    """git archive --remote lists the files where daemon.uploadarch is true, URL or scp-like."""
    setup.git.seed(tmp_path / "work", setup.root / "archived.git", daemon__uploadarch="true")
    alice = setup.alice
    files = archiveFiles(alice.run, alice.url("archived.git"), tmp_path / "a.tar")
    assert files == ["a.txt"]
    assert archiveFiles(alice.run, "git@127.0.0.1:archived.git", tmp_path / "b.tar") == files
    line = re.compile(
        # The version the client asked for (upload-archive itself has one).
        r"git git-upload-archive repo=archived\.git user=alice protocol=v\d "
        r"remote=127\.0\.0\.1 exit=0 .* transport=ssh key=SHA256:\S+"
    )
    assert setup.daemon.waitForLog("git git-upload-archive repo=archived.git")
    assert line.search(setup.daemon.log), setup.daemon.log[-3000:]


def test_archiveUnreachableAsTheRepositorySays(setup: Setup, tmp_path: Path) -> None:
    """An unreachable commit is archived only where uploadarchive.allowUnreachable says so."""
    repository = setup.root / "loose.git"
    setup.git.seed(tmp_path / "work", repository, daemon__uploadarch="true")
    tree = setup.git.output("rev-parse", "HEAD^{tree}", cwd=repository)
    loose = setup.git.output("commit-tree", "-m", "on no branch", tree, cwd=repository)
    url = setup.alice.url("loose.git")
    refused = setup.alice.run("archive", f"--remote={url}", loose, check=False)
    assert refused.returncode != 0
    assert "no such ref" in refused.stderr, refused.stderr
    setup.git.run("config", "uploadarchive.allowUnreachable", "true", cwd=repository)
    assert archiveFiles(setup.alice.run, url, tmp_path / "loose.tar") == ["a.txt"]


def test_archiveRefused(setup: Setup, tmp_path: Path) -> None:
    """Without daemon.uploadarch the user is told so in one line, and git archive fails."""
    result = setup.alice.run(
        "archive", f"--remote={setup.alice.url('app.git')}", "HEAD", check=False
    )
    assert result.returncode != 0
    assert "fatal: Service not enabled: 'upload-archive'" in result.stderr
    assert result.stdout == ""


def test_injectionRunsNothing(setup: Setup, tmp_path: Path) -> None:
    """Injection attempts are refused with status 128 and run nothing."""
    marker = tmp_path / "pwned"
    for command in [
        f"git-upload-pack '/app.git'; touch {marker}",
        f"git-upload-pack '/app.git' && touch {marker}",
        f"git-upload-pack `touch {marker}`",
        f"git-upload-pack $(touch {marker})",
        f"git-upload-pack '/app.git'`touch {marker}`",
        f"git-upload-pack '$(touch {marker})'",
        f"git-upload-pack '`touch {marker}`'",
        "git-upload-pack '../app.git'",
        "git-upload-pack '/../srv/app.git'",
        "git-upload-pack '/app.git\ntouch x'",
        "git-upload-pack '--help'",
        f"touch {marker}",
        "rm -rf /",
    ]:
        result = setup.alice.ssh("git@127.0.0.1", command)
        assert result.returncode == 128, (command, result.stderr)
        assert result.stderr.startswith("fatal: "), (command, result.stderr)
        assert result.stdout == "", command
    assert not marker.exists()
    assert not (setup.root / "x").exists()


def test_cloneMatchesGitDaemon(setup: Setup, tmp_path: Path) -> None:
    """An SSH clone and a clone from git daemon of the same repository are the same."""
    reference = startGitDaemon(setup.git, setup.root, "--export-all")
    try:
        ours = setup.alice.run("ls-remote", setup.alice.url("app.git")).stdout
        theirs = setup.git.run("ls-remote", reference.url("app.git")).stdout
        assert ours == theirs
        for name, url, runner in (
            ("ssh", setup.alice.url("app.git"), setup.alice.run),
            ("daemon", reference.url("app.git"), setup.git.run),
        ):
            runner("clone", "-q", "--mirror", url, str(tmp_path / name))
        assert setup.git.output("for-each-ref", cwd=tmp_path / "ssh") == setup.git.output(
            "for-each-ref", cwd=tmp_path / "daemon"
        )
    finally:
        reference.stop()


def test_pushKilledMidwayLeavesNothing(setup: Setup, tmp_path: Path) -> None:
    """A client killed during a large push over SSH leaves no git child and no lock."""
    clone = tmp_path / "clone"
    setup.alice.run("clone", "-q", setup.alice.url("app.git"), str(clone))
    before = setup.git.output("rev-parse", "main", cwd=setup.root / "app.git")
    (clone / "big.bin").write_bytes(os.urandom(24 * 1024 * 1024))
    setup.git.run("add", "big.bin", cwd=clone)
    setup.git.run("commit", "-q", "-m", "big", cwd=clone)
    push = subprocess.Popen(
        ["git", "push", "origin", "main"],
        cwd=clone,
        env={**setup.git.env, "GIT_SSH_COMMAND": setup.alice.sshCommand},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert setup.daemon.startedChildren(timeout=30), "git never started"
        time.sleep(0.3)
    finally:
        os.killpg(push.pid, signal.SIGKILL)
        push.wait()
    assert setup.daemon.settledChildren(timeout=20) == []
    repository = setup.root / "app.git"
    assert setup.git.output("rev-parse", "main", cwd=repository) == before
    assert list(repository.rglob("*.lock")) == []
