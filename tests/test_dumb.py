"""Unit tests for gitserve.http.dumb: the generated texts, the file guard and the file responses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from dulwich.refs import Ref, check_ref_format
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.test.requesthelper import DummyChannel

from gitserve.core.dumbfiles import (
    ServedFile,
    generateHead,
    generateInfoPacks,
    generateInfoRefs,
    isRefHidden,
    isValidRefName,
    listPacks,
    openServedFile,
)
from gitserve.core.errors import Forbidden
from gitserve.core.policy import Policy
from gitserve.core.repository import ConfigCache, Repository
from gitserve.http.dumb import (
    CHUNK_SIZE,
    CHUNKS_PER_TURN,
    IDX_FILE,
    LOOSE_OBJECT,
    PACK_FILE,
    TEXT_FILE,
    FileRangeProducer,
    Unsatisfiable,
    isNotModified,
    parseRange,
    serveFile,
)

from .conftest import GitClient
from .gitrepos import mixedRepository


@pytest.fixture
def repo(git: GitClient, tmp_path: Path) -> Path:
    return mixedRepository(git, tmp_path)


def updateServerInfo(git: GitClient, repo: Path) -> tuple[bytes, bytes]:
    """What git itself writes for the repository, read back and removed again."""
    git.run("update-server-info", cwd=repo)
    refs = (repo / "info" / "refs").read_bytes()
    packs = (repo / "objects" / "info" / "packs").read_bytes()
    (repo / "info" / "refs").unlink()
    (repo / "objects" / "info" / "packs").unlink()
    return refs, packs


# info/refs


def test_infoRefsIdenticalToUpdateServerInfo(git: GitClient, repo: Path) -> None:
    """info/refs is byte for byte what update-server-info writes (tags peeled, HEAD left out)."""
    generated = generateInfoRefs(repo)
    expected, _ = updateServerInfo(git, repo)
    assert generated == expected
    assert b"refs/tags/v1-again^{}" in generated
    assert b"\tHEAD\n" not in generated


def test_sha256IdenticalToUpdateServerInfo(git: GitClient, tmp_path: Path) -> None:
    """In a sha256 repository, info/refs and objects/info/packs match update-server-info too."""
    work = tmp_path / "work256"
    git.run("init", "-q", "--object-format=sha256", str(work))
    git.commit(work, "a.txt", "first\n")
    git.run("tag", "-a", "v1", "-m", "v1", cwd=work)
    git.run("gc", "-q", cwd=work)
    git.commit(work, "b.txt", "second\n")
    gitDir = work / ".git"
    refs, packs = generateInfoRefs(gitDir), generateInfoPacks(gitDir, gitDir.parent)
    assert (refs, packs) == updateServerInfo(git, gitDir)
    assert len(refs.split(b"\t", 1)[0]) == 64


def test_infoRefsWithoutFullyPeeledTrait(git: GitClient, repo: Path) -> None:
    """A packed-refs from an old git (no fully-peeled trait) still gives git's exact output."""
    packedRefs = repo / "packed-refs"
    lines = packedRefs.read_bytes().split(b"\n")
    assert b"fully-peeled" in lines[0]
    # Old git peeled only tags and said so with "peeled" alone; drop the ^ lines too,
    # so only reading the objects can find the tags.
    kept = [b"# pack-refs with: peeled "] + [ln for ln in lines[1:] if not ln.startswith(b"^")]
    packedRefs.write_bytes(b"\n".join(kept))
    generated = generateInfoRefs(repo)
    expected, _ = updateServerInfo(git, repo)
    assert generated == expected
    assert b"refs/tags/v1^{}" in generated


def test_infoRefsWritesNothing(repo: Path) -> None:
    """Generating info/refs leaves no info/refs (or anything else) behind."""
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    generateInfoRefs(repo)
    generateInfoPacks(repo, repo.parent)
    generateHead(repo)
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_infoRefsLeavesOutHiddenRefs(git: GitClient, repo: Path) -> None:
    """Refs hidden by hideRefs patterns are left out, with their peeled lines."""
    git.run("update-ref", "refs/hidden/secret", "refs/tags/v1", cwd=repo)
    git.run("update-ref", "refs/hidden/shown", "refs/heads/main", cwd=repo)
    text = generateInfoRefs(repo, [b"refs/hidden", b"!refs/hidden/shown"])
    assert b"refs/hidden/secret" not in text
    assert b"\trefs/hidden/shown\n" in text
    assert b"\trefs/heads/main\n" in text
    assert b"refs/hidden/secret" in generateInfoRefs(repo)


def test_infoRefsSkipsRefsToMissingObjects(repo: Path) -> None:
    """A ref whose object is missing is skipped, as http-backend skips it."""
    (repo / "refs" / "heads" / "broken").write_text("1" * 40 + "\n")
    (repo / "refs" / "heads" / "x.lock").write_text("1" * 40 + "\n")
    text = generateInfoRefs(repo)
    assert b"broken" not in text
    assert b"x.lock" not in text
    assert b"\trefs/heads/main\n" in text


@pytest.mark.parametrize(
    "refname, patterns, hidden",
    [
        (b"refs/pull/1/head", [b"refs/pull"], True),
        (b"refs/pulls", [b"refs/pull"], False),
        (b"refs/pull", [b"refs/pull"], True),
        (b"refs/heads/main", [b"refs/heads", b"!refs/heads/main"], False),
        (b"refs/heads/main", [b"!refs/heads/main", b"refs/heads"], True),
        (b"refs/heads/main", [b"^refs/heads/main"], True),
        (b"refs/heads/main", [], False),
    ],
)
def test_isRefHidden(refname: bytes, patterns: list[bytes], hidden: bool) -> None:
    """hideRefs follows git's ref_is_hidden(): prefix at a slash, last match wins, ! negates."""
    assert isRefHidden(refname, patterns) is hidden


def test_policyHiddenRefs(git: GitClient, repo: Path) -> None:
    """Policy reads transfer.hideRefs then uploadpack.hideRefs, trailing slashes dropped."""
    git.run("config", "--add", "transfer.hideRefs", "refs/hidden/", cwd=repo)
    git.run("config", "--add", "uploadpack.hideRefs", "refs/x//", cwd=repo)
    git.run("config", "--add", "receivepack.hideRefs", "refs/pushonly", cwd=repo)
    policy = Policy(configs=ConfigCache())
    repository = Repository(gitDir=repo, name="repo")
    assert policy.hiddenRefs(repository) == [b"refs/hidden", b"refs/x"]


@pytest.mark.parametrize("value, forbidden", [(None, False), ("true", False), ("false", True)])
def test_policyGetAnyFile(git: GitClient, repo: Path, value: str | None, forbidden: bool) -> None:
    """http.getanyfile is on unless set false; off, every dumb answer is a 403."""
    if value is not None:
        git.run("config", "http.getanyfile", value, cwd=repo)
    policy = Policy(configs=ConfigCache())
    repository = Repository(gitDir=repo, name="repo")
    if forbidden:
        with pytest.raises(Forbidden):
            policy.checkGetAnyFile(repository)
    else:
        policy.checkGetAnyFile(repository)


# HEAD


def test_headSymbolic(repo: Path) -> None:
    """HEAD names its branch, as http-backend's get_head() does."""
    assert generateHead(repo) == b"ref: refs/heads/main\n"


def test_headDetached(git: GitClient, repo: Path) -> None:
    """A detached HEAD is its object id."""
    commit = git.output("rev-parse", "refs/heads/side", cwd=repo).strip()
    (repo / "HEAD").write_text(commit + "\n")
    assert generateHead(repo) == commit.encode() + b"\n"


def test_headUnborn(git: GitClient, tmp_path: Path) -> None:
    """An unborn HEAD sends nothing, as http-backend's head_ref_namespaced() does."""
    git.run("init", "-q", "--bare", "-b", "main", str(tmp_path / "empty.git"))
    assert generateHead(tmp_path / "empty.git") == b""


# objects/info/packs


def test_infoPacksIdenticalToUpdateServerInfo(git: GitClient, repo: Path) -> None:
    """With one pack, objects/info/packs is byte for byte update-server-info's."""
    generated = generateInfoPacks(repo, repo.parent)
    _, expected = updateServerInfo(git, repo)
    assert generated == expected
    assert generated.startswith(b"P pack-") and generated.endswith(b".pack\n\n")


def test_infoPacksSamePacksAsUpdateServerInfo(git: GitClient, repo: Path) -> None:
    """With several packs, the same packs as update-server-info, newest first."""
    git.run("repack", "-q", cwd=repo)  # packs the loose objects into a second pack
    packs = listPacks(repo / "objects", repo.parent)
    assert len(packs) == 2
    newest = max(packs, key=lambda name: (repo / "objects" / "pack" / name).stat().st_mtime_ns)
    os.utime(repo / "objects" / "pack" / newest, (2e9, 2e9))
    _, expected = updateServerInfo(git, repo)
    generated = generateInfoPacks(repo, repo.parent)
    assert sorted(generated.splitlines()) == sorted(expected.splitlines())
    assert generated.splitlines()[0] == b"P " + newest.encode()


def test_infoPacksLeavesOutUnfinishedPacks(repo: Path) -> None:
    """Temporary, index-less, pack-less and quarantined packs are never listed."""
    packDir = repo / "objects" / "pack"
    (real,) = listPacks(repo / "objects", repo.parent)
    (packDir / "tmp_pack_abc123").write_bytes(b"PACK")
    (packDir / "tmp_idx_abc123").write_bytes(b"idx")
    # git repack's in-progress names (pack-objects writes .tmp-<pid>-pack-*).
    shutil.copy(packDir / real, packDir / (".tmp-123-pack-" + "e" * 40 + ".pack"))
    shutil.copy(
        packDir / real.replace(".pack", ".idx"), packDir / (".tmp-123-pack-" + "e" * 40 + ".idx")
    )
    (packDir / ("pack-" + "a" * 40 + ".pack")).write_bytes(b"PACK")  # no .idx yet
    (packDir / ("pack-" + "b" * 40 + ".idx")).write_bytes(b"idx")  # its pack is gone
    quarantine = repo / "objects" / "incoming-XyZ" / "pack"
    quarantine.mkdir(parents=True)
    shutil.copy(packDir / real, quarantine / ("pack-" + "c" * 40 + ".pack"))
    shutil.copy(packDir / real.replace(".pack", ".idx"), quarantine / ("pack-" + "c" * 40 + ".idx"))
    assert generateInfoPacks(repo, repo.parent) == b"P %s\n\n" % real.encode()


def test_infoPacksWithoutPacks(git: GitClient, tmp_path: Path) -> None:
    """A repository without packs lists none (just the closing blank line)."""
    git.run("init", "-q", "--bare", str(tmp_path / "empty.git"))
    assert generateInfoPacks(tmp_path / "empty.git", tmp_path) == b"\n"


@pytest.mark.parametrize("linked", ["pack", "idx", "both"])
def test_infoPacksLeavesOutPacksLinkedOutsideTheRoot(
    repo: Path, tmp_path: Path, linked: str
) -> None:
    """A pack whose .pack or .idx is a symlink out of the root is not listed, and is logged."""
    packDir = repo / "objects" / "pack"
    (real,) = listPacks(repo / "objects", repo.parent)
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    fake = "pack-" + "e" * 40
    for suffix in (".pack", ".idx"):
        source = packDir / real.replace(".pack", suffix)
        copy = outside / (fake + suffix)
        shutil.copy(source, copy)
        if linked in (suffix.lstrip("."), "both"):
            (packDir / (fake + suffix)).symlink_to(copy)
        else:
            shutil.copy(source, packDir / (fake + suffix))
    with capturedLogs() as events:
        assert listPacks(repo / "objects", repo.parent) == [real]
        assert generateInfoPacks(repo, repo.parent) == b"P %s\n\n" % real.encode()
    messages = [formatEvent(event) for event in events]
    assert len(messages) == 2, messages
    assert all(fake in message and "outside the served root" in message for message in messages)


def test_infoPacksKeepsPacksLinkedWithinTheRoot(repo: Path) -> None:
    """The control: a pack symlinked to another file inside the root is still listed."""
    packDir = repo / "objects" / "pack"
    (real,) = listPacks(repo / "objects", repo.parent)
    elsewhere = repo.parent / "elsewhere"
    elsewhere.mkdir()
    fake = "pack-" + "e" * 40
    for suffix in (".pack", ".idx"):
        shutil.copy(packDir / real.replace(".pack", suffix), elsewhere / (fake + suffix))
        (packDir / (fake + suffix)).symlink_to(elsewhere / (fake + suffix))
    assert sorted(listPacks(repo / "objects", repo.parent)) == sorted([real, fake + ".pack"])


# The file guard


def test_openServedFileInsideRoot(tmp_path: Path) -> None:
    """A regular file under the root opens, with its size and a quoted ETag."""
    (tmp_path / "f").write_bytes(b"hello")
    served = openServedFile(tmp_path, tmp_path / "f")
    assert served is not None
    try:
        assert served.size == 5
        assert served.etag.startswith(b'"') and served.etag.endswith(b'"')
        assert served.fileObject.read() == b"hello"
    finally:
        served.close()


def test_openServedFileRefusesSymlinkOutOfRoot(tmp_path: Path) -> None:
    """A symlink leading outside the root is refused, even from deep inside a repository."""
    root = tmp_path / "root"
    (root / "repo.git" / "objects" / "ab").mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_text("private")
    link = root / "repo.git" / "objects" / "ab" / ("c" * 38)
    link.symlink_to(secret)
    assert openServedFile(root, link) is None
    # The same link target inside the root is fine: admins share objects that way.
    inside = root / "shared"
    inside.write_text("shared")
    link.unlink()
    link.symlink_to(inside)
    served = openServedFile(root, link)
    assert served is not None
    served.close()


def test_openServedFileRefusesDirectoryLinkOutOfRoot(tmp_path: Path) -> None:
    """A symlinked directory on the way out of the root is refused too."""
    root = tmp_path / "root"
    (root / "repo.git").mkdir(parents=True)
    outside = tmp_path / "elsewhere" / "pack"
    outside.mkdir(parents=True)
    (outside / "pack-x.pack").write_bytes(b"PACK")
    (root / "repo.git" / "objects").symlink_to(tmp_path / "elsewhere")
    assert openServedFile(root, root / "repo.git" / "objects" / "pack" / "pack-x.pack") is None


def test_openServedFileRefusesNonRegularFiles(tmp_path: Path) -> None:
    """Directories, FIFOs and missing files are refused (a FIFO without blocking)."""
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    assert openServedFile(tmp_path, tmp_path / "dir") is None
    assert openServedFile(tmp_path, tmp_path / "fifo") is None
    assert openServedFile(tmp_path, tmp_path / "missing") is None


# Conditional requests and ranges


@pytest.mark.parametrize(
    "ifNoneMatch, ifModifiedSince, notModified",
    [
        (b'"tag"', None, True),
        (b'"other", "tag"', None, True),
        (b'W/"tag"', None, True),
        (b"*", None, True),
        (b'"other"', None, False),
        (None, b"Tue, 14 Nov 2023 22:13:20 GMT", True),  # == mtime
        (None, b"Wed, 15 Nov 2023 00:00:00 GMT", True),  # later
        (None, b"Tue, 14 Nov 2023 22:13:19 GMT", False),  # a second earlier
        (None, b"not a date", False),
        (b'"other"', b"Wed, 15 Nov 2023 00:00:00 GMT", False),  # If-None-Match wins
        (None, None, False),
    ],
)
def test_isNotModified(
    ifNoneMatch: bytes | None, ifModifiedSince: bytes | None, notModified: bool
) -> None:
    """Validators decide 304 per RFC 9110: ETag lists, weak tags, *, dates; ETag first."""
    assert isNotModified(ifNoneMatch, ifModifiedSince, b'"tag"', 1700000000.5) is notModified


@pytest.mark.parametrize(
    "header, expected",
    [
        (None, None),
        (b"bytes=0-9", (0, 10)),
        (b"bytes=10-", (10, 90)),
        (b"bytes=90-200", (90, 10)),
        (b"bytes=-5", (95, 5)),
        (b"bytes=-500", (0, 100)),
        (b"bytes=0-0", (0, 1)),
        (b"bytes=5-1", None),
        (b"bytes=0-1,5-6", None),
        (b"items=0-1", None),
        (b"bytes=x-1", None),
        (b"bytes=+1-2", None),
        (b"bytes=", None),
    ],
)
def test_parseRange(header: bytes | None, expected: tuple[int, int] | None) -> None:
    """One byte range becomes (offset, length); anything else means the whole file."""
    assert parseRange(header, 100) == expected


@pytest.mark.parametrize("header", [b"bytes=100-", b"bytes=500-600", b"bytes=-0"])
def test_parseRangeUnsatisfiable(header: bytes) -> None:
    """A range wholly past the end is unsatisfiable (416)."""
    with pytest.raises(Unsatisfiable):
        parseRange(header, 100)


# File responses on a real twisted.web Request


NOW = 1800000000.0


def makeRequest(method: bytes = b"GET", **headers: bytes) -> Request:
    """A real Request on a dummy channel (finish() forgets the channel, so keep its transport)."""
    channel = DummyChannel()
    request = Request(channel)
    request.testTransport = channel.transport
    request.method = method
    request.clientproto = b"HTTP/1.1"
    for name, value in headers.items():
        request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value])
    return request


def drain(request: Request, clock: Clock) -> None:
    """Let the clock run the registered streaming producer's turns until it is done."""
    transport = request.testTransport
    assert transport.producers, "no producer was registered"
    producer, streaming = transport.producers[-1]
    assert streaming is True
    for _ in range(10000):
        if request.finished or request._disconnected:
            return
        clock.advance(0)
    raise AssertionError("producer never finished")


def runTurn(clock: Clock) -> None:
    """
    Run the calls due now, as one reactor iteration does: calls they schedule
    wait for the next turn (Clock.advance would run those at once too).
    """
    for call in [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]:
        if call.active():
            func, args, kw = call.func, call.args, call.kw
            call.cancel()
            func(*args, **kw)


def parseResponse(request: Request) -> tuple[int, dict[bytes, bytes], bytes]:
    raw = request.testTransport.written.getvalue()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    code = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        headers[name.lower()] = value
    return code, headers, body


def serve(tmp_path: Path, request: Request, content: bytes, fileClass=PACK_FILE):
    path = tmp_path / "file"
    path.write_bytes(content)
    os.utime(path, (1700000000, 1700000000))
    served = openServedFile(tmp_path, path)
    assert served is not None
    clock = Clock()
    clock.advance(NOW)
    result = serveFile(request, served, fileClass, clock)
    assert result is NOT_DONE_YET
    if not request.finished:
        drain(request, clock)
    return served


@pytest.mark.parametrize(
    "fileClass, contentType",
    [
        (LOOSE_OBJECT, b"application/x-git-loose-object"),
        (PACK_FILE, b"application/x-git-packed-objects"),
        (IDX_FILE, b"application/x-git-packed-objects-toc"),
    ],
)
def test_serveObjectCachedForAYear(tmp_path: Path, fileClass, contentType: bytes) -> None:
    """Objects, packs and indexes: http-backend's type, cached a year, validators, whole body."""
    content = os.urandom(3 * CHUNK_SIZE + 17)
    request = makeRequest()
    serve(tmp_path, request, content, fileClass)
    code, headers, body = parseResponse(request)
    assert code == 200
    assert body == content
    assert headers[b"content-type"] == contentType
    assert headers[b"content-length"] == b"%d" % len(content)
    assert headers[b"cache-control"] == b"public, max-age=31536000"
    assert headers[b"date"] == b"Fri, 15 Jan 2027 08:00:00 GMT"
    assert headers[b"expires"] == b"Sat, 15 Jan 2028 08:00:00 GMT"
    assert headers[b"last-modified"] == b"Tue, 14 Nov 2023 22:13:20 GMT"
    assert headers[b"etag"].startswith(b'"')
    assert headers[b"accept-ranges"] == b"bytes"
    assert b"pragma" not in headers


def test_serveTextFileNoCache(tmp_path: Path) -> None:
    """Text files (alternates): text/plain and http-backend's three no-cache headers."""
    request = makeRequest()
    serve(tmp_path, request, b"../../other.git/objects\n", TEXT_FILE)
    code, headers, body = parseResponse(request)
    assert code == 200
    assert body == b"../../other.git/objects\n"
    assert headers[b"content-type"] == b"text/plain"
    assert headers[b"expires"] == b"Fri, 01 Jan 1980 00:00:00 GMT"
    assert headers[b"pragma"] == b"no-cache"
    assert headers[b"cache-control"] == b"no-cache, max-age=0, must-revalidate"
    assert headers[b"last-modified"] == b"Tue, 14 Nov 2023 22:13:20 GMT"


def startServing(tmp_path: Path, chunks: int = 10) -> tuple[Request, ServedFile, Clock]:
    """A GET of a file of C{chunks} chunks, its producer registered and not yet run."""
    path = tmp_path / "big"
    path.write_bytes(b"x" * (chunks * CHUNK_SIZE))
    served = openServedFile(tmp_path, path)
    assert served is not None
    request = makeRequest()
    clock = Clock()
    serveFile(request, served, PACK_FILE, clock)
    return request, served, clock


def test_producerStreamsInBoundedTurns(tmp_path: Path) -> None:
    """Each reactor turn sends at most CHUNKS_PER_TURN chunks: never the whole file at once."""
    request, served, clock = startServing(tmp_path)
    written = request.testTransport.written
    assert written.getvalue() == b""  # nothing before the reactor turns
    runTurn(clock)
    firstTurn = len(written.getvalue())
    runTurn(clock)
    assert len(written.getvalue()) - firstTurn == CHUNKS_PER_TURN * CHUNK_SIZE
    assert not request.finished
    drain(request, clock)
    assert request.finished
    assert served.fileObject.closed
    assert clock.getDelayedCalls() == []


def test_producerHonoursPause(tmp_path: Path) -> None:
    """A transport that pauses the producer (full buffer) gets nothing until it resumes."""
    request, served, clock = startServing(tmp_path)
    producer, _ = request.testTransport.producers[-1]
    runTurn(clock)
    producer.pauseProducing()
    sent = len(request.testTransport.written.getvalue())
    for _ in range(5):
        clock.advance(0)
    assert len(request.testTransport.written.getvalue()) == sent
    assert clock.getDelayedCalls() == []
    producer.resumeProducing()
    drain(request, clock)
    assert request.finished


def test_notModifiedByETag(tmp_path: Path) -> None:
    """If-None-Match with the current ETag gives a 304 with no body and the validators."""
    first = makeRequest()
    serve(tmp_path, first, b"content")
    etag = parseResponse(first)[1][b"etag"]
    request = makeRequest(If_None_Match=etag)
    served = serve(tmp_path, request, b"content")
    code, headers, body = parseResponse(request)
    assert code == 304
    assert body == b""
    assert headers[b"etag"] == etag
    assert b"content-length" not in headers
    assert served.fileObject.closed


def test_notModifiedSince(tmp_path: Path) -> None:
    """If-Modified-Since at or after Last-Modified gives a 304."""
    request = makeRequest(If_Modified_Since=b"Tue, 14 Nov 2023 22:13:20 GMT")
    serve(tmp_path, request, b"content")
    assert parseResponse(request)[0] == 304


def test_modifiedSince(tmp_path: Path) -> None:
    """If-Modified-Since before Last-Modified gives the file."""
    request = makeRequest(If_Modified_Since=b"Mon, 13 Nov 2023 00:00:00 GMT")
    serve(tmp_path, request, b"content")
    assert parseResponse(request)[0] == 200
    assert parseResponse(request)[2] == b"content"


def test_rangeResumes(tmp_path: Path) -> None:
    """A single open-ended Range (how git resumes a pack) gives a 206 with the tail."""
    content = os.urandom(2 * CHUNK_SIZE + 5)
    request = makeRequest(Range=b"bytes=1000-")
    serve(tmp_path, request, content)
    code, headers, body = parseResponse(request)
    assert code == 206
    assert body == content[1000:]
    assert headers[b"content-range"] == b"bytes 1000-%d/%d" % (len(content) - 1, len(content))
    assert headers[b"content-length"] == b"%d" % (len(content) - 1000)


def test_rangeUnsatisfiable(tmp_path: Path) -> None:
    """A Range past the end gives a 416 naming the size."""
    request = makeRequest(Range=b"bytes=50-")
    serve(tmp_path, request, b"0123456789")
    code, headers, body = parseResponse(request)
    assert code == 416
    assert headers[b"content-range"] == b"bytes */10"
    assert body == b""


def test_ifRangeStaleSendsWholeFile(tmp_path: Path) -> None:
    """If-Range naming an old version sends the whole file, never a splice of two."""
    request = makeRequest(Range=b"bytes=5-", If_Range=b'"old-etag"')
    serve(tmp_path, request, b"0123456789")
    code, _, body = parseResponse(request)
    assert (code, body) == (200, b"0123456789")


def test_ifRangeCurrentAllowsRange(tmp_path: Path) -> None:
    """If-Range naming the current Last-Modified lets the range apply."""
    request = makeRequest(Range=b"bytes=5-", If_Range=b"Tue, 14 Nov 2023 22:13:20 GMT")
    serve(tmp_path, request, b"0123456789")
    code, _, body = parseResponse(request)
    assert (code, body) == (206, b"56789")


def test_headRequestSendsNoBody(tmp_path: Path) -> None:
    """HEAD gets the GET headers, the real Content-Length, and no body or producer."""
    request = makeRequest(method=b"HEAD")
    served = serve(tmp_path, request, b"0123456789")
    code, headers, body = parseResponse(request)
    assert (code, body) == (200, b"")
    assert headers[b"content-length"] == b"10"
    assert request.testTransport.producers == []
    assert served.fileObject.closed


def test_clientGoneClosesFile(tmp_path: Path) -> None:
    """A client that disconnects mid-download stops the producer and closes the file."""
    request, served, clock = startServing(tmp_path)
    runTurn(clock)
    sent = len(request.testTransport.written.getvalue())
    assert sent < 10 * CHUNK_SIZE
    request.connectionLost(ConnectionError("gone"))
    assert served.fileObject.closed
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert len(request.testTransport.written.getvalue()) == sent


def test_truncatedFileClosesConnection(tmp_path: Path) -> None:
    """A file that shrinks while being served ends the connection short of Content-Length."""
    request, served, clock = startServing(tmp_path)
    os.truncate(tmp_path / "big", CHUNK_SIZE)
    for _ in range(5):
        clock.advance(0)
    assert request.testTransport.disconnected
    assert not request.finished
    assert served.fileObject.closed


def test_rangeProducerStopsAtRangeEnd(tmp_path: Path) -> None:
    """A range producer sends exactly its bytes and then finishes the request."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 1024)
    served = openServedFile(tmp_path, path)
    assert served is not None
    request = makeRequest()
    request.setResponseCode(http.PARTIAL_CONTENT)
    request.setHeader(b"Content-Length", b"%d" % (CHUNK_SIZE + 3))
    clock = Clock()
    FileRangeProducer(request, served, 7, CHUNK_SIZE + 3, clock).start()
    drain(request, clock)
    assert parseResponse(request)[2] == (bytes(range(256)) * 1024)[7 : 7 + CHUNK_SIZE + 3]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"a",
                b"b",
                b".",
                b"/",
                b"@",
                b"{",
                b"lock",
                b" ",
                b"~",
                b"\\",
                b"*",
                b"[",
                b":",
                b"\x00",
                b"\x7f",
                b"-",
                b"\xc3\xa9",
            ]
        ),
        max_size=12,
    )
)
def test_isValidRefNameAgreesWithDulwich(parts: list[bytes]) -> None:
    """The fast ref-name check gives dulwich's (git's) verdict on names under refs/."""
    name = b"refs/" + b"".join(parts)
    assert isValidRefName(name) is check_ref_format(Ref(name))
