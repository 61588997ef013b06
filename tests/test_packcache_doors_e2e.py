"""
The pack cache through the full-duplex doors: protocol v2 over SSH and git://
answered request by request, so that their fetches share answers as HTTP's
do; and a push over SSH is in the next fetch.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.doors import GIT_LISTEN, SSH_LISTEN, SSHUser, doorPort, makeKey
from tests.test_packcache_e2e import cacheFields, daemonHome, settle, settleDaemon, slowHook

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "ssh"], capture_output=True).returncode != 0,
    reason="needs OpenSSH's client (Debian openssh-client)",
)


class Setup:
    """One daemon with --pack-cache behind SSH and git://, and a user with a key."""

    def __init__(self, base: Path) -> None:
        self.root = base / "srv"
        self.root.mkdir()
        keys = base / "keys"
        keys.mkdir()
        self.git = GitClient(base / "client-home")
        # One repository per door, and one for the push test: the doors
        # share kept answers (a request's key does not name its door), which
        # the push test shows, so tests sharing a repository would see each
        # other's entries in whatever order they run.
        for name in ("ssh", "git", "push"):
            work = base / f"seed-{name}"
            self.git.seed(work, self.root / f"{name}.git")
            for file in ("b.txt", "c.txt"):
                self.git.commit(work, file, f"{file}\n")
            self.git.run("push", "-q", str(self.root / f"{name}.git"), "main", cwd=work)
        (keys / "alice.pub").write_text(makeKey(base / "alice").with_suffix(".pub").read_text())
        settle(self.root)
        home = daemonHome(base)
        self.daemon: Daemon = startDaemon(
            self.root,
            "--pack-cache",
            str(base / "cache"),
            "--listen-ssh",
            SSH_LISTEN,
            "--listen-git",
            GIT_LISTEN,
            "--ssh-keys",
            str(keys),
            "--ssh-host-key",
            str(base / "host_key"),
            home=home,
        )
        settleDaemon(home)
        self.alice = SSHUser(self.git, base / "alice", doorPort(self.daemon, SSH_LISTEN))
        self.gitBase = f"git://127.0.0.1:{doorPort(self.daemon, GIT_LISTEN)}"

    def clone(self, door: str, repository: str, destination: Path) -> None:
        """A protocol v2 clone of C{repository} through C{door}, checked whole."""
        config = ("-c", "protocol.version=2")
        if door == "ssh":
            self.alice.run(*config, "clone", "-q", self.alice.url(repository), str(destination))
        else:
            url = f"{self.gitBase}/{repository}"
            self.git.run(*config, "clone", "-q", url, str(destination))
        self.git.run("fsck", "--strict", "--no-progress", cwd=destination)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The module's daemon, stopped after its last test."""
    built = Setup(tmp_path_factory.mktemp("cachedoors"))
    yield built
    built.daemon.stop()


def refsOf(git: GitClient, clone: Path) -> str:
    return git.output("for-each-ref", "--format=%(objectname) %(refname)", cwd=clone)


@pytest.mark.parametrize("door", ["ssh", "git"])
def test_clonesShareOneAnswer(setup: Setup, tmp_path: Path, door: str) -> None:
    """Three v2 clones through one door: git twice (kept on the second ask), then a hit."""
    before = len(cacheFields(setup.daemon))
    clones = [tmp_path / f"clone{i}" for i in range(3)]
    for clone in clones:
        setup.clone(door, f"{door}.git", clone)
    fields = cacheFields(setup.daemon, before + 3)[before:]
    assert fields == ["lead", "lead", "hit"], setup.daemon.log[-3000:]
    refs = {refsOf(setup.git, clone) for clone in clones}
    assert len(refs) == 1
    assert setup.git.output("rev-parse", "HEAD", cwd=clones[2]) == setup.git.output(
        "rev-parse", "main", cwd=setup.root / f"{door}.git"
    )
    user = "alice" if door == "ssh" else "daemon"
    hit = [line for line in setup.daemon.lines if "cache=hit" in line][-1]
    assert f"user={user} protocol=v2" in hit and f"transport={door}" in hit, hit


def test_pushOverSSHThenFetchHasTheNewObjects(setup: Setup, tmp_path: Path) -> None:
    """After a push over SSH the next clones get the new commit; git:// hits what SSH kept."""
    work = tmp_path / "work"
    setup.clone("ssh", "push.git", work)
    new = setup.git.commit(work, "pushed.txt", "over ssh\n")
    setup.alice.run("push", "-q", "origin", "main", cwd=work)
    settle(setup.root / "push.git")
    before = len(cacheFields(setup.daemon))
    for i, door in enumerate(("ssh", "ssh", "git")):
        fresh = tmp_path / f"after-{i}"
        setup.clone(door, "push.git", fresh)
        assert setup.git.output("rev-parse", "HEAD", cwd=fresh) == new
    assert cacheFields(setup.daemon, before + 3)[before:] == ["lead", "lead", "hit"]


def test_concurrentClonesOverGitShareOneGit(tmp_path: Path) -> None:
    """Two v2 clones over git:// at once: one git leads, the other follows it, both whole."""
    git = GitClient(tmp_path / "client-home")
    root = tmp_path / "srv"
    root.mkdir()
    git.seed(tmp_path / "seed", root / "app.git")
    settle(root)
    # pack-objects starts 2 s late: the second clone's fetch finds the flight open.
    home = daemonHome(tmp_path, slowHook(2))
    daemon = startDaemon(
        root, "--pack-cache", str(tmp_path / "cache"), "--listen-git", GIT_LISTEN, home=home
    )
    try:
        settleDaemon(home)
        url = f"git://127.0.0.1:{doorPort(daemon, GIT_LISTEN)}/app.git"
        clones = [tmp_path / f"clone{i}" for i in range(2)]
        processes = [
            subprocess.Popen(
                ["git", "-c", "protocol.version=2", "clone", "-q", url, str(clone)],
                env=git.env,
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for clone in clones
        ]
        for process in processes:
            _, errors = process.communicate(timeout=60)
            assert process.returncode == 0, errors
        assert sorted(cacheFields(daemon, 2)) == ["follow", "lead"], daemon.log[-3000:]
        for clone in clones:
            git.run("fsck", "--strict", "--no-progress", cwd=clone)
    finally:
        daemon.stop()
