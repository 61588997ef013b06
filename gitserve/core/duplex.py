"""
What the full-duplex doors (SSH, git://) share between the client's stream
and a stateful git child: the client's bytes as the child's stdin, paced by
git; git's output to the stream, paced by the client; the operation started
through the core and its end handed back to the door; and the path a client
names turned into segments for resolution.

Over HTTP each request carries a finite body; over SSH and git:// the client
and git talk over one stream for the whole operation, so the stream itself is
git's stdin until the client sends EOF or git exits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gitserve.core.conversation import DuplexJob, startConversation
from gitserve.core.errors import InvalidRequest, Refusal
from gitserve.core.operations import GitCore, GitOperation
from gitserve.core.process import GitOutcome
from gitserve.interfaces import IGitOutput, IStdinSource

log = Logger()

# What a door keeps of the client's stream before git is there to read it
# (the operation waits for a job slot): git clients send nothing before the
# server's first answer, so more than this is not a git client; the
# connection is paused rather than buffered without bound.
MAX_EARLY_INPUT = 64 * 1024

# The longest repository path a client may name: git's own PATH_MAX.
MAX_PATH = 4096


class ClientGone(Exception):
    """The client closed its side or its connection before sending EOF."""


@implementer(IStdinSource, IPushProducer)
class DuplexStdin:
    """
    The client's stream as a git child's stdin.

    The door calls L{feed} with what arrives, L{finish} on EOF and L{fail}
    when the client leaves. Once git is running (L{streamTo}) the bytes go
    straight to its stdin, and when git does not keep up (its pipe is full)
    the door's connection is paused: a fast pusher costs a pipe buffer, not
    memory.

    @ivar received: bytes delivered to git so far.
    """

    # Every byte passes through feed(): only HTTP push bodies are spliced
    # (gitserve.http.inbound).
    spliced = 0

    def __init__(self, pauseClient: Callable[[], None], resumeClient: Callable[[], None]) -> None:
        """
        @param pauseClient: stops reading the client's connection.
        @param resumeClient: reads it again.
        """
        self._pauseClient = pauseClient
        self._resumeClient = resumeClient
        self.received = 0
        self._early = bytearray()
        self._consumer: IConsumer | None = None
        self._done: Deferred[int] | None = None
        self._ended: Failure | bool = False
        self._paused = False
        self._stopped = False

    def _pause(self) -> None:
        if not self._paused:
            self._paused = True
            self._pauseClient()

    def _resume(self) -> None:
        if self._paused:
            self._paused = False
            self._resumeClient()

    # The door's side ---------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Bytes from the client."""
        if self._stopped or self._ended:
            return
        if self._consumer is None:
            self._early += data
            if len(self._early) > MAX_EARLY_INPUT:
                self._pause()
            return
        self.received += len(data)
        self._consumer.write(data)

    def finish(self) -> None:
        """The client sent EOF: git's input is complete."""
        if self._ended:
            return
        self._ended = True
        if self._consumer is not None:
            self._settle()

    def fail(self, reason: Failure | None = None) -> None:
        """The client left: git's input will never be complete."""
        if self._ended:
            return
        self._ended = reason if reason is not None else Failure(ClientGone())
        if self._consumer is not None:
            self._settle()

    # The core's side ---------------------------------------------------------

    def streamTo(self, consumer: IConsumer) -> Deferred[int]:
        """
        Write the stream into C{consumer} (git's stdin), first what came
        before git started, then what arrives.

        @return: fires with the bytes delivered at EOF, or fails with
            L{ClientGone} when the client leaves without one.
        """
        self._done = Deferred()
        done = self._done
        self._consumer = consumer
        consumer.registerProducer(self, True)
        early, self._early = bytes(self._early), bytearray()
        if early:
            self.received += len(early)
            consumer.write(early)
        if not self._stopped:
            self._resume()
        if self._ended:
            self._settle()
        return done

    def _settle(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.unregisterProducer()
        done, self._done = self._done, None
        if done is None:
            return
        if isinstance(self._ended, Failure):
            done.errback(self._ended)
        else:
            done.callback(self.received)

    def pauseProducing(self) -> None:
        """git's stdin is full: stop reading the client."""
        self._pause()

    def resumeProducing(self) -> None:
        """git read its stdin: read the client again."""
        self._resume()

    def stopProducing(self) -> None:
        """
        git stopped reading (it exited): what the client still sends is
        dropped, and the connection is read again so that it is not left
        paused while the door answers.
        """
        self._stopped = True
        self._consumer = None
        self._done = None
        self._early = bytearray()
        self._resume()


class IDuplexDoor(Interface):
    """
    What differs between the full-duplex doors around one L{DuplexOperation}:
    how bytes reach the client, how git's output is paced by the client, and
    what a refusal and git's end look like (an C{ERR} packet and a close over
    git://; a stderr line, an exit status and EOF over SSH).
    """

    plainTransport: object = Attribute(
        "The stream's transport when it is a plain socket whose bytes may go out with "
        "sendfile(2) (git://), else None (SSH's channel is encrypted)."
    )

    def sendToClient(data: bytes) -> None:
        """Write git's output to the client's stream (only while it is there)."""

    def attachProducer(producer: IPushProducer) -> None:
        """
        git's output is starting: have the door's stream pause and resume
        C{producer} as the client reads.
        """

    def detachProducer() -> None:
        """git's output has ended: the stream no longer paces it."""

    def refuse(message: str) -> None:
        """Tell the client, in the door's words, that git could not run."""

    def operationEnded(outcome: GitOutcome) -> None:
        """git ended, the client still there: answer and close the door's way."""


@implementer(IGitOutput)
class DuplexOperation:
    """
    One git operation over a full-duplex stream, the same for SSH and
    git://: the client's stream is git's stdin (L{stdin}), git's output
    goes to the stream (this is the child's L{IGitOutput}), and every end
    (started or not, the client there or gone) is decided once here and
    handed to the door (L{IDuplexDoor}) only when the client can still hear.

    @ivar stdin: the client's stream, fed by the door from the moment it
        may carry git's input (before git runs, while it waits for a slot).
    @ivar running: git runs now (a graceful shutdown waits for it).
    """

    def __init__(
        self,
        door: IDuplexDoor,
        pauseClient: Callable[[], None],
        resumeClient: Callable[[], None],
    ) -> None:
        """
        @param door: the door's side of the stream.
        @param pauseClient: stops reading the client (git's stdin is full).
        @param resumeClient: reads it again.
        """
        self.door = door
        self.stdin = DuplexStdin(pauseClient, resumeClient)
        self.producer: IPushProducer | None = None
        self.started: Deferred[DuplexJob] | None = None
        self.running = False
        self.gone = False

    def start(self, core: GitCore, operation: GitOperation) -> None:
        """
        Run C{operation} through the core's job slots, writing here: one git
        child, or with the pack cache on, a protocol v2 fetch's requests one
        by one (L{gitserve.core.conversation}).
        """
        self.started = startConversation(core, operation, self, self.door.plainTransport)
        self.started.addCallbacks(self._running, self._notStarted)

    def _running(self, protocol: DuplexJob) -> None:
        self.started = None
        self.running = True
        protocol.streamStdin(self.stdin)
        protocol.done.addCallback(self._ended)

    def _notStarted(self, failure: Failure) -> None:
        self.started = None
        if failure.check(CancelledError) or self.gone:
            # The client left while queued: nobody to tell.
            return
        if failure.check(Refusal):
            # Busy: the job limiter's message says to try again later.
            self.door.refuse(failure.value.message)
            return
        log.failure("starting git failed", failure)
        self.door.refuse("git could not be started on the server")

    def _ended(self, outcome: GitOutcome) -> None:
        self.running = False
        if not self.gone:
            self.door.operationEnded(outcome)

    def clientGone(self) -> None:
        """
        The client's stream is gone: git's input ends, a place in the job
        queue is given up, and a running git is ended (its output has
        nowhere to go).
        """
        self.gone = True
        self.stdin.fail()
        if self.started is not None:
            started, self.started = self.started, None
            started.cancel()
        if self.producer is not None:
            producer, self.producer = self.producer, None
            producer.stopProducing()

    # Flow control for doors whose stream reports it (an SSH channel's window).

    def pauseOutput(self) -> None:
        """The client cannot take more now: pause git."""
        if self.producer is not None:
            self.producer.pauseProducing()

    def resumeOutput(self) -> None:
        """The client can take more: resume git."""
        if self.producer is not None:
            self.producer.resumeProducing()

    # IGitOutput ----------------------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        git's child registers itself, always as a streaming (push) producer:
        it is paused when the client cannot take more.
        """
        if self.gone:
            producer.stopProducing()
            return
        self.producer = cast(IPushProducer, producer)
        self.door.attachProducer(self.producer)

    def unregisterProducer(self) -> None:
        self.producer = None
        if not self.gone:
            self.door.detachProducer()

    def write(self, data: bytes) -> None:
        if not self.gone:
            self.door.sendToClient(data)


def segmentsOfPath(path: bytes) -> list[bytes]:
    """
    The segments for L{gitserve.core.repository.resolveRepository} of a
    repository path as an SSH command or a git:// request names it: C{/x},
    C{x} (scp-like C{host:x}, relative to the served root), C{~/x} (what git
    sends for C{host:~/x} and C{ssh://host/~/x}) and C{/team/x/} all name the
    same thing under C{--root}, never anything outside it.

    Trailing slashes are dropped, as git's C{enter_repo()} drops them; every
    other check (C{..}, empty segments, control characters, a leading C{-})
    is resolution's.

    @raise InvalidRequest: a C{~user} form (home directories are not served:
        every repository lives under C{--root}), or a path too long for git.
    """
    if len(path) > MAX_PATH:
        raise InvalidRequest("repository path too long")
    if path.startswith(b"~"):
        user, _, rest = path[1:].partition(b"/")
        if user:
            # git sends ~alice/x for ssh://host/~alice/x; git daemon refuses
            # it unless --user-path is on, git-shell maps it to alice's home.
            # There are no per-user directories here.
            raise InvalidRequest(
                "~user paths are not served here (there are no per-user homes); "
                "name the repository from the root, as /app.git or ~/app.git"
            )
        # ~/x: under git-shell, the git user's home; here every repository
        # lives under the root, which plays that part.
        path = rest
    stripped = path.rstrip(b"/")
    if stripped.startswith(b"/"):
        stripped = stripped[1:]
    return stripped.split(b"/") if stripped else []
