"""
Pack cache answers over HTTP sent with C{sendfile(2)}
(L{gitserve.core.sendfile}), framed as an HTTP response: a hit's length is
known, so it goes with C{Content-Length}; a flight still growing goes
chunked, each chunk's size line and closing CRLF sent on the socket around
the sendfile'd range. Over TLS the core's
L{gitserve.core.packcache.CacheReader} writes into the response instead.

A full socket pauses the HTTP channel exactly as a full buffer pauses it, so
the channel's stall timeout drops a client that stops reading.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.server import Request

from gitserve.core.operations import GitOperation
from gitserve.core.packcache import EntrySource, Source
from gitserve.core.process import GitOutcome
from gitserve.core.sendfile import SendfileReader
from gitserve.http.channel import connectionOf, isAnswerable
from gitserve.http.headers import startGitResponse
from gitserve.interfaces import IGitOutput

log = Logger()


class HTTPSendfileReader(SendfileReader):
    """
    A sendfile(2) reader whose answer is an HTTP response: its head goes out
    with the first byte, so a git that fails first still gets the error
    answer a git child's failure gets (C{answerUnstarted}:
    L{gitserve.http.smart.SmartResponse.answer}).
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        contentType: bytes,
        answerUnstarted: Callable[[GitOutcome], object],
        response: IGitOutput,
        operation: GitOperation,
        bytesIn: int,
        quiet: bool,
        clock: IReactorTime,
    ) -> None:
        super().__init__(
            source,
            response,
            request.channel.transport,  # type: ignore[attr-defined]
            operation,
            bytesIn,
            quiet,
            clock,
        )
        self.request = request
        self.contentType = contentType
        self.answerUnstarted = answerUnstarted

    def _watchClient(self) -> None:
        self.request.notifyFinish().addErrback(lambda _: self._clientLeft())

    def _begin(self) -> bool:
        """The head, once the answer has a byte: Content-Length when its size is final."""
        startGitResponse(self.request, self.contentType)
        if isinstance(self.source, EntrySource):
            self.request.setHeader(b"Content-Length", b"%d" % self.source.size)
        self.request.registerProducer(self, True)
        self.request.write(b"")
        return bool(getattr(self.request, "chunked", False))

    def _sentDirectly(self, count: int) -> None:
        # What Request.write would have counted, for the access log.
        self.request.sentLength += count

    def _answer(self, outcome: GitOutcome) -> None:
        """Finish, abort, or (nothing sent yet) answer as a git child's failure is answered."""
        if not isAnswerable(self.request):
            return
        if not self._started:
            self.answerUnstarted(outcome)
            return
        self.request.unregisterProducer()
        if (outcome.succeeded or outcome.completeRefusal) and self.complete:
            self.request.finish()
        else:
            if outcome.failure is not None:
                log.info("pack cache answer cut off: {e}", e=outcome.failure.getErrorMessage())
            # The answer began: only a broken connection says it is incomplete.
            connectionOf(self.request.channel).abortConnection()
