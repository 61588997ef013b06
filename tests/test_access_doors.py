"""
The access rules over SSH and git://: the same conf, enforced by the same
core calls as over HTTP (read, per-ref push checks, wild repositories created
on push, read for git archive --remote), for the key's owner over SSH and
the user C{daemon} over git://.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.doors import GIT_LISTEN, SSH_LISTEN, SSHUser, doorPort, makeKey

CONF = """\
@devs = alice bob
repo product
    RW+ = alice
    RW dev/ = bob
    R = @devs
repo secret
    RW+ = alice
repo open
    R = daemon alice
repo users/CREATOR/[a-z]+
    C = @devs
    RW+ = CREATOR
"""


class Setup:
    """One daemon with SSH, git:// and the rules above; alice and bob by key."""

    def __init__(self, base: Path) -> None:
        self.root = base / "srv"
        self.root.mkdir()
        self.git = GitClient(base / "client-home")
        self.head = self.git.seed(base / "seed", self.root / "product.git")
        # Both allow git archive --remote: the rules alone decide who may.
        self.git.seed(base / "seed-secret", self.root / "secret.git", daemon__uploadarch="true")
        self.git.seed(base / "seed-open", self.root / "open.git", daemon__uploadarch="true")
        keys = base / "keys"
        keys.mkdir()
        users = {}
        for name in ("alice", "bob"):
            key = makeKey(base / name)
            (keys / f"{name}.pub").write_text((base / f"{name}.pub").read_text())
            users[name] = key
        conf = base / "access.conf"
        conf.write_text(CONF)
        self.daemon: Daemon = startDaemon(
            self.root,
            "--access",
            str(conf),
            "--listen-ssh",
            SSH_LISTEN,
            "--listen-git",
            GIT_LISTEN,
            "--ssh-keys",
            str(keys),
            "--ssh-host-key",
            str(base / "host_key"),
        )
        port = doorPort(self.daemon, SSH_LISTEN)
        self.gitPort = doorPort(self.daemon, GIT_LISTEN)
        self.alice = SSHUser(self.git, users["alice"], port)
        self.bob = SSHUser(self.git, users["bob"], port)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The module's daemon, stopped after its last test."""
    built = Setup(tmp_path_factory.mktemp("access-doors"))
    yield built
    built.daemon.stop()


def test_sshPushIsCheckedPerRef(setup: Setup, tmp_path: Path) -> None:
    """Over SSH bob's push to main is refused by the rules and changes nothing; dev/x lands."""
    bob = setup.bob
    clone = tmp_path / "clone"
    bob.run("clone", "-q", bob.url("product.git"), str(clone))
    new = setup.git.commit(clone, "b.txt", "bob\n")
    refused = bob.run("push", "origin", "main", "main:dev/x", cwd=clone, check=False)
    assert refused.returncode != 0
    assert "access denied" in refused.stderr and "main -> main" in refused.stderr
    product = setup.root / "product.git"
    assert setup.git.output("rev-parse", "main", cwd=product) == setup.head
    assert setup.git.output("rev-parse", "dev/x", cwd=product) == new


def test_sshUnreadableIsLikeMissing(setup: Setup, tmp_path: Path) -> None:
    """bob cannot read secret over SSH, and is told exactly what a missing repository says."""
    hidden = setup.bob.run("ls-remote", setup.bob.url("secret.git"), check=False)
    missing = setup.bob.run("ls-remote", setup.bob.url("nothing.git"), check=False)
    assert hidden.returncode == missing.returncode != 0
    assert hidden.stderr.replace("secret", "X") == missing.stderr.replace("nothing", "X")
    assert setup.alice.run("ls-remote", setup.alice.url("secret.git")).returncode == 0


def test_sshPushCreatesAWildRepository(setup: Setup, tmp_path: Path) -> None:
    """A push over SSH to users/alice/scratch creates it for alice, who becomes its creator."""
    alice = setup.alice
    work = tmp_path / "scratch"
    alice.git.run("init", "-q", "-b", "main", str(work))
    setup.git.commit(work, "s.txt", "scratch\n")
    alice.run("push", "-q", alice.url("users/alice/scratch.git"), "main", cwd=work)
    created = setup.root / "users" / "alice" / "scratch.git"
    assert (created / "gl-creator").read_text().strip() == "alice"
    refused = setup.bob.run(
        "push", setup.bob.url("users/alice/other.git"), "main", cwd=work, check=False
    )
    assert refused.returncode != 0
    assert not (setup.root / "users" / "alice" / "other.git").exists()


def test_gitProtocolReadsAsDaemon(setup: Setup) -> None:
    """git:// serves what the user daemon may read (open) and nothing else (product)."""
    url = f"git://127.0.0.1:{setup.gitPort}"
    assert "refs/heads/main" in setup.git.output("ls-remote", f"{url}/open.git")
    denied = subprocess.run(
        ["git", "ls-remote", f"{url}/product.git"],
        capture_output=True,
        text=True,
        env=setup.git.env,
    )
    assert denied.returncode != 0 and "access denied or repository not exported" in denied.stderr


def test_archiveNeedsRead(setup: Setup, tmp_path: Path) -> None:
    """git archive --remote where it is allowed: alice reads secret, bob and daemon do not."""
    tar = str(tmp_path / "out.tar")
    setup.alice.run("archive", f"--remote={setup.alice.url('secret.git')}", "-o", tar, "HEAD")
    secret = setup.bob.url("secret.git")
    hidden = setup.bob.run("archive", f"--remote={secret}", "HEAD", check=False)
    assert hidden.returncode != 0
    assert "fatal: '/secret.git' does not appear to be a git repository" in hidden.stderr
    url = f"git://127.0.0.1:{setup.gitPort}"
    setup.git.run("archive", f"--remote={url}/open.git", "-o", tar, "HEAD")
    denied = setup.git.run("archive", f"--remote={url}/secret.git", "HEAD", check=False)
    assert denied.returncode != 0
    assert "access denied or repository not exported: /secret.git" in denied.stderr
