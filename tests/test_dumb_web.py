"""The dumb routes in the core's route table, driven through the real GitSite with fakes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.conftest import GitClient
from tests.fakes import SiteHarness


@pytest.fixture
def site(git: GitClient, root: Path, populated: Path) -> SiteHarness:
    """The site over root/project.git: one pack plus loose objects from a later push."""
    repository = root / "project.git"
    git.run("repack", "-a", "-d", "-q", cwd=repository)
    git.commit(populated, "later.txt", "later\n")
    git.run("push", "-q", str(repository), "main", cwd=populated)
    return SiteHarness(root)


def dumbPaths(root: Path) -> dict[str, bytes]:
    """One URL path per dumb file class present in project.git, with its content type."""
    repository = root / "project.git"
    (repository / "objects" / "info").mkdir(exist_ok=True)
    (repository / "objects" / "info" / "http-alternates").write_text("http://mirror/o\n")
    loose = next(p for p in (repository / "objects").glob("[0-9a-f][0-9a-f]/*"))
    pack = next((repository / "objects" / "pack").glob("*.pack"))
    return {
        "HEAD": b"text/plain",
        "info/refs": b"text/plain",
        "objects/info/packs": b"text/plain; charset=utf-8",
        "objects/info/http-alternates": b"text/plain",
        str(loose.relative_to(repository)): b"application/x-git-loose-object",
        str(pack.relative_to(repository)): b"application/x-git-packed-objects",
        str(pack.with_suffix(".idx").relative_to(repository)): (
            b"application/x-git-packed-objects-toc"
        ),
    }


def get(site: SiteHarness, path: str, method: bytes = b"GET"):
    """One request on a fresh connection; the fake reactor runs any file producer to the end."""
    site.connect()
    site.request(method, b"/project.git/" + path.encode())
    for _ in range(1000):
        if site.responses():
            break
        site.reactor.advance(0)
    return site.response()


def test_everyDumbRouteAnswers(site: SiteHarness, root: Path) -> None:
    """Each dumb route answers 200 with http-backend's content type and the file's bytes."""
    for path, contentType in dumbPaths(root).items():
        response = get(site, path)
        assert response.status == 200, path
        assert response.header(b"content-type") == contentType, path
        if path.startswith("objects/") and "/info/" not in "/" + path:
            assert response.body == (root / "project.git" / path).read_bytes()
    assert site.reactor.spawned == []


def test_dumbInfoRefsNamesTheBranch(git: GitClient, site: SiteHarness, root: Path) -> None:
    """Dumb info/refs lists main at its current commit; HEAD names it."""
    head = git.output("rev-parse", "main", cwd=root / "project.git")
    assert get(site, "info/refs").body == f"{head}\trefs/heads/main\n".encode()
    assert get(site, "HEAD").body == b"ref: refs/heads/main\n"


def test_getanyfileFalseIsForbiddenEverywhereDumb(site: SiteHarness, root: Path) -> None:
    """http.getanyfile=false: 403 on every dumb route, present or not; smart still runs git."""
    with (root / "project.git" / "config").open("a") as config:
        config.write("[http]\n\tgetanyfile = false\n")
    for path in [*dumbPaths(root), "objects/ab/" + "c" * 38, "objects/ab/" + "c" * 62]:
        assert get(site, path).status == 403, path
    site.connect()
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    assert len(site.reactor.spawned) == 1


@pytest.mark.parametrize(
    "path, routed",
    [
        ("objects/ab/" + "c" * 38, True),
        ("objects/ab/" + "c" * 62, True),  # sha256 repositories
        ("objects/ab/" + "c" * 39, False),
        ("objects/AB/" + "c" * 38, False),
        ("objects/pack/pack-" + "d" * 40 + ".pack", True),
        ("objects/pack/pack-" + "d" * 64 + ".idx", True),
        ("objects/pack/pack-" + "d" * 40 + ".keep", False),
        ("objects/pack/pack-" + "d" * 40 + ".pack.temp", False),
        ("objects/pack/tmp_pack_abc", False),
        ("objects/info/alternates", True),
        ("objects/info/commit-graph", False),
        ("config", False),
        ("refs/heads/main", False),
    ],
)
def test_routeTableMatchesHttpBackend(
    site: SiteHarness, root: Path, path: str, routed: bool
) -> None:
    """Only http-backend's dumb paths are routed (403 with getanyfile off); the rest is 404."""
    with (root / "project.git" / "config").open("a") as config:
        config.write("[http]\n\tgetanyfile = false\n")
    assert get(site, path).status == (403 if routed else 404)


def test_dumbRoutesRefusePost(site: SiteHarness) -> None:
    """A POST to a dumb file is 405, as http-backend answers a method mismatch."""
    assert get(site, "HEAD", method=b"POST").status == 405


def test_withoutGitUploadPackFallsBackToDumb(site: SiteHarness) -> None:
    """No git binary: info/refs?service=git-upload-pack gets the plain ref list, no child."""
    site.context.core.backend.available = False
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    response = site.response()
    assert response.status == 200
    assert response.header(b"content-type") == b"text/plain"
    assert b"\trefs/heads/main\n" in response.body
    assert site.reactor.spawned == []


class HeldWork:
    """A runBlocking that holds each computation until the test releases it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, work: Callable[[], Any]) -> Deferred[Any]:
        result: Deferred[Any] = Deferred()
        self.pending.append((work, result))
        return result

    def release(self) -> None:
        for work, result in self.pending:
            result.callback(work())
        self.pending.clear()


def test_infoRefsIsGeneratedOffTheReactor(site: SiteHarness) -> None:
    """info/refs goes through runBlocking; the answer is written when the work is done."""
    held = HeldWork()
    site.context.core.runBlocking = held
    site.request(b"GET", b"/project.git/info/refs")
    assert site.responses() == []
    assert len(held.pending) == 1
    held.release()
    response = site.response()
    assert response.status == 200
    assert b"\trefs/heads/main\n" in response.body
    assert response.header(b"cache-control") == b"no-cache, max-age=0, must-revalidate"


def test_clientGoneWhileRefsAreReadGetsNothing(site: SiteHarness) -> None:
    """A client that leaves while info/refs is being generated gets nothing written."""
    held = HeldWork()
    site.context.core.runBlocking = held
    site.request(b"GET", b"/project.git/info/refs")
    site.channel.connectionLost(Failure(ConnectionDone()))
    held.release()
    assert site.responses() == []
