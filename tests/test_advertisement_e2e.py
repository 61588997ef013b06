"""
The v2 capability advertisement from the real daemon, byte for byte against
git's own, under every config that changes it, first from git and then from
the cache.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient


def aged(path: Path) -> None:
    """Date C{path} a minute back, out of the cache's racy window."""
    then = time.time() - 60
    os.utime(path, (then, then))


def fetchAdvertisement(daemon: Daemon, name: str) -> bytes:
    """GET info/refs as a v2 client does, returning the body."""
    request = urllib.request.Request(
        daemon.url(f"{name}/info/refs?service=git-upload-pack"),
        headers={"Git-Protocol": "version=2"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/x-git-upload-pack-advertisement"
        assert response.headers["Cache-Control"] == "no-cache, max-age=0, must-revalidate"
        return response.read()


def gitsOwn(gitDir: Path, home: Path) -> bytes:
    """What git itself answers, run with the environment the daemon gives it."""
    return subprocess.run(
        ["git", "upload-pack", "--strict", "--stateless-rpc", "--advertise-refs", str(gitDir)],
        env={"PATH": os.environ["PATH"], "HOME": str(home), "GIT_PROTOCOL": "version=2"},
        capture_output=True,
        check=True,
    ).stdout


def spawns(daemon: Daemon, name: str, expected: int) -> int:
    """
    How many times the daemon ran git for the v2 advertisement of C{name}.

    The daemon logs each run before it answers, but its log reaches the test
    through a pipe and a thread: wait (briefly) for C{expected} runs, then a
    moment more, so that one run too many shows too.
    """
    pattern = re.compile(rf"git-upload-pack advertise repo={re.escape(name)} .*protocol=v2")

    def count() -> int:
        return sum(1 for line in list(daemon.lines) if pattern.search(line))

    deadline = time.monotonic() + 10
    while count() < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return count()


# Each config that changes git's v2 advertisement (2.39: the fetch= and
# ls-refs= values, object-format, session-id), and the newer switches that a
# later git may act on: whatever git answers, the daemon answers the same.
REPOSITORY_CONFIGS = {
    "default": {},
    "allowFilter": {"uploadpack.allowFilter": "true"},
    "allowRefInWant": {"uploadpack.allowRefInWant": "true"},
    "allowSidebandAll": {"uploadpack.allowSidebandAll": "true"},
    "all-fetch-features": {
        "uploadpack.allowFilter": "1",
        "uploadpack.allowRefInWant": "yes",
        "uploadpack.allowSidebandAll": "on",
    },
    "blobPackfileUri": {"uploadpack.blobPackfileUri": "x y https://example.com/p"},
    "unborn-ignore": {"lsrefs.unborn": "ignore"},
    "unborn-allow": {"lsrefs.unborn": "allow"},
    "advertiseBundleURIs": {"uploadpack.advertiseBundleURIs": "true"},
    "advertiseObjectInfo": {"transfer.advertiseObjectInfo": "false"},
}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """The daemon's HOME, holding its global git config."""
    path = tmp_path / "daemon-home"
    path.mkdir()
    return path


@pytest.fixture
def daemon(root: Path, home: Path, serve) -> Daemon:
    """The daemon, with its own HOME."""
    return serve(root, home=home)


def makeBare(git: GitClient, path: Path, config: dict[str, str], *initArgs: str) -> Path:
    """A bare repository with C{config}, aged out of the racy window."""
    git.run("init", "-q", "--bare", *initArgs, str(path))
    for key, value in config.items():
        git.run("config", "-f", str(path / "config"), key, value)
    aged(path / "config")
    aged(path / "HEAD")
    return path


@pytest.mark.parametrize("variant", sorted(REPOSITORY_CONFIGS))
def test_sameAsGitUnderEachConfig(
    git: GitClient, root: Path, home: Path, daemon: Daemon, variant: str
) -> None:
    """git's answer and the cached one are both git's own bytes, under this config."""
    gitDir = makeBare(git, root / f"{variant}.git", REPOSITORY_CONFIGS[variant])
    expected = gitsOwn(gitDir, home)
    assert fetchAdvertisement(daemon, f"{variant}.git") == expected
    assert fetchAdvertisement(daemon, f"{variant}.git") == expected
    assert fetchAdvertisement(daemon, f"{variant}.git") == expected
    assert spawns(daemon, f"{variant}.git", 1) == 1


def test_sha256Repository(git: GitClient, root: Path, home: Path, daemon: Daemon) -> None:
    """A SHA-256 repository's object-format is advertised as git does."""
    gitDir = makeBare(git, root / "sha256.git", {}, "--object-format=sha256")
    expected = gitsOwn(gitDir, home)
    assert b"object-format=sha256" in expected
    for _ in range(2):
        assert fetchAdvertisement(daemon, "sha256.git") == expected
    assert spawns(daemon, "sha256.git", 1) == 1


def test_sessionIdIsNeverReplayed(git: GitClient, root: Path, home: Path, daemon: Daemon) -> None:
    """With transfer.advertiseSID, every answer comes from a new git with its own session id."""
    makeBare(git, root / "sid.git", {"transfer.advertiseSID": "true"})
    answers = [fetchAdvertisement(daemon, "sid.git") for _ in range(3)]
    ids = [re.search(rb"session-id=(\S+)", a).group(1) for a in answers]  # type: ignore[union-attr]
    assert len(set(ids)) == 3
    assert spawns(daemon, "sid.git", 3) == 3


def test_configChangesAreSeen(git: GitClient, root: Path, home: Path, daemon: Daemon) -> None:
    """Changing the repository's, the global or an included config changes the answer at once."""
    gitDir = makeBare(git, root / "live.git", {"include.path": "../shared.inc"})
    shared = root / "shared.inc"
    expected = gitsOwn(gitDir, home)
    assert fetchAdvertisement(daemon, "live.git") == expected
    assert fetchAdvertisement(daemon, "live.git") == expected
    assert spawns(daemon, "live.git", 1) == 1

    steps = [
        (gitDir / "config", "uploadpack.allowFilter", b" filter"),
        (home / ".gitconfig", "uploadpack.allowRefInWant", b" ref-in-want"),
        (shared, "uploadpack.allowSidebandAll", b" sideband-all"),
    ]
    for count, (path, key, feature) in enumerate(steps, start=2):
        git.run("config", "-f", str(path), key, "true")
        aged(path)
        expected = gitsOwn(gitDir, home)
        assert feature in expected
        assert fetchAdvertisement(daemon, "live.git") == expected
        assert fetchAdvertisement(daemon, "live.git") == expected
        assert spawns(daemon, "live.git", count) == count


def test_cloneAndLsRemoteThroughTheCache(
    git: GitClient, root: Path, tmp_path: Path, daemon: Daemon, populated: Path
) -> None:
    """A real v2 client works from the cached advertisement: ls-remote and clone."""
    aged(root / "project.git" / "config")
    aged(root / "project.git" / "HEAD")
    head = git.output("rev-parse", "HEAD", cwd=populated)
    for attempt in range(2):
        out = git.output("-c", "protocol.version=2", "ls-remote", daemon.url("project.git"))
        assert f"{head}\trefs/heads/main" in out
        git.run(
            "-c",
            "protocol.version=2",
            "clone",
            "-q",
            daemon.url("project.git"),
            str(tmp_path / f"clone{attempt}"),
        )
        assert git.output("rev-parse", "HEAD", cwd=tmp_path / f"clone{attempt}") == head
    assert spawns(daemon, "project.git", 1) == 1
