"""
The dumb HTTP protocol, served natively: no git child process, no
C{git update-server-info}, and never a write on a GET.

Two kinds of answer live here:

  - I{generated} text: C{HEAD}, C{info/refs} and C{objects/info/packs} are
    built from the repository on each request, byte for byte what
    C{git update-server-info} would have written (and what C{git http-backend}
    sends), so a repository nobody ran update-server-info in is dumb-clonable
    and the answer is never stale;
  - I{files} streamed from disk (loose objects, packs, their indexes and the
    C{objects/info/*alternates} text files) through a producer paced by the
    connection, never read whole into memory, with C{ETag}/C{Last-Modified}
    validators, conditional requests (304) and a single C{Range} (206) so
    that an interrupted dumb fetch of a large pack resumes instead of
    restarting.

Header values mirror C{http-backend.c}: C{hdr_nocache()} for refs and text
files, C{hdr_cache_forever()} for objects, packs and indexes. Where
http-backend sends an RFC 2822 date (C{+0000}), we send the IMF-fixdate HTTP
requires (C{GMT}); the instant is the same.

Nothing here imports the global reactor: the clock is passed in.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dulwich.objects import ObjectID, Tag
from dulwich.refs import (
    PackedRefsException,
    Ref,
    read_packed_refs_with_peeled,
)
from dulwich.repo import Repo
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from gitserve.errors import NotFound
from gitserve.headers import setCacheForever, setNoCache
from gitserve.repository import Repository

if TYPE_CHECKING:
    from gitserve.web import GitServer

log = Logger()

TEXT_PLAIN = b"text/plain"
TEXT_PLAIN_UTF8 = b"text/plain; charset=utf-8"

# How much of a file one read takes: the transport's own write buffer size,
# so memory per download stays near one chunk. A reactor turn sends at most
# CHUNKS_PER_TURN of them, so one fast download cannot starve other clients.
CHUNK_SIZE = 2**16
CHUNKS_PER_TURN = 4

# A pack in objects/pack that git itself would list: the index is written
# last when git creates a pack (the .pack is renamed into place first), so an
# index with its pack beside it is a finished pack, while tmp_pack_*,
# tmp_idx_* and the incoming-*/ quarantine directories never match.
PACK_INDEX_NAME = re.compile(r"(pack-(?:[0-9a-f]{40}|[0-9a-f]{64}))\.idx")


@dataclass(frozen=True)
class FileClass:
    """
    One class of file in http-backend's route table: how it is labelled and
    whether caches may keep it.

    @ivar contentType: the C{Content-Type} http-backend sends for it.
    @ivar cacheForever: C{hdr_cache_forever()} when true, C{hdr_nocache()}
        otherwise.
    """

    contentType: bytes
    cacheForever: bool


TEXT_FILE = FileClass(TEXT_PLAIN, cacheForever=False)
LOOSE_OBJECT = FileClass(b"application/x-git-loose-object", cacheForever=True)
PACK_FILE = FileClass(b"application/x-git-packed-objects", cacheForever=True)
IDX_FILE = FileClass(b"application/x-git-packed-objects-toc", cacheForever=True)


def sendGenerated(request: Request, contentType: bytes, body: bytes) -> bytes:
    """
    Label a generated text answer (C{send_strbuf()} in http-backend) and hand
    the body back for C{render} to return: Twisted adds the
    C{Content-Length} and drops the body for a HEAD request.
    """
    request.setHeader(b"Content-Type", contentType)
    return body


# Refs


def isRefHidden(refname: bytes, patterns: Sequence[bytes]) -> bool:
    """
    Whether a hideRefs pattern list hides C{refname}, by git's
    C{ref_is_hidden()} rules: the last matching pattern wins, C{!} negates,
    a leading C{^} names the full (un-namespaced) ref, and a pattern matches
    the ref itself or any ref below it (C{refs/pull} hides
    C{refs/pull/1/head} but not C{refs/pulls}).
    """
    for pattern in reversed(patterns):
        negated = pattern.startswith(b"!")
        if negated:
            pattern = pattern[1:]
        if pattern.startswith(b"^"):
            # We serve no namespaces, so the full name is the name.
            pattern = pattern[1:]
        if refname == pattern or refname.startswith(pattern + b"/"):
            return not negated
    return False


# git's check_refname_format() rules as one search (dulwich's checker, run
# per ref, was most of the time info/refs took with thousands of refs):
# control characters, space and ~^:?*[\, "..", "@{", empty components, a
# component starting with "." or ending with ".lock", a trailing "/" or ".".
_BAD_REFNAME = re.compile(rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|(?:^|/)\.|\.lock(?:/|$)|[/.]$")


def isValidRefName(name: bytes) -> bool:
    """Whether git would accept C{name} (under C{refs/}) as a ref name."""
    return name.startswith(b"refs/") and _BAD_REFNAME.search(name) is None


class _Missing:
    """The ref's own object is absent: git skips such a ref entirely."""


_MISSING = _Missing()


def _peel(repo: Repo, sha: bytes) -> bytes | None | _Missing:
    """
    What a ref's object peels to, as git's C{deref_tag()} peels it: through
    every level of tag (a tag of a tag peels to the commit).

    @return: L{None} when the object is not a tag (no C{^{}} line),
        C{_MISSING} when the object itself is missing (no line at all), the
        peeled object id otherwise. A tag whose target is missing gives
        L{None}, as C{deref_tag()} failing does in git.
    """
    store = repo.object_store
    try:
        typeNum, raw = store.get_raw(ObjectID(sha))
    except KeyError:
        return _MISSING
    if typeNum != Tag.type_num:
        return None
    while typeNum == Tag.type_num:
        # A tag object's first header line is always "object <id>"; reading
        # just that avoids parsing (and validating) the whole tag.
        firstLine = raw.split(b"\n", 1)[0]
        if not firstLine.startswith(b"object "):
            return None
        sha = firstLine[len(b"object ") :]
        try:
            typeNum, raw = store.get_raw(ObjectID(sha))
        except KeyError:
            return None
    return sha


def _fullyPeeledPackedRefs(gitDir: Path) -> dict[bytes, tuple[bytes, bytes | None]]:
    """
    What C{packed-refs} already says about peeling, when git wrote it with
    the C{fully-peeled} trait: C{{name: (id, peeled id or None)}}, where
    L{None} means "not a tag". Without that trait (very old git) a ref
    without a C{^} line may still be a tag, so nothing is trusted.
    """
    try:
        with open(gitDir / "packed-refs", "rb") as f:
            header = f.readline()
            if not (header.startswith(b"# pack-refs with:") and b" fully-peeled" in header):
                return {}
            return {name: (sha, peeled) for sha, name, peeled in read_packed_refs_with_peeled(f)}
    except (OSError, PackedRefsException):
        return {}


def generateInfoRefs(gitDir: Path, hidden: Sequence[bytes] = ()) -> bytes:
    """
    The dumb protocol's ref list, identical to the C{info/refs} that
    C{git update-server-info} writes: every ref under C{refs/} in byte order
    (HEAD itself left out), C{<id> TAB <name> LF}, followed for an annotated
    tag by C{<peeled id> TAB <name>^{} LF}.

    Objects are read only where C{packed-refs} cannot say what a ref peels
    to (loose refs, or a packed ref a loose one now overrides), and each
    object at most once: a repository with thousands of tags answers in
    milliseconds, not one object read per ref.

    @param gitDir: the repository's git directory.
    @param hidden: hideRefs patterns (L{Policy.hiddenRefs}); refs they hide
        are left out, as upload-pack leaves them out of its advertisement.
    """
    lines = []
    with Repo(str(gitDir)) as repo:
        refs = repo.refs
        store = repo.object_store
        packed = _fullyPeeledPackedRefs(gitDir)
        peels: dict[bytes, bytes | None | _Missing] = {}
        for name in sorted(refs.allkeys()):
            # git's ref iteration skips names it would refuse to create
            # (foo.lock leftovers, "..", control characters).
            if not isValidRefName(name):
                continue
            if isRefHidden(name, hidden):
                continue
            try:
                sha = refs[name]
            except KeyError:
                # A symbolic ref whose target is gone: git skips broken refs.
                continue
            known = packed.get(name)
            if sha not in peels:
                if known is not None and known[0] == sha:
                    # http-backend still insists the object exists.
                    peels[sha] = known[1] if ObjectID(sha) in store else _MISSING
                else:
                    peels[sha] = _peel(repo, sha)
            peeled = peels[sha]
            if isinstance(peeled, _Missing):
                continue
            lines.append(b"%s\t%s\n" % (sha, name))
            if peeled is not None:
                lines.append(b"%s\t%s^{}\n" % (peeled, name))
    return b"".join(lines)


def generateHead(gitDir: Path) -> bytes:
    """
    C{HEAD} as http-backend's C{get_head()} sends it: C{ref: <target> LF}
    when HEAD is a symbolic ref (to the last ref of the chain), the object id
    when it is detached, and nothing at all while HEAD is unborn.
    """
    with Repo(str(gitDir)) as repo:
        try:
            chain, sha = repo.refs.follow(Ref(b"HEAD"))
        except (KeyError, ValueError):
            return b""
    if sha is None:
        return b""
    if len(chain) > 1:
        return b"ref: %s\n" % (chain[-1],)
    return sha + b"\n"


def listPacks(objectsDir: Path) -> list[str]:
    """
    The finished local packs in C{objectsDir/pack}, newest first (git's own
    C{sort_pack()} order), as C{pack-<hex>.pack} names.

    Packs borrowed through alternates are left out, as git leaves them out:
    a dumb client cannot fetch them from here.
    """
    packDir = objectsDir / "pack"
    try:
        names = os.listdir(packDir)
    except OSError:
        return []
    found: list[tuple[int, str]] = []
    for name in names:
        match = PACK_INDEX_NAME.fullmatch(name)
        if match is None:
            continue
        packName = match.group(1) + ".pack"
        try:
            st = os.stat(packDir / packName)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found.append((-int(st.st_mtime), packName))
    found.sort()
    return [packName for _, packName in found]


def formatInfoPacks(packNames: Sequence[str]) -> bytes:
    """C{objects/info/packs} text for the given packs, as update-server-info writes it."""
    return b"".join(b"P %s\n" % name.encode("ascii") for name in packNames) + b"\n"


def generateInfoPacks(gitDir: Path) -> bytes:
    """C{objects/info/packs} for a repository, built from the packs present now."""
    return formatInfoPacks(listPacks(gitDir / "objects"))


# Files


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _realPath(fd: int, path: Path) -> Path:
    """
    Where an open descriptor really is. On Linux C{/proc/self/fd} names the
    file that was opened, so no rename or symlink swap between the check and
    the open can fool it; elsewhere, fall back to resolving the path.
    """
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return Path(os.path.realpath(path))


@dataclass
class ServedFile:
    """
    A file opened for serving, with the C{stat} taken from the open
    descriptor (so the headers describe exactly the bytes that will be sent).
    """

    fileObject: BinaryIO
    size: int
    mtime: float
    etag: bytes

    def close(self) -> None:
        """Release the descriptor."""
        self.fileObject.close()


def openServedFile(root: Path, path: Path) -> ServedFile | None:
    """
    Open a repository file for a dumb client, or refuse.

    @param root: the served root, resolved.
    @param path: the file, built from the resolved git directory and a route
        the route table matched (hex digits only, so no traversal in it).
    @return: the open file, or L{None} (answer 404) when it is missing, not a
        regular file, or really lives outside C{root}.
    """
    try:
        # O_NONBLOCK: opening a FIFO someone planted would otherwise block the
        # reactor forever; it is refused below as not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        # Security: a symlink inside a repository (objects/pack/pack-x.pack
        # -> /etc/shadow, or objects -> /home/other/repo.git/objects) must not
        # let a client read a file outside the served root. Checked on the
        # opened descriptor, after the open, so it cannot race with a swap.
        if not _inside(_realPath(fd, path), root):
            log.warn("Refusing {path}: it leads outside the served root", path=str(path))
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    etag = b'"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)
    return ServedFile(os.fdopen(fd, "rb"), st.st_size, st.st_mtime, etag)


def _etagMatches(header: bytes, etag: bytes) -> bool:
    """
    If-None-Match's weak comparison (RFC 9110 13.1.2): C{*} or any listed
    tag equal to ours once a C{W/} prefix is ignored.
    """
    opaque = etag.removeprefix(b"W/")
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate == b"*" or candidate.removeprefix(b"W/") == opaque:
            return True
    return False


def isNotModified(
    ifNoneMatch: bytes | None, ifModifiedSince: bytes | None, etag: bytes, mtime: float
) -> bool:
    """
    Whether a GET's validators say the client's copy is current (answer 304).

    If-None-Match wins over If-Modified-Since when both are sent (RFC 9110
    13.2.2); an unparsable date is ignored, as the RFC requires.
    """
    if ifNoneMatch is not None:
        return _etagMatches(ifNoneMatch, etag)
    if ifModifiedSince is not None:
        try:
            since = http.stringToDatetime(ifModifiedSince.split(b";", 1)[0].strip())
        except (ValueError, IndexError):
            return False
        return int(mtime) <= since
    return False


class Unsatisfiable(Exception):
    """A syntactically valid Range that lies wholly beyond the end of the file (416)."""


def parseRange(header: bytes | None, size: int) -> tuple[int, int] | None:
    """
    The single byte range a C{Range} header asks for.

    @return: C{(offset, length)}, or L{None} to send the whole file: no
        header, a header we may ignore (not C{bytes=}, malformed), or several
        ranges (RFC 9110 lets a server answer those with the full 200; a git
        client never sends them).
    @raise Unsatisfiable: for a single range starting at or after the end.
    """
    if header is None:
        return None
    unit, _, spec = header.partition(b"=")
    if unit.strip().lower() != b"bytes" or b"," in spec:
        return None
    first, dash, last = spec.strip().partition(b"-")
    if not dash:
        return None
    first, last = first.strip(), last.strip()
    if not (first.isdigit() or first == b"") or not (last.isdigit() or last == b""):
        return None
    if first == b"":
        if last == b"":
            return None
        # A suffix range: the last N bytes.
        length = min(int(last), size)
        if length == 0:
            raise Unsatisfiable()
        return size - length, length
    start = int(first)
    if start >= size:
        raise Unsatisfiable()
    end = size - 1 if last == b"" else min(int(last), size - 1)
    if end < start:
        return None
    return start, end - start + 1


def _ifRangeAllows(ifRange: bytes | None, served: ServedFile) -> bool:
    """
    Whether C{If-Range} lets the Range apply: it must name the current
    representation (our strong ETag, or exactly our Last-Modified date), or
    the client gets the whole new file rather than a splice of two versions.
    """
    if ifRange is None:
        return True
    ifRange = ifRange.strip()
    if ifRange.startswith(b'"'):
        return ifRange == served.etag
    try:
        return http.stringToDatetime(ifRange) == int(served.mtime)
    except (ValueError, IndexError):
        return False


@implementer(IPushProducer)
class FileRangeProducer:
    """
    Write C{length} bytes of a file from C{offset} to a request, then finish
    the request.

    A streaming producer paced by the connection: each reactor turn writes up
    to L{CHUNKS_PER_TURN} chunks, and stops as soon as the transport says its
    buffer is full (L{pauseProducing}, called from inside C{write}); it goes
    on when the transport has drained. A slow client therefore holds about
    one chunk of the file in memory, never the file. The turns are scheduled
    on the injected clock (Twisted's own pull-producer adapter would use the
    global cooperator instead).

    Unlike Twisted's static producers (which spin on a short read), a file
    that turns out shorter than its announced length (truncated under us)
    closes the connection, so the client sees an error rather than a short
    "successful" download.
    """

    def __init__(
        self,
        request: Request,
        served: ServedFile,
        offset: int,
        length: int,
        clock: IReactorTime,
    ) -> None:
        self._request: Request | None = request
        self._served = served
        self._offset = offset
        self._remaining = length
        self._clock = clock
        self._paused = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Register with the request and schedule the first chunks."""
        assert self._request is not None
        self._served.fileObject.seek(self._offset)
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._request.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._request is not None and not self._paused and self._call is None:
            self._call = self._clock.callLater(0, self._produce)

    def _produce(self) -> None:
        """Send chunks until paused, done, or this turn's share is sent."""
        self._call = None
        for _ in range(CHUNKS_PER_TURN):
            request = self._request
            if request is None or self._paused:
                return
            data = self._served.fileObject.read(min(CHUNK_SIZE, self._remaining))
            if not data:
                log.error("File shrank while being served; closing the connection")
                self.stopProducing()
                request.unregisterProducer()
                # Content-Length promised more: closing now makes the client
                # report a truncated transfer instead of accepting it.
                request.loseConnection()
                return
            self._remaining -= len(data)
            # write() may call pauseProducing() before it returns.
            request.write(data)
            if self._remaining == 0:
                self.stopProducing()
                request.unregisterProducer()
                request.finish()
                return
        self._schedule()

    def pauseProducing(self) -> None:
        """The transport's buffer is full: stop until it asks again."""
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self) -> None:
        """The transport drained: go on."""
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        """The client went away (or we are done): drop the request, close the file."""
        self._request = None
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._served.close()


def serveFile(
    request: Request, served: ServedFile, fileClass: FileClass, clock: IReactorTime
) -> object:
    """
    Answer a GET (or HEAD) with an opened file: headers for its class, a 304
    when the client's validators match, a 206 for a single satisfiable range,
    a 416 for an unsatisfiable one, else the whole file.

    The request is finished here or by the producer; the caller returns the
    result from C{render}.

    @return: L{NOT_DONE_YET}.
    """
    if fileClass.cacheForever:
        setCacheForever(request, int(clock.seconds()))
    else:
        setNoCache(request)
    request.setHeader(b"Last-Modified", http.datetimeToString(int(served.mtime)))
    request.setHeader(b"ETag", served.etag)

    if isNotModified(
        request.getHeader(b"If-None-Match"),
        request.getHeader(b"If-Modified-Since"),
        served.etag,
        served.mtime,
    ):
        served.close()
        request.setResponseCode(http.NOT_MODIFIED)
        request.finish()
        return NOT_DONE_YET

    request.setHeader(b"Accept-Ranges", b"bytes")
    request.setHeader(b"Content-Type", fileClass.contentType)
    offset, length = 0, served.size
    rangeHeader = request.getHeader(b"Range")
    if rangeHeader is not None and _ifRangeAllows(request.getHeader(b"If-Range"), served):
        try:
            wanted = parseRange(rangeHeader, served.size)
        except Unsatisfiable:
            served.close()
            request.setResponseCode(http.REQUESTED_RANGE_NOT_SATISFIABLE)
            request.setHeader(b"Content-Range", b"bytes */%d" % (served.size,))
            request.setHeader(b"Content-Length", b"0")
            request.finish()
            return NOT_DONE_YET
        if wanted is not None:
            offset, length = wanted
            request.setResponseCode(http.PARTIAL_CONTENT)
            request.setHeader(
                b"Content-Range",
                b"bytes %d-%d/%d" % (offset, offset + length - 1, served.size),
            )
    request.setHeader(b"Content-Length", b"%d" % (length,))

    if request.method == b"HEAD" or length == 0:
        served.close()
        request.write(b"")
        request.finish()
        return NOT_DONE_YET
    FileRangeProducer(request, served, offset, length, clock).start()
    return NOT_DONE_YET


# The route handlers (see gitserve.web.ROUTES). Each checks http.getanyfile
# first, as every dumb handler in http-backend does, so a switched-off
# repository answers 403 even for files it does not have.


def getHead(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> bytes:
    """C{GET HEAD}: generated, C{text/plain}, and (as in http-backend) no cache headers."""
    server.policy.checkGetAnyFile(repository)
    return sendGenerated(request, TEXT_PLAIN, generateHead(repository.gitDir))


def getDumbInfoRefs(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{GET info/refs} without C{service=}: the ref list, generated now, never
    cached. Reading thousands of refs and their objects takes a while, so it
    runs through C{server.runBlocking} (a thread, in the daemon), and the
    reactor keeps serving other clients meanwhile.
    """
    server.policy.checkGetAnyFile(repository)
    hidden = server.policy.hiddenRefs(repository)
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def send(body: bytes) -> None:
        if gone:
            # The client left while the refs were being read.
            return
        setNoCache(request)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    work = server.runBlocking(lambda: generateInfoRefs(repository.gitDir, hidden))
    return work.addCallback(send)


def getInfoPacks(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> bytes:
    """C{GET objects/info/packs}: the packs present now, never cached."""
    server.policy.checkGetAnyFile(repository)
    setNoCache(request)
    return sendGenerated(request, TEXT_PLAIN_UTF8, generateInfoPacks(repository.gitDir))


def fileHandler(
    fileClass: FileClass,
) -> Callable[[GitServer, Request, Repository, Sequence[str]], object]:
    """
    The handler for one class of file: the matched route suffix (hex digits
    and fixed names only) is the file's path inside the git directory.
    """

    def getFile(
        server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
    ) -> object:
        server.policy.checkGetAnyFile(repository)
        served = openServedFile(server.root, repository.gitDir.joinpath(*suffix))
        if served is None:
            raise NotFound()
        return serveFile(request, served, fileClass, server.clock)

    return getFile


getTextFile = fileHandler(TEXT_FILE)
getLooseObject = fileHandler(LOOSE_OBJECT)
getPackFile = fileHandler(PACK_FILE)
getIdxFile = fileHandler(IDX_FILE)
