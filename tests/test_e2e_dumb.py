"""
End to end: the real `twistd -n gitserve` serving the dumb protocol to the real
git client, compared header by header with `git http-backend` itself; large
files sent with sendfile(2) on plain TCP, and through Python with --no-splice.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from tests.conftest import SPLICING, Daemon, GitClient, bigRepository, spliceOn
from tests.gitrepos import mixedRepository

DUMB = {"GIT_SMART_HTTP": "0"}
IMF_FIXDATE = re.compile(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT")

Answer = tuple[int, dict[str, str], bytes]


def fetchFrom(daemon: Daemon, path: str, method: str = "GET", **headers: str) -> Answer:
    """One request to the daemon: status, headers (lower-cased names), body."""
    connection = http.client.HTTPConnection(daemon.host, daemon.port, timeout=30)
    try:
        connection.request(
            method, "/" + path, headers={k.replace("_", "-"): v for k, v in headers.items()}
        )
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def backendAnswer(git: GitClient, root: Path, path: str) -> Answer:
    """What `git http-backend` answers for the same GET, run as the CGI it is."""
    env = {
        **git.env,
        "GIT_PROJECT_ROOT": str(root),
        "GIT_HTTP_EXPORT_ALL": "1",
        "PATH_INFO": "/" + path,
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
    }
    out = subprocess.run(
        ["git", "http-backend"], env=env, capture_output=True, check=True, timeout=60
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    headers = {}
    status = 200
    for line in head.decode().split("\r\n"):
        name, _, value = line.partition(": ")
        if name.lower() == "status":
            status = int(value.split()[0])
        else:
            headers[name.lower()] = value
    return status, headers, body


def looseObjects(repository: Path) -> list[str]:
    """The loose object files of a repository, as paths relative to it."""
    return sorted(
        str(p.relative_to(repository))
        for p in (repository / "objects").glob("[0-9a-f][0-9a-f]/*")
        if p.is_file()
    )


def packFiles(repository: Path, extension: str) -> list[str]:
    return sorted(
        str(p.relative_to(repository))
        for p in (repository / "objects" / "pack").glob(f"*.{extension}")
    )


@pytest.fixture
def mixed(git: GitClient, root: Path, tmp_path: Path) -> Path:
    """A repository under the root where update-server-info never ran (packed + loose)."""
    bare = mixedRepository(git, tmp_path / "build")
    target = root / "mixed.git"
    shutil.move(str(bare), target)
    # The worktree's remote follows the move, for pushes in later steps.
    git.run("remote", "set-url", "origin", str(target), cwd=tmp_path / "build" / "work")
    return target


def assertNoServerInfo(repository: Path) -> None:
    """Serving never wrote update-server-info's files: every answer was generated."""
    assert not (repository / "info" / "refs").exists()
    assert not (repository / "objects" / "info" / "packs").exists()


def test_dumbCloneWithoutUpdateServerInfo(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """GIT_SMART_HTTP=0 clones a never-prepared repository (packed + loose); fsck is clean."""
    assert looseObjects(mixed) and packFiles(mixed, "pack")
    daemon = serve(root)
    clone = tmp_path / "clone"
    git.run("clone", "-q", daemon.url("mixed.git"), str(clone), env=DUMB)
    git.run("fsck", "--strict", "--no-dangling", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == git.output(
        "rev-parse", "main", cwd=mixed
    )
    assert git.output("rev-parse", "v1-again^{}", cwd=clone) == git.output(
        "rev-parse", "side", cwd=mixed
    )
    assert (clone / "b.txt").read_text() == "second\n"
    assertNoServerInfo(mixed)


def cloneDumb(git: GitClient, daemon: Daemon, tmp_path: Path) -> tuple[Path, Path]:
    """A dumb clone of mixed.git, and the worktree that pushes to it."""
    clone = tmp_path / "clone"
    git.run("clone", "-q", daemon.url("mixed.git"), str(clone), env=DUMB)
    return clone, tmp_path / "build" / "work"


def test_incrementalDumbFetch(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """After new pushes (loose objects, a new tag), a dumb fetch brings exactly them."""
    clone, work = cloneDumb(git, serve(root), tmp_path)
    newHead = git.commit(work, "c.txt", "third\n")
    git.run("tag", "-a", "v3", "-m", "version 3", cwd=work)
    git.run("push", "-q", "origin", "main", "v3", cwd=work)
    git.run("fetch", "-q", "--tags", "origin", cwd=clone, env=DUMB)
    git.run("fsck", "--strict", "--no-dangling", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == newHead
    assert git.output("rev-parse", "v3^{}", cwd=clone) == newHead
    assertNoServerInfo(mixed)


def test_interruptedPackDownloadResumes(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """git's own resume of a half-downloaded pack (.pack.temp) gets a 206 and completes."""
    clone, work = cloneDumb(git, serve(root), tmp_path)
    for i in range(3):
        git.commit(work, f"big{i}.bin", os.urandom(200_000).hex())
    git.run("push", "-q", "origin", "main", cwd=work)
    before = set(packFiles(mixed, "pack"))
    git.run("repack", "-d", "-q", cwd=mixed)  # the new objects now live in a second pack
    (newPackPath,) = set(packFiles(mixed, "pack")) - before
    newPack = mixed / newPackPath
    # What an interrupted download leaves behind in the client.
    half = newPack.read_bytes()[: newPack.stat().st_size // 2]
    (clone / ".git" / "objects" / "pack" / (newPack.name + ".temp")).write_bytes(half)
    trace = git.run(
        "fetch",
        "origin",
        cwd=clone,
        env={**DUMB, "GIT_TRACE_CURL": "1", "GIT_TRACE_CURL_NO_DATA": "1"},
    ).stderr
    assert f"Range: bytes={len(half)}-" in trace
    assert "HTTP/1.1 206 Partial Content" in trace
    git.run("fsck", "--strict", "--no-dangling", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == git.output(
        "rev-parse", "main", cwd=mixed
    )


@pytest.fixture
def conformance(git: GitClient, root: Path, mixed: Path) -> list[str]:
    """Every class of dumb file present in one repository, as URL paths."""
    other = git.bare(root / "other.git")
    (mixed / "objects" / "info" / "alternates").write_text(str(other / "objects") + "\n")
    (mixed / "objects" / "info" / "http-alternates").write_text("../../other.git/objects\n")
    return [
        "mixed.git/HEAD",
        "mixed.git/info/refs",
        "mixed.git/objects/info/packs",
        "mixed.git/objects/info/alternates",
        "mixed.git/objects/info/http-alternates",
        "mixed.git/" + looseObjects(mixed)[0],
        "mixed.git/" + packFiles(mixed, "pack")[0],
        "mixed.git/" + packFiles(mixed, "idx")[0],
    ]


def test_headersMatchHttpBackend(git: GitClient, serve, root: Path, conformance: list[str]) -> None:
    """Per file class: status, body, type, length, cache headers, dates as http-backend sends."""
    daemon = serve(root)
    for path in conformance:
        ours = fetchFrom(daemon, path)
        theirs = backendAnswer(git, root, path)
        assert ours[0] == theirs[0] == 200, path
        assert ours[2] == theirs[2], path
        for name in ("content-type", "content-length", "pragma", "cache-control"):
            assert ours[1].get(name) == theirs[1].get(name), (path, name)
        # http-backend writes RFC 2822 dates (+0000); HTTP wants IMF-fixdate
        # (GMT): the same instants, in the valid spelling.
        for name in ("expires", "last-modified"):
            assert (name in ours[1]) == (name in theirs[1]), (path, name)
            if name in ours[1]:
                assert IMF_FIXDATE.fullmatch(ours[1][name]), (path, ours[1][name])
        if "last-modified" in theirs[1]:
            assert parsedate_to_datetime(ours[1]["last-modified"]) == parsedate_to_datetime(
                theirs[1]["last-modified"]
            )
        if theirs[1].get("cache-control", "").startswith("public"):
            year = parsedate_to_datetime(ours[1]["expires"]) - parsedate_to_datetime(
                ours[1]["date"]
            )
            assert year.total_seconds() == 31536000, path
        else:
            assert ours[1].get("expires") == theirs[1].get("expires"), path


def test_headRequestsMatchGet(serve, root: Path, conformance: list[str]) -> None:
    """A HEAD request gets the GET's status and headers (Content-Length too) and no body."""
    daemon = serve(root)
    for path in conformance:
        get = fetchFrom(daemon, path)
        head = fetchFrom(daemon, path, method="HEAD")
        assert head[0] == get[0] == 200
        assert head[2] == b""
        for name in ("content-type", "content-length", "cache-control", "etag", "last-modified"):
            assert head[1].get(name) == get[1].get(name), (path, name)


def test_conditionalAndRangeRequests(serve, root: Path, mixed: Path) -> None:
    """ETag and Last-Modified revalidate to 304; a single range is a 206; past the end, 416."""
    daemon = serve(root)
    pack = "mixed.git/" + packFiles(mixed, "pack")[0]
    content = (root / pack).read_bytes()
    status, headers, body = fetchFrom(daemon, pack)
    assert (status, body) == (200, content)
    assert fetchFrom(daemon, pack, If_None_Match=headers["etag"])[0] == 304
    assert fetchFrom(daemon, pack, If_Modified_Since=headers["last-modified"])[0] == 304
    assert fetchFrom(daemon, pack, If_None_Match='"stale"')[0] == 200
    status, ranged, body = fetchFrom(daemon, pack, Range="bytes=12-")
    assert (status, body) == (206, content[12:])
    assert ranged["content-range"] == f"bytes 12-{len(content) - 1}/{len(content)}"
    status, ranged, _ = fetchFrom(daemon, pack, Range=f"bytes={len(content)}-")
    assert (status, ranged["content-range"]) == (416, f"bytes */{len(content)}")


def test_unknownAndMissingFilesAre404(serve, root: Path, mixed: Path) -> None:
    """Paths outside http-backend's table, and absent objects or packs, are 404."""
    daemon = serve(root)
    for path in (
        "mixed.git/config",
        "mixed.git/description",
        "mixed.git/objects/pack/" + packFiles(mixed, "pack")[0].rsplit("/", 1)[1] + ".bak",
        "mixed.git/objects/ab/" + "c" * 38,
        "mixed.git/objects/pack/pack-" + "d" * 40 + ".pack",
        "mixed.git/hooks/pre-receive.sample",
        "mixed.git/packed-refs",
        "mixed.git/refs/heads/main",
    ):
        assert fetchFrom(daemon, path)[0] == 404, path


def test_getanyfileFalseRefusesDumbOnly(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path, conformance: list[str]
) -> None:
    """http.getanyfile=false: 403 for every dumb request (even absent files); smart still clones."""
    git.run("config", "-f", str(mixed / "config"), "http.getanyfile", "false")
    daemon = serve(root)
    for path in [*conformance, "mixed.git/objects/ab/" + "c" * 38]:
        assert fetchFrom(daemon, path)[0] == 403, path
    refused = git.run(
        "clone", daemon.url("mixed.git"), str(tmp_path / "dumb"), env=DUMB, check=False
    )
    assert refused.returncode != 0
    git.run("clone", "-q", daemon.url("mixed.git"), str(tmp_path / "smart"))
    git.run("fsck", "--strict", cwd=tmp_path / "smart")


def test_uploadpackFalseKeepsDumb(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """http.uploadpack=false refuses smart fetches (403) while a dumb clone still works."""
    git.run("config", "-f", str(mixed / "config"), "http.uploadpack", "false")
    daemon = serve(root)
    assert fetchFrom(daemon, "mixed.git/info/refs?service=git-upload-pack")[0] == 403
    git.run("clone", "-q", daemon.url("mixed.git"), str(tmp_path / "clone"), env=DUMB)
    git.run("fsck", "--strict", "--no-dangling", cwd=tmp_path / "clone")


def test_dumbWithoutGitBinary(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """With no git binary on the daemon's PATH, clones still work, natively over dumb HTTP."""
    daemon = serve(root, env={"PATH": str(tmp_path / "no-git-here")})
    git.run("clone", "-q", daemon.url("mixed.git"), str(tmp_path / "dumb"), env=DUMB)
    git.run("fsck", "--strict", "--no-dangling", cwd=tmp_path / "dumb")
    # A client that asks for smart first gets the plain ref list and falls
    # back to dumb by itself, as it does against a static file server.
    git.run("clone", "-q", daemon.url("mixed.git"), str(tmp_path / "plain"))
    git.run("fsck", "--strict", "--no-dangling", cwd=tmp_path / "plain")
    assert git.output("rev-parse", "origin/main", cwd=tmp_path / "plain") == git.output(
        "rev-parse", "main", cwd=mixed
    )


def test_hiddenRefAbsentFromInfoRefs(git: GitClient, serve, root: Path, mixed: Path) -> None:
    """A ref hidden by uploadpack.hideRefs is not in info/refs; its siblings are."""
    git.run("update-ref", "refs/hidden/secret", "refs/tags/v1", cwd=mixed)
    git.run("config", "-f", str(mixed / "config"), "uploadpack.hideRefs", "refs/hidden")
    daemon = serve(root)
    status, _, body = fetchFrom(daemon, "mixed.git/info/refs")
    assert status == 200
    assert b"refs/hidden" not in body
    assert b"\trefs/heads/main\n" in body
    assert b"\trefs/tags/v1^{}\n" in body


def test_symlinkOutOfRootIsNeverServed(
    git: GitClient, serve, root: Path, mixed: Path, tmp_path: Path
) -> None:
    """Files inside a repository that are symlinks leading outside --root get 404."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients\n")
    (mixed / "objects" / "info" / "alternates").symlink_to(secret)
    loose = mixed / looseObjects(mixed)[0]
    loose.unlink()
    loose.symlink_to(secret)
    idx = mixed / packFiles(mixed, "idx")[0]
    outside = tmp_path / "outside.idx"
    shutil.move(str(idx), outside)
    idx.symlink_to(outside)
    daemon = serve(root)
    for path in (
        "mixed.git/objects/info/alternates",
        "mixed.git/" + str(loose.relative_to(mixed)),
        "mixed.git/" + str(idx.relative_to(mixed)),
    ):
        status, _, body = fetchFrom(daemon, path)
        assert status == 404, path
        assert b"not for clients" not in body


def test_slowReaderKeepsServerMemoryFlat(serve, root: Path, mixed: Path) -> None:
    """A client that stops reading a large pack costs the daemon no memory; it completes later."""
    content = os.urandom(48 * 1024 * 1024)
    name = "pack-" + "e" * 40 + ".pack"
    (mixed / "objects" / "pack" / name).write_bytes(content)
    daemon = serve(root)
    baseline = daemon.rss()
    sock = socket.create_connection((daemon.host, daemon.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /mixed.git/objects/pack/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode())
    received = sock.recv(64 * 1024)
    peak = baseline
    for _ in range(12):
        time.sleep(0.25)
        peak = max(peak, daemon.rss())
    assert peak - baseline < 16 * 1024 * 1024, (baseline, peak)
    sock.settimeout(60)
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(content) in head
    digest = hashlib.sha256(body)
    total = len(body)
    while total < len(content) and (chunk := sock.recv(1024 * 1024)):
        digest.update(chunk)
        total += len(chunk)
    sock.close()
    assert total == len(content)
    assert digest.digest() == hashlib.sha256(content).digest()


def test_sha256RepositoryDumbClone(git: GitClient, serve, root: Path, tmp_path: Path) -> None:
    """A sha256 repository (64-hex packs, 62-hex loose objects) dumb-clones; fsck is clean."""
    work = tmp_path / "work256"
    git.run("init", "-q", "--object-format=sha256", str(work))
    first = git.commit(work, "a.txt", "first\n")
    git.run("tag", "-a", "v1", "-m", "v1", cwd=work)
    git.run("clone", "-q", "--bare", str(work), str(root / "s256.git"))
    git.run("repack", "-a", "-d", "-q", cwd=root / "s256.git")
    git.commit(work, "b.txt", "second\n")
    git.run("push", "-q", str(root / "s256.git"), "main", cwd=work)
    loose = looseObjects(root / "s256.git")
    assert loose and all(len(p.rsplit("/", 1)[1]) == 62 for p in loose)
    daemon = serve(root)
    clone = tmp_path / "clone256"
    git.run("clone", "-q", daemon.url("s256.git"), str(clone), env=DUMB)
    git.run("fsck", "--strict", "--no-dangling", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == git.output(
        "rev-parse", "HEAD", cwd=work
    )
    assert git.output("rev-parse", "v1^{}", cwd=clone) == first


MiB = 1024 * 1024
FAKE_PACK = "pack-" + "e" * 40 + ".pack"


@spliceOn
def test_dumbCloneOfABigPackIsSentWithSendfile(
    git: GitClient, serve, root: Path, tmp_path: Path
) -> None:
    """A dumb clone of a 24 MB pack: the pack goes out with sendfile(2); fsck is clean."""
    head = bigRepository(git, root, tmp_path / "big", 24)
    git.run("repack", "-a", "-d", "-q", cwd=root / "big.git")
    (pack,) = packFiles(root / "big.git", "pack")
    size = (root / "big.git" / pack).stat().st_size
    daemon = serve(root)
    before = daemon.written()
    clone = tmp_path / "clone"
    git.run("clone", "-q", daemon.url("big.git"), str(clone), env=DUMB)
    git.run("fsck", "--full", "--strict", "--no-dangling", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == head
    # sendfile(2) counts as written; Python's socket sends do not.
    assert daemon.written() - before >= size


@pytest.mark.parametrize("splice", [True, False], ids=["sendfile", "no-splice"])
def test_largeDownloadIsByteIdentical(serve, root: Path, mixed: Path, splice: bool) -> None:
    """A 48 MiB file, whole and as a Range: the same bytes by sendfile(2) and by Python."""
    content = os.urandom(48 * MiB)
    (mixed / "objects" / "pack" / FAKE_PACK).write_bytes(content)
    daemon = serve(root, *(() if splice else ("--no-splice",)))
    path = "mixed.git/objects/pack/" + FAKE_PACK
    before = daemon.written()
    status, headers, body = fetchFrom(daemon, path)
    assert (status, headers["content-length"]) == (200, str(len(content)))
    assert hashlib.sha256(body).digest() == hashlib.sha256(content).digest()
    offset = 12_345_678
    status, headers, body = fetchFrom(daemon, path, Range=f"bytes={offset}-")
    assert status == 206
    assert headers["content-range"] == f"bytes {offset}-{len(content) - 1}/{len(content)}"
    assert hashlib.sha256(body).digest() == hashlib.sha256(content[offset:]).digest()
    written = daemon.written() - before
    if splice and SPLICING:
        assert written >= 2 * len(content) - offset
    else:
        assert written < MiB


def test_fileShrinkingMidDownloadClosesTheConnection(serve, root: Path, mixed: Path) -> None:
    """A file truncated while it is sent: the client gets less than Content-Length, then a close."""
    content = os.urandom(48 * MiB)
    target = mixed / "objects" / "pack" / FAKE_PACK
    target.write_bytes(content)
    daemon = serve(root)
    sock = socket.create_connection((daemon.host, daemon.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(b"GET /mixed.git/objects/pack/%s HTTP/1.1\r\nHost: x\r\n\r\n" % FAKE_PACK.encode())
    sock.settimeout(30)
    received = b""
    while len(received) < MiB:
        received += sock.recv(MiB)
    os.truncate(target, 2 * MiB)
    while piece := sock.recv(MiB):
        received += piece
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"Content-Length: %d" % len(content) in head
    assert len(body) < len(content)
    assert body[: MiB // 2] == content[: MiB // 2]
    assert daemon.waitForLog("File shrank while being served")
