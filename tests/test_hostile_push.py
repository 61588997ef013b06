"""
Authorization bypass: a push through any other spelling of the receive-pack
URL, or with a confusing C{service=}, is refused like the plain one, and the
repository does not change.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.rawhttp import RECEIVE_PACK_REQUEST, exchange, request


@dataclass
class PushTarget:
    daemon: Daemon
    git: GitClient
    repo: Path
    work: Path
    old: str
    body: bytes


def refsOf(git: GitClient, repo: Path) -> str:
    return git.output("for-each-ref", "--format=%(objectname) %(refname)", cwd=repo)


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PushTarget]:
    """project.git refusing anonymous pushes, and a real push body for main."""
    base = tmp_path_factory.mktemp("push")
    git = GitClient(base / "home")
    work = base / "work"
    repo = base / "srv" / "project.git"
    old = git.seed(work, repo)
    new = git.commit(work, "pushed.txt", "should never land\n")
    body = git.pushBody(work, old, new)
    daemon = startDaemon(base / "srv")
    try:
        yield PushTarget(daemon, git, repo, work, old, body)
    finally:
        daemon.stop()


# Spellings of POST /project.git/git-receive-pack, and of its advertisement.
ALTERNATE_POSTS = [
    "/project.git/git-receive-pack",
    "//project.git/git-receive-pack",
    "/project.git//git-receive-pack",
    "/./project.git/git-receive-pack",
    "/project.git/./git-receive-pack",
    "/project.git%2Fgit-receive-pack",
    "/project.git/git-receive-pack/",
    "/project.git/git%2Dreceive%2Dpack",
    "/project.git/git-receive-pack?service=git-upload-pack",
    "/project.git/git-receive-pack?service=git-receive-pack&service=git-upload-pack",
    "/project.git/info/../git-receive-pack",
    "/project.git/info/%2e%2e/git-receive-pack",
    "/project/git-receive-pack",
    "/project.git/.git/../git-receive-pack",
]

ALTERNATE_ADVERTISEMENTS = [
    "/project.git/info/refs?service=git-receive-pack",
    "//project.git/info/refs?service=git-receive-pack",
    "/./project.git/info/refs?service=git-receive-pack",
    "/project.git%2Finfo%2Frefs?service=git-receive-pack",
    "/project.git/info/refs/?service=git-receive-pack",
    "/project.git/info/refs?service=git-upload-pack&service=git-receive-pack",
    "/project.git/info/refs?service=git-receive-pack&service=git-upload-pack",
    "/project.git/info/refs?service=git-receive-pack&service=git-receive-pack",
    "/project.git/info/refs?service=git%2Dreceive%2Dpack",
    "/project.git/info/refs?service=git-receive-pack%00",
    "/project.git/info/refs?service=git-receive-pack&service=",
    "/project.git/info/refs?service[]=git-receive-pack",
    "/project/info/refs?service=git-receive-pack",
]


def test_plainPushIsForbidden(target: PushTarget) -> None:
    """The baseline: an anonymous push to the plain URL is 403 and changes nothing."""
    before = refsOf(target.git, target.repo)
    response = exchange(
        target.daemon.host,
        target.daemon.port,
        request(
            "POST",
            "/project.git/git-receive-pack",
            headers={"Content-Type": RECEIVE_PACK_REQUEST},
            body=target.body,
        ),
    )
    assert response.status == 403
    assert refsOf(target.git, target.repo) == before


@pytest.mark.parametrize("path", ALTERNATE_POSTS)
def test_alternatePostIsRefused(target: PushTarget, path: str) -> None:
    """Every other spelling of the receive-pack URL is refused, and no object lands."""
    before = refsOf(target.git, target.repo)
    objectsBefore = sorted(p.name for p in (target.repo / "objects").rglob("*"))
    for contentType in (RECEIVE_PACK_REQUEST, "application/x-git-upload-pack-request"):
        response = exchange(
            target.daemon.host,
            target.daemon.port,
            request("POST", path, headers={"Content-Type": contentType}, body=target.body),
        )
        assert response.status in (403, 404, 415), (path, response.raw[:200])
        assert b"report-status" not in response.body
        assert b"unpack ok" not in response.body
    assert refsOf(target.git, target.repo) == before
    assert sorted(p.name for p in (target.repo / "objects").rglob("*")) == objectsBefore


@pytest.mark.parametrize("path", ALTERNATE_ADVERTISEMENTS)
def test_alternateAdvertisementIsRefused(target: PushTarget, path: str) -> None:
    """No spelling of info/refs hands an anonymous client the receive-pack advertisement."""
    response = exchange(target.daemon.host, target.daemon.port, request("GET", path))
    if response.status == 200:
        # A spelling without a readable service= parameter is a dumb info/refs
        # request, as with http-backend: the read-only ref list, which
        # anonymous clients may fetch and nobody can push through.
        assert b"Content-Type: text/plain" in response.raw, (path, response.raw[:200])
    else:
        assert response.status in (403, 404), (path, response.raw[:200])
    assert b"report-status" not in response.raw
    assert b"x-git-receive-pack-advertisement" not in response.raw


def test_realClientPushThroughAlternateUrlsFails(target: PushTarget) -> None:
    """The git client pushing through bent URLs is refused and main stays put."""
    for spelling in ("/project.git", "//project.git", "/./project.git", "/project.git/"):
        result = target.git.run(
            "push", target.daemon.base + spelling, "HEAD:main", cwd=target.work, check=False
        )
        assert result.returncode != 0, spelling
    assert target.git.output("rev-parse", "main", cwd=target.repo) == target.old


def test_controlAllowedPushLands(target: PushTarget) -> None:
    """With http.receivepack on, the very same body lands: the refusals above are real."""
    control = target.repo.with_name("control.git")
    target.git.run("clone", "-q", "--bare", str(target.repo), str(control))
    target.git.run("config", "-f", str(control / "config"), "http.receivepack", "true")
    response = exchange(
        target.daemon.host,
        target.daemon.port,
        request(
            "POST",
            "/control.git/git-receive-pack",
            headers={"Content-Type": RECEIVE_PACK_REQUEST},
            body=target.body,
        ),
    )
    assert response.status == 200
    assert b"unpack ok" in response.body
    assert target.git.output("rev-parse", "main", cwd=control) != target.old
