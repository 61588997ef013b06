"""
Path traversal, the way scanners try it: raw request targets (no client
normalises them), symlinks and gitfiles that lead out of --root. Every one is
a 404, and no byte of what lies outside the root ever comes back.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.rawhttp import UPLOAD_PACK_REQUEST, exchange, request, wantRequest


@dataclass
class Layout:
    """A served root with one good repository, and traps pointing outside it."""

    daemon: Daemon
    root: Path
    outside: Path
    canary: bytes
    head: str


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Layout]:
    """
    The root holds project.git plus links out; outside it sit a repository
    whose branch name is the canary and a file holding the canary.
    """
    base = tmp_path_factory.mktemp("paths")
    git = GitClient(base / "home")
    canary = ("canary" + secrets.token_hex(8)).encode()
    root = base / "srv"
    root.mkdir()
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(canary + b"\n")
    work = base / "work"
    git.run("init", "-q", str(work))
    head = git.commit(work, "a.txt", canary.decode() + "\n")
    secretRepo = git.bare(outside / "secret.git")
    git.run("push", "-q", str(secretRepo), f"main:refs/heads/{canary.decode()}", cwd=work)
    git.run("init", "-q", str(base / "plain"))
    public = base / "plain"
    git.commit(public, "b.txt", "public\n")
    git.bare(root / "project.git")
    git.run("push", "-q", str(root / "project.git"), "main", cwd=public)
    # A repository that exists under a name git could read as an option.
    git.run("clone", "-q", "--bare", str(root / "project.git"), str(root / "-dash.git"))
    # Links out of the root, in the three shapes resolution must see through.
    (root / "linked.git").symlink_to(secretRepo)
    (root / "gitfile").mkdir()
    (root / "gitfile" / ".git").write_text(f"gitdir: {secretRepo}\n")
    (root / "relgitfile").mkdir()
    (root / "relgitfile" / ".git").write_text("gitdir: ../../outside/secret.git\n")
    (root / "dir-link").symlink_to(outside)
    daemon = startDaemon(root)
    try:
        yield Layout(daemon, root, outside, canary, head)
    finally:
        daemon.stop()


SERVICE = "?service=git-upload-pack"

# Request targets that must all be 404: each spells a way out of the root, or
# an alternate spelling of a real route that must not reach it.
HOSTILE_TARGETS = [
    "/../outside/secret.git/info/refs" + SERVICE,
    "/project.git/../../outside/secret.git/info/refs" + SERVICE,
    "/%2e%2e/outside/secret.git/info/refs" + SERVICE,
    "/%2E%2E/%2e%2e/outside/secret.git/info/refs" + SERVICE,
    "/..%2Foutside%2Fsecret.git/info/refs" + SERVICE,
    "/%2F..%2Foutside%2Fsecret.git/info/refs" + SERVICE,
    "/..%5Coutside%5Csecret.git/info/refs" + SERVICE,
    "/project.git%2Finfo%2Frefs" + SERVICE,
    "//project.git/info/refs" + SERVICE,
    "/project.git//info/refs" + SERVICE,
    "/./project.git/info/refs" + SERVICE,
    "/project.git/./info/refs" + SERVICE,
    "/project.git/info/refs/" + SERVICE,
    "/project.git/info/refs%00" + SERVICE,
    "/project.git%00/info/refs" + SERVICE,
    "/project.git/info/refs%0A" + SERVICE,
    "/project.git/info/refs%0D%0AX-Injected:%201" + SERVICE,
    "/-dash.git/info/refs" + SERVICE,
    "/--upload-pack=touch%20pwned/info/refs" + SERVICE,
    "/linked.git/info/refs" + SERVICE,
    "/gitfile/info/refs" + SERVICE,
    "/gitfile/.git/info/refs" + SERVICE,
    "/relgitfile/info/refs" + SERVICE,
    "/dir-link/secret.git/info/refs" + SERVICE,
]


def absoluteTargets(layout: Layout) -> list[str]:
    """Targets that name the outside repository by its absolute path."""
    secret = str(layout.outside / "secret.git")
    encoded = secret.replace("/", "%2F")
    return [
        f"/{secret}/info/refs" + SERVICE,
        f"{secret}/info/refs" + SERVICE,
        f"/{encoded}/info/refs" + SERVICE,
        f"http://localhost{secret}/info/refs" + SERVICE,
        f"http://localhost/..{secret}/info/refs" + SERVICE,
    ]


def assertRefused(layout: Layout, method: str, target: str, **kwargs: object) -> None:
    response = exchange(layout.daemon.host, layout.daemon.port, request(method, target, **kwargs))
    assert response.status in (400, 404), (target, response.raw[:300])
    if response.status == 400:
        # Twisted refuses a request line it cannot parse before any resource
        # sees it; only those (control characters, spaces) may be 400.
        assert any(c in target for c in " \r\n\0"), (target, response.raw[:300])
    assert layout.canary not in response.raw, target


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_hostileGetIsNotFound(layout: Layout, target: str) -> None:
    """A GET whose target escapes the root or bends a route is a 404 with no canary."""
    assertRefused(layout, "GET", target)


@pytest.mark.parametrize("target", HOSTILE_TARGETS)
def test_hostilePostIsNotFound(layout: Layout, target: str) -> None:
    """The same targets, bent onto the upload-pack POST route, are 404 too."""
    target = target.replace("info/refs", "git-upload-pack").partition("?")[0]
    assertRefused(
        layout,
        "POST",
        target,
        headers={"Content-Type": UPLOAD_PACK_REQUEST},
        body=wantRequest(layout.head),
    )


def test_absolutePathsAreNotFound(layout: Layout) -> None:
    """Naming the outside repository by its absolute path, in any spelling, is a 404."""
    for target in absoluteTargets(layout):
        assertRefused(layout, "GET", target)


def test_canaryCommitIsNotServedThroughAGoodRepository(layout: Layout) -> None:
    """Asking project.git for the outside repository's commit gives nothing of it."""
    response = exchange(
        layout.daemon.host,
        layout.daemon.port,
        request(
            "POST",
            "/project.git/git-upload-pack",
            headers={"Content-Type": UPLOAD_PACK_REQUEST},
            body=wantRequest(layout.head),
        ),
    )
    assert layout.canary not in response.raw
    # git refuses with an ERR packet and exits non-zero: a complete answer.
    assert response.status == 200, response.raw[:300]
    assert b"not our ref" in response.body
    assert layout.daemon.waitForLog("not our ref"), layout.daemon.log[-2000:]


def test_controlPlainRequestIsServed(layout: Layout) -> None:
    """The unbent spelling works, so the 404s above are refusals and not a dead server."""
    response = exchange(
        layout.daemon.host, layout.daemon.port, request("GET", "/project.git/info/refs" + SERVICE)
    )
    assert response.status == 200
    assert b"refs/heads/main" in response.body


def test_dashRepositoryNeverRuns(layout: Layout) -> None:
    """A repository whose name starts with '-' is refused before git could see it."""
    exchange(
        layout.daemon.host, layout.daemon.port, request("GET", "/-dash.git/info/refs" + SERVICE)
    )
    assert not (layout.root / "pwned").exists()
    assert "repo=-dash.git" not in layout.daemon.log


def test_packSymlinkedOutsideIsNotServed(tmp_path: Path, git: GitClient, serve) -> None:
    """A pack symlinked to a file outside the root is a 404 and not in objects/info/packs."""
    root = tmp_path / "srv"
    root.mkdir()
    canary = ("canary" + secrets.token_hex(8)).encode()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(canary * 100)
    work = tmp_path / "work"
    git.run("init", "-q", str(work))
    git.commit(work, "a.txt", "a\n")
    repo = git.bare(root / "project.git")
    git.run("push", "-q", str(repo), "main", cwd=work)
    git.run("repack", "-adq", cwd=repo)
    pack = next((repo / "objects" / "pack").glob("*.pack"))
    daemon = serve(root)
    good = exchange(
        daemon.host, daemon.port, request("GET", f"/project.git/objects/pack/{pack.name}")
    )
    if good.status == 404:
        pytest.skip("this build serves no dumb HTTP files (issue 3), so there is no pack route")
    assert good.status == 200
    fake = pack.with_name("pack-" + "e" * 40 + ".pack")
    fake.symlink_to(secret)
    fakeIdx = fake.with_suffix(".idx")
    fakeIdx.symlink_to(secret)
    for name in (fake.name, fakeIdx.name):
        response = exchange(
            daemon.host, daemon.port, request("GET", f"/project.git/objects/pack/{name}")
        )
        assert response.status == 404, response.raw[:300]
        assert canary not in response.raw
    info = exchange(
        daemon.host, daemon.port, request("GET", "/project.git/objects/info/alternates")
    )
    assert canary not in info.raw
    # Nor is it listed: objects/info/packs names only the real pack, and the
    # daemon says why it left the other out.
    packs = exchange(daemon.host, daemon.port, request("GET", "/project.git/objects/info/packs"))
    assert packs.status == 200, packs.raw[:300]
    assert packs.body == b"P %s\n\n" % pack.name.encode()
    deadline = time.monotonic() + 10  # the log reaches us through a pipe and a thread
    while fake.name not in daemon.log and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake.name in daemon.log and "outside the served root" in daemon.log
