"""
The v2 capability advertisement cache: what it keys on, what it refuses to
keep, and the fast path that serves it without spawning git.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gitserve.core.advertisement import CapabilityCache, cacheable
from gitserve.core.filestamps import ConfigClosures, stampOf
from gitserve.core.pktline import FLUSH, pktLine
from gitserve.core.repository import Repository
from tests.fakes import SiteHarness, makeRepository

ANSWER = (
    pktLine(b"version 2\n")
    + pktLine(b"agent=git/2.39.5\n")
    + pktLine(b"ls-refs=unborn\n")
    + pktLine(b"fetch=shallow wait-for-done\n")
    + FLUSH
)
V2_REQUEST = (
    b"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
    b"Host: example\r\nGit-Protocol: version=2\r\n\r\n"
)


def age(path: Path, seconds: float = 60) -> None:
    """Make C{path} look modified C{seconds} ago, outside the racy window."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def write(path: Path, text: str) -> Path:
    """Write C{text} to C{path}, aged out of the racy window."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    age(path)
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[CapabilityCache, Repository, Path]:
    """A cache with a private HOME and system config, and one repository."""
    home = tmp_path / "home"
    home.mkdir()
    gitDir = makeRepository(tmp_path / "srv" / "repo.git")
    age(gitDir / "config")
    age(gitDir / "HEAD")
    gitBinary = write(tmp_path / "bin" / "git", "not really git")
    cache = CapabilityCache(
        gitPath=str(gitBinary),
        environment={
            "PATH": "/usr/bin",
            "HOME": str(home),
            "GIT_CONFIG_SYSTEM": str(tmp_path / "gitconfig"),
            "REMOTE_ADDR": "127.0.0.1",
        },
    )
    return cache, Repository(gitDir=gitDir.resolve(), name="repo.git"), tmp_path


def test_keptAnswerServedWhileNothingChanges(setup) -> None:
    """An answer is kept under its key and found again while the inputs stay the same."""
    cache, repository, _ = setup
    key = cache.key(repository)
    assert key is not None
    assert cache.get(repository, key) is None
    assert cache.put(repository, key, ANSWER)
    assert cache.get(repository, cache.key(repository)) == ANSWER


@pytest.mark.parametrize(
    "change",
    [
        "repository config",
        "global config",
        "xdg config",
        "system config",
        "included file",
        "created include",
        "HEAD",
        "git binary",
    ],
)
def test_everyInputChangesTheKey(setup, change: str) -> None:
    """A change to any file git reads for the advertisement makes the kept answer stale."""
    cache, repository, tmp_path = setup
    home = tmp_path / "home"
    write(
        repository.gitDir / "config",
        "[core]\n\tbare = true\n[include]\n\tpath = extra.inc\n\tpath = ~/missing.inc\n",
    )
    write(repository.gitDir / "extra.inc", "[uploadpack]\n\tallowFilter = false\n")
    key = cache.key(repository)
    assert cache.put(repository, key, ANSWER)
    target = {
        "repository config": repository.gitDir / "config",
        "global config": home / ".gitconfig",
        "xdg config": home / ".config" / "git" / "config",
        "system config": tmp_path / "gitconfig",
        "included file": repository.gitDir / "extra.inc",
        "created include": home / "missing.inc",
        "HEAD": repository.gitDir / "HEAD",
        "git binary": tmp_path / "bin" / "git",
    }[change]
    existing = target.read_text() if target.exists() else ""
    write(target, existing + "\n[uploadpack]\n\tallowFilter = true\n")
    assert cache.get(repository, cache.key(repository)) is None


def test_perRequestEnvironmentIsNotKeyed(setup) -> None:
    """Who asks (address, user, agent) does not change git's advertisement, so not the key."""
    cache, repository, _ = setup
    key = cache.key(repository)
    other = replace(
        cache, environment={**cache.environment, "REMOTE_ADDR": "10.0.0.9", "REMOTE_USER": "bob"}
    )
    assert other.key(repository) == key


@pytest.mark.parametrize(
    "why",
    ["includeIf", "unknown environment", "linked worktree", "unparsable config"],
)
def test_unkeyableInputsAreNeverCached(setup, why: str) -> None:
    """Inputs a stamp cannot stand for turn the cache off for that answer."""
    cache, repository, _ = setup
    if why == "includeIf":
        write(
            repository.gitDir / "config",
            '[includeIf "onbranch:main"]\n\tpath = branch.inc\n',
        )
    elif why == "unknown environment":
        cache = replace(
            cache, environment={**cache.environment, "GIT_CONFIG_PARAMETERS": "'a.b'='c'"}
        )
    elif why == "linked worktree":
        write(repository.gitDir / "commondir", "../..\n")
    else:
        write(repository.gitDir / "config", "[core\n\tbare = true\n")
    assert cache.key(repository) is None
    assert not cache.put(repository, None, ANSWER)
    assert cache.get(repository, None) is None


def test_racyAnswerIsNotKept(setup) -> None:
    """An answer built from a file modified within the racy window is served but not kept."""
    cache, repository, _ = setup
    (repository.gitDir / "config").write_text("[core]\n\tbare = true\n")
    key = cache.key(repository)
    assert not cache.put(repository, key, ANSWER)
    cache.clock = lambda: time.time() + 10
    assert cache.put(repository, key, ANSWER)


def test_changeWhileGitRanIsNotKept(setup) -> None:
    """An answer whose inputs changed while git ran is not kept under the old key."""
    cache, repository, _ = setup
    key = cache.key(repository)
    write(repository.gitDir / "config", "[uploadpack]\n\tallowFilter = true\n")
    assert not cache.put(repository, key, ANSWER)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (ANSWER, True),
        (ANSWER[:-4], False),
        (pktLine(b"version 2\n") + pktLine(b"session-id=20261121T1-H0-P1\n") + FLUSH, False),
        (pktLine(b"version 1\n") + FLUSH, False),
        (ANSWER + ANSWER, False),
        (pktLine(b"ERR fatal\n"), False),
        (b"", False),
    ],
)
def test_cacheableAnswers(answer: bytes, expected: bool) -> None:
    """Only a well-formed v2 advertisement without a session id may be served again."""
    assert cacheable(answer) is expected


def fastSite(tmp_path: Path) -> SiteHarness:
    """A site whose server has the capability cache (fake git, private config)."""
    gitDir = makeRepository(tmp_path / "repo.git")
    age(gitDir / "config")
    age(gitDir / "HEAD")
    site = SiteHarness(tmp_path)
    gitBinary = write(tmp_path / "fake-git", "")
    site.context.core.capabilities = CapabilityCache(
        gitPath=str(gitBinary),
        environment={"PATH": "/usr/bin", "GIT_CONFIG_NOSYSTEM": "1"},
    )
    return site


def test_fastPathServesGitsAnswerWithoutSpawning(tmp_path: Path) -> None:
    """The second v2 advertisement is git's first answer, byte for byte, with no git run."""
    site = fastSite(tmp_path)
    site.send(V2_REQUEST)
    [process] = site.reactor.spawned
    assert "--advertise-refs" in process.args and process.env["GIT_PROTOCOL"] == "version=2"
    process.protocol.outReceived(ANSWER)
    process.exit(0)
    first = site.transport.value()
    assert first.startswith(b"HTTP/1.1 200 OK")
    site.transport.clear()

    site.send(V2_REQUEST)
    assert len(site.reactor.spawned) == 1, "git ran again"
    second = site.transport.value()
    head, _, body = second.partition(b"\r\n\r\n")
    assert body == ANSWER
    for header in (
        b"Content-Type: application/x-git-upload-pack-advertisement",
        b"Cache-Control: no-cache, max-age=0, must-revalidate",
        b"Pragma: no-cache",
        b"Expires: Fri, 01 Jan 1980 00:00:00 GMT",
        b"Content-Length: %d" % len(ANSWER),
    ):
        assert header in head.split(b"\r\n")


@pytest.mark.parametrize(
    "request_",
    [
        # v0: the refs are in the answer, so git is asked every time.
        b"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\r\n",
        # Other Git-Protocol keys than the version are passed to git, not assumed.
        b"GET /repo.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Git-Protocol: version=2:object-format=sha256\r\n\r\n",
    ],
)
def test_otherAdvertisementsAlwaysRunGit(tmp_path: Path, request_: bytes) -> None:
    """Only the exact v2 request is answered from the cache."""
    site = fastSite(tmp_path)
    for expected in (1, 2):
        site.send(request_)
        assert len(site.reactor.spawned) == expected
        site.reactor.spawned[-1].protocol.outReceived(ANSWER)
        site.reactor.spawned[-1].exit(0)


def test_failedGitIsNotKept(tmp_path: Path) -> None:
    """A git that failed is asked again next time, and its error is never replayed."""
    site = fastSite(tmp_path)
    site.send(V2_REQUEST)
    site.reactor.spawned[0].protocol.errReceived(b"fatal: detected dubious ownership\n")
    site.reactor.spawned[0].exit(128)
    site.send(V2_REQUEST)
    assert len(site.reactor.spawned) == 2


def test_parsedConfigsAreBounded(tmp_path: Path) -> None:
    """The parsed config files kept are bounded: a daemon serving many repositories stays small."""
    closures = ConfigClosures(home=None, maxEntries=3)
    paths = [write(tmp_path / f"config{i}", "[core]\n\tbare = true\n") for i in range(5)]
    for path in paths:
        closures.stamps(str(path))
    assert len(closures._closures) == 3
    # Still correct after eviction: a re-read gives the same stamps.
    assert closures.stamps(str(paths[0])) == ((str(paths[0]), stampOf(str(paths[0]))),)
