"""
The seams between gitserve's parts, as zope interfaces: what the core needs
from a front door and what a front door may ask of the core. Tests fake these
(and check their fakes with C{verifyObject}).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IReactorFDSet, IReactorTime
from twisted.internet.process import ProcessReader
from zope.interface import Attribute, Interface


class IGitJob(Interface):
    """A running git child, as the job limiter and a shutdown see it."""

    done: Deferred[object] = Attribute("Fires once the child has ended and its output is settled.")

    def terminate() -> None:
        """End the child (politely first, then by force after a grace period)."""


class IGitOutput(IConsumer):
    """
    Where a git child's standard output goes: an HTTP response, an SSH
    channel, a git:// connection.

    The child registers itself as this consumer's streaming producer, so a
    front door that cannot send pauses git. A front door whose peer is gone
    calls the producer's C{stopProducing}, which ends the child. The output
    never decides what a failure looks like: the child reports its outcome
    (L{gitserve.core.process.GitOutcome}) and the front door answers.
    """


class IOutputPipe(Interface):
    """
    A git child's standard output as the pipe it is, handed to an
    L{IPipeOutput} that moves its bytes to the client itself.
    """

    def fileno() -> int:
        """The pipe's read end (non-blocking)."""

    def moved(length: int) -> None:
        """C{length} bytes of git's output went from the pipe to the client."""

    def ended() -> None:
        """
        The pipe holds nothing more and git closed it: reading goes back to
        the child's transport, which sees the end as it always does.
        """


class IRelayReactor(IReactorFDSet, IReactorTime):
    """
    What moves a git child's pipe without Python in the way runs on: a
    reactor that watches the pipe and times batches.
    """


class IRelayableProcess(Interface):
    """
    A child process whose standard output an L{IPipeOutput} may read itself
    (the spawner's, L{gitserve.twistedinternals.PipeReadingSpawner}).
    """

    def outputReader() -> ProcessReader | None:
        """
        The reader of the child's stdout pipe, L{None} once it is closed. A
        relay stops it (C{stopReading}) while it reads the pipe itself, and
        starts it again (C{startReading}) to give the pipe back, so that the
        process sees the pipe's end as it always does.
        """


class IPipeOutput(IGitOutput):
    """
    An output that can move git's output from its pipe to the client itself,
    without a byte passing through Python (an HTTP response on a plain
    socket: C{splice(2)}).
    """

    def relayPipe(pipe: IOutputPipe) -> IPushProducer | None:
        """
        Take over git's output from here on, or decline (L{None}: git's
        output keeps coming through C{write}).

        @return: the relay, created paused; the child resumes, pauses and
            stops it where it would resume, pause and stop reading the pipe.
        """


class IStdinSource(Interface):
    """
    A request body that streams into a git child's stdin (a push), paced by
    git: it registers itself as the stdin's streaming producer.
    """

    received: int = Attribute("Bytes of body delivered so far.")
    spliced: int = Attribute(
        "Of those, the bytes moved from the client's socket into git's stdin"
        " by the kernel (splice(2)), without passing through the daemon."
    )

    def streamTo(consumer: IConsumer) -> Deferred[int]:
        """
        Write the body into C{consumer} as it arrives.

        @return: fires with the bytes delivered once the whole body was
            written, or fails with the reason it could not be (a
            L{gitserve.core.errors.Refusal}, or the client leaving).
        """

    def stopProducing() -> None:
        """The consumer is gone (git stopped reading): drop the rest."""
