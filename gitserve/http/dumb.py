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
    restarting. On a plain TCP or UNIX connection the kernel sends them
    (C{sendfile(2)}); over TLS, behind a PROXY-protocol listener, or with
    C{--no-splice}, Python reads and writes them.

Header values mirror C{http-backend.c}: C{hdr_nocache()} for refs and text
files, C{hdr_cache_forever()} for objects, packs and indexes. Where
http-backend sends an RFC 2822 date (C{+0000}), we send the IMF-fixdate HTTP
requires (C{GMT}); the instant is the same.

Nothing here imports the global reactor: the clock is passed in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web import http
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from gitserve.core.direct import DirectSender, FileRange, SourceEnded
from gitserve.core.dumbfiles import (
    ServedFile,
    generateHead,
    generateInfoPacks,
    generateInfoRefs,
    openServedFile,
)
from gitserve.core.errors import NotFound
from gitserve.core.repository import Repository
from gitserve.core.sendfile import SENDFILE_PER_TURN
from gitserve.http.channel import canSendfile, connectionOf, isAnswerable
from gitserve.http.context import HTTPContext
from gitserve.http.headers import setCacheForever, setNoCache

log = Logger()

TEXT_PLAIN = b"text/plain"
TEXT_PLAIN_UTF8 = b"text/plain; charset=utf-8"

# How much of a file one read takes: the transport's own write buffer size,
# so memory per download stays near one chunk. A reactor turn sends at most
# CHUNKS_PER_TURN of them, so one fast download cannot starve other clients.
CHUNK_SIZE = 2**16
CHUNKS_PER_TURN = 4


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

    How a turn sends is L{_sendTurn}'s business: L{FileSendfileProducer}
    replaces it, and keeps everything else.
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
        # The next byte of the file to send, and how many are still to go.
        self._offset = offset
        self._remaining = length
        self._clock = clock
        self._paused = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Register with the request and schedule the first chunks."""
        assert self._request is not None
        self._request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self._request.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if self._request is not None and not self._paused and self._call is None:
            self._call = self._clock.callLater(0, self._produce)

    def _produce(self) -> None:
        """Send this turn's share, then end the response or wait for the next turn."""
        self._call = None
        request = self._request
        if request is None or self._paused:
            return
        try:
            done = self._sendTurn(request)
        except SourceEnded:
            log.error("File shrank while being served; closing the connection")
            self._end(request)
            # Content-Length promised more: closing now makes the client
            # report a truncated transfer instead of accepting it.
            request.loseConnection()
            return
        except OSError as e:
            # The connection broke under sendfile(2) before Twisted saw it (a
            # reset, a closed socket), or the disk failed a read.
            log.info("sending a file failed: {error}", error=e)
            self._end(request)
            connectionOf(request.channel).abortConnection()
            return
        if done:
            self._end(request)
            request.finish()
        else:
            self._schedule()

    def _sendTurn(self, request: Request) -> bool:
        """
        Write up to L{CHUNKS_PER_TURN} chunks, fewer if the transport pauses
        this producer meanwhile.

        @return: whether the whole range went out.
        @raise SourceEnded: the file ended inside the range.
        """
        fd = self._served.fileObject.fileno()
        for _ in range(CHUNKS_PER_TURN):
            if self._request is None or self._paused:
                return False
            data = os.pread(fd, min(CHUNK_SIZE, self._remaining), self._offset)
            if not data:
                raise SourceEnded()
            self._offset += len(data)
            self._remaining -= len(data)
            # write() may call pauseProducing() before it returns.
            request.write(data)
            if self._remaining == 0:
                return True
        return False

    def _end(self, request: Request) -> None:
        """Nothing more to send: let go of the request and the file."""
        self.stopProducing()
        request.unregisterProducer()

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


class FileSendfileProducer(FileRangeProducer):
    """
    A L{FileRangeProducer} whose turns send with C{sendfile(2)}: the kernel
    copies the file from the page cache to the socket, and no byte of it
    passes through Python. Only for a connection L{canSendfile} accepts.

    The head goes out through Twisted first; L{DirectSender} sends the range
    only once Twisted's buffer is empty, and when the socket is full it
    pauses the HTTP channel as a full buffer does (so this producer waits to
    be resumed, and the channel's stall timeout drops a client that stopped
    reading). A turn sends at most L{SENDFILE_PER_TURN}, so one fast
    download on loopback cannot hold the reactor from other clients.
    """

    _sender: DirectSender

    def start(self) -> None:
        """Register, and send the head through Twisted: the range follows it on the socket."""
        assert self._request is not None
        self._sender = DirectSender(connectionOf(self._request.channel), self._sentDirectly)
        super().start()
        self._request.write(b"")

    def _sendTurn(self, request: Request) -> bool:
        """
        Queue the next L{SENDFILE_PER_TURN} of the range once the last share
        is out, and send what the socket takes of it.
        """
        if not self._sender.pending:
            length = min(self._remaining, SENDFILE_PER_TURN)
            fd = self._served.fileObject.fileno()
            # Content-Length is set: the body is never chunked.
            self._sender.queue(FileRange(fd, self._offset, length), chunked=False)
            self._offset += length
            self._remaining -= length
        # send() is false when the socket is full: this producer was paused
        # until it drains, and the rest of the share stays queued.
        return self._sender.send() and self._remaining == 0

    def _sentDirectly(self, count: int) -> None:
        # What Request.write would have counted, for the access log.
        assert self._request is not None
        self._request.sentLength += count


def serveFile(
    request: Request,
    served: ServedFile,
    fileClass: FileClass,
    clock: IReactorTime,
    sendfile: bool = False,
) -> object:
    """
    Answer a GET (or HEAD) with an opened file: headers for its class, a 304
    when the client's validators match, a 206 for a single satisfiable range,
    a 416 for an unsatisfiable one, else the whole file.

    The request is finished here or by the producer; the caller returns the
    result from C{render}.

    @param sendfile: whether the body may go out with C{sendfile(2)}
        (L{FileSendfileProducer}); only a body larger than one chunk does,
        since a smaller one leaves with its head in a single write, while
        sendfile would wait for the head to go first.
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
    producer = FileSendfileProducer if sendfile and length > CHUNK_SIZE else FileRangeProducer
    producer(request, served, offset, length, clock).start()
    return NOT_DONE_YET


# The route handlers (see L{gitserve.http.routes.ROUTES}). Each checks http.getanyfile
# first, as every dumb handler in http-backend does, so a switched-off
# repository answers 403 even for files it does not have.


def getHead(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> bytes:
    """C{GET HEAD}: generated, C{text/plain}, and (as in http-backend) no cache headers."""
    context.core.policy.checkGetAnyFile(repository)
    return sendGenerated(request, TEXT_PLAIN, generateHead(repository.gitDir))


def getDumbInfoRefs(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{GET info/refs} without C{service=}: the ref list, generated now, never
    cached. Reading thousands of refs and their objects takes a while, so it
    runs through C{context.core.runBlocking} (a thread, in the daemon), and the
    reactor keeps serving other clients meanwhile.
    """
    context.core.policy.checkGetAnyFile(repository)
    hidden = context.core.policy.hiddenRefs(repository)

    def send(body: bytes) -> None:
        if not isAnswerable(request):
            # The client left while the refs were being read.
            return
        setNoCache(request)
        request.setHeader(b"Content-Type", TEXT_PLAIN)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.write(body)
        request.finish()

    work = context.core.runBlocking(lambda: generateInfoRefs(repository.gitDir, hidden))
    return work.addCallback(send)


def getInfoPacks(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> bytes:
    """C{GET objects/info/packs}: the packs present now, never cached."""
    context.core.policy.checkGetAnyFile(repository)
    setNoCache(request)
    return sendGenerated(
        request, TEXT_PLAIN_UTF8, generateInfoPacks(repository.gitDir, context.core.root)
    )


def fileHandler(
    fileClass: FileClass,
) -> Callable[[HTTPContext, Request, Repository, Sequence[str]], object]:
    """
    The handler for one class of file: the matched route suffix (hex digits
    and fixed names only) is the file's path inside the git directory. On a
    plain socket its body goes out with C{sendfile(2)}, unless the daemon
    runs with C{--no-splice} (L{HTTPContext.splicing}).
    """

    def getFile(
        context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
    ) -> object:
        context.core.policy.checkGetAnyFile(repository)
        served = openServedFile(context.core.root, repository.gitDir.joinpath(*suffix))
        if served is None:
            raise NotFound()
        sendfile = context.splicing and canSendfile(request)
        return serveFile(request, served, fileClass, context.core.clock, sendfile)

    return getFile


getTextFile = fileHandler(TEXT_FILE)
getLooseObject = fileHandler(LOOSE_OBJECT)
getPackFile = fileHandler(PACK_FILE)
getIdxFile = fileHandler(IDX_FILE)
