"""
The git child: spawn it with a clean environment, stream both ways, clean up.

One L{GitProcessProtocol} per git operation, whatever door it came through.
It is the streaming producer of the front door's L{IGitOutput} (a client that
stops reading pauses git), a streamed body is the child's stdin producer (a
child that stops reading pauses the client), and every way an operation can
end is reported exactly once, as a L{GitOutcome}, with no child left running.
What the client is told is the front door's decision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProcessTransport,
    IPushProducer,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.process import ProcessReader
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.pktline import ProtocolError, parsePktLines
from gitserve.core.policy import Service
from gitserve.core.repository import Repository
from gitserve.interfaces import (
    IGitJob,
    IGitOutput,
    IOutputPipe,
    IPipeOutput,
    IRelayableProcess,
    IStdinSource,
)
from gitserve.twistedinternals import enlargeInputPipe

# What a streamed body (a push) may hold between the client and git (see
# enlargeInputPipe): git's stdin pipe, 1 MiB (Linux's default limit for an
# unprivileged process), and the daemon's buffer in front of it, one read
# of a push body (PUSH_READ_SIZE in gitserve.http.smart). A 1 MiB buffer
# saved no more CPU and took the 537 MB push's peak RSS over 60 MB.
STDIN_PIPE_SIZE = 1024 * 1024
STDIN_HIGH_WATER = 256 * 1024

# The daemon's own variables a child may inherit; everything else, GIT_DIR and
# GIT_CONFIG_* and LD_PRELOAD included, stays out (see DESIGN.md: an env dict
# is exactly the child's environment).
INHERITED_ENVIRONMENT = ("PATH", "HOME")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# git's stderr kept for the log and the error message; the rest is dropped.
MAX_STDERR = 64 * 1024

# An answer this short is kept, to tell a complete ERR refusal from a cut-off
# answer when git fails after it began writing. It is also how much of git's
# output always comes through outReceived: only past it may an output that
# can take the pipe itself (IPipeOutput) relay the rest.
MAX_SHORT_ANSWER = 4096

# How long a child gets between SIGTERM and SIGKILL.
KILL_GRACE = 5.0

# How long a child that was still reading its request gets, after its stdin
# is closed, to fail and clean up on its own before SIGTERM.
TERM_GRACE = 2.0

_PRINTABLE = re.compile(rb"[^\x20-\x7e]")


class IChildTransport(IProcessTransport, IConsumer):
    """
    What L{GitProcessProtocol} uses of its child's transport, as a type.

    Twisted's C{Process} declares only L{IProcessTransport}, yet it also is
    the consumer of the child's stdin (C{registerProducer}, C{write}) and
    pauses and resumes reading the child's output; the protocol relies on
    all of it, so the type says so.
    """

    def pauseProducing() -> None:
        """Stop reading the child's output (its pipe fills and git blocks)."""

    def resumeProducing() -> None:
        """Read the child's output again."""


@dataclass(frozen=True)
class Caller:
    """
    Who a git child works for, as its environment tells hooks and reflogs.

    @ivar transport: the door the request came through (C{http}, C{ssh},
        C{git}): the per-operation log line names it, and the committer
        email says it as http-backend's says C{http}.
    @ivar keyFingerprint: for SSH, the fingerprint of the key that logged
        the user in, so the log tells which of a user's keys was used.
    """

    remoteAddr: str
    user: str | None = None
    userAgent: bytes | None = None
    protocol: bytes | None = None
    transport: str = "http"
    keyFingerprint: str | None = None


@dataclass
class GitBackend:
    """
    Spawns git for the smart services.

    @ivar reactor: spawns the children and times their kill grace.
    @ivar gitPath: the git binary, found once at start-up.
    @ivar environ: the daemon's environment; only L{INHERITED_ENVIRONMENT}
        of it reaches a child.
    @ivar available: false when no git binary was found: fetches then fall
        back to the native dumb protocol (see L{gitserve.http.smart.getInfoRefs}).
    """

    reactor: IReactorProcess
    gitPath: str
    environ: Mapping[str, str] = field(default_factory=dict)
    killGrace: float = KILL_GRACE
    available: bool = True
    # Under --access: the hooks directory receive-pack runs with, whose
    # update hook checks each ref (gitserve.core.accesscontrol).
    accessHooks: str | None = None

    def environment(self, caller: Caller) -> dict[str, str]:
        """
        The child's whole environment: what http-backend would give it.

        GIT_COMMITTER_NAME/EMAIL name the pusher (or C{anonymous}) at
        C{<transport>.<address>} (C{http.<address>} exactly as http-backend
        sets them; C{ssh.<address>} over SSH), so reflogs and hooks see who
        pushed and how.
        """
        env = {name: self.environ[name] for name in INHERITED_ENVIRONMENT if name in self.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        user = caller.user or "anonymous"
        env["REMOTE_ADDR"] = caller.remoteAddr
        if caller.user:
            env["REMOTE_USER"] = caller.user
        env["GIT_COMMITTER_NAME"] = user
        env["GIT_COMMITTER_EMAIL"] = f"{user}@{caller.transport}.{caller.remoteAddr or '(none)'}"
        if caller.userAgent:
            env["GIT_HTTP_USER_AGENT"] = _PRINTABLE.sub(b"", caller.userAgent)[:256].decode()
        if caller.protocol:
            # Validated by the web layer before it gets here.
            env["GIT_PROTOCOL"] = caller.protocol.decode("ascii")
        return env

    def argv(
        self,
        service: Service,
        repository: Repository,
        advertise: bool,
        statelessRpc: bool = True,
        checkRefs: bool = False,
    ) -> list[str]:
        """
        The command line. The repository is an absolute, resolved path, so it
        starts with C{/} and git cannot read it as an option.

        @param statelessRpc: HTTP's one request, one answer (C{--stateless-rpc});
            false for SSH and git://, where git talks with the client over one
            full-duplex stream, as under git-shell and git daemon.
        @param checkRefs: run receive-pack with gitserve's hooks directory,
            whose update hook checks each ref against the access rules. On
            the command line, it wins over any core.hooksPath the
            repository's config sets.
        """
        args = [self.gitPath]
        if checkRefs and self.accessHooks is not None and service is Service.RECEIVE_PACK:
            args += ["-c", f"core.hooksPath={self.accessHooks}"]
        args.append(service.command)
        if service is Service.UPLOAD_PACK:
            # --strict: serve exactly this directory, never <dir>/.git.
            args.append("--strict")
        # upload-archive has no --strict (git enters <dir>/.git first if
        # there is one, which a bare repository under the root does not
        # have), nor a stateless mode: the doors that serve it run it
        # stateful, and its config (uploadarchive.allowUnreachable) is the
        # repository's own, never set here.
        if statelessRpc:
            args.append("--stateless-rpc")
        if advertise:
            args.append("--advertise-refs")
        args.append(str(repository.gitDir))
        return args

    def spawn(
        self,
        protocol: GitProcessProtocol,
        service: Service,
        repository: Repository,
        caller: Caller,
        advertise: bool,
        extraEnvironment: Mapping[str, str] | None = None,
        statelessRpc: bool = True,
    ) -> IProcessTransport:
        """Start git for one request, driven by C{protocol}."""
        args = self.argv(
            service, repository, advertise, statelessRpc, checkRefs=bool(extraEnvironment)
        )
        env = self.environment(caller)
        env.update(extraEnvironment or {})
        # No working directory: git enters the repository named by its
        # absolute path itself (and hooks run there), and without a chdir
        # Twisted starts the child with posix_spawn instead of fork(), which
        # would copy the daemon's page tables and stall the reactor for every
        # request.
        return self.reactor.spawnProcess(
            protocol,
            self.gitPath,
            args,
            env=env,
        )


@dataclass(frozen=True)
class GitOutcome:
    """
    How a git child ended, for the front door to turn into its own answer.

    @ivar exitCode: git's exit status (L{None} when a signal ended it).
    @ivar bytesOut: how much of git's output reached the output.
    @ivar completeRefusal: all git wrote is a few whole pkt-lines ending in
        an C{ERR} packet: a complete refusal (C{not our ref} for a want that
        a push made unreachable since the advertisement), to be passed on
        whole even though git failed, not a cut-off answer.
    @ivar failure: the request failed on the front door's side (its body
        broke or passed its cap); git's complaint about its cut-off input is
        then not the answer.
    @ivar message: what to tell the git user when git failed before writing.
    """

    exitCode: int | None
    bytesOut: int
    completeRefusal: bool
    failure: Failure | None
    message: str

    @property
    def succeeded(self) -> bool:
        """Whether git finished its work and the request did not fail."""
        return self.exitCode == 0 and self.failure is None

    @property
    def started(self) -> bool:
        """Whether any of git's output went out."""
        return self.bytesOut > 0


@implementer(IPushProducer, IGitJob)
class GitProcessProtocol(ProcessProtocol):
    """
    Connects one git child to one L{IGitOutput}.

    git's stdout goes to the output as it comes, paced by it (this protocol
    is the output's streaming producer); its stdin comes from a whole buffer
    or from a streamed body paced by git. Every way a child can end is
    reported once, through L{done}, as a L{GitOutcome}; what the client is
    told then is the front door's decision, never this protocol's.

    @ivar done: fires with the L{GitOutcome} once the child has ended.
    """

    log = Logger()

    def __init__(
        self,
        output: IGitOutput,
        clock: IReactorTime,
        description: str,
        killGrace: float = KILL_GRACE,
        logFields: Mapping[str, object] | None = None,
        logSuffix: str = "",
    ) -> None:
        self.output = output
        # Fields the log line carries after its fixed ones (transport=...),
        # so that parsers of the older line keep working.
        self.logSuffix = logSuffix
        # The operation's service, repository, user and protocol version as
        # separate event fields, for JSON log observers.
        self.logFields = dict(logFields or {})
        self.clock = clock
        self.description = description
        self.killGrace = killGrace
        self.outputGone = False
        self.childEnded = False
        self.bytesIn = 0
        self.bytesOut = 0
        # Of bytesOut, what the output moved from the pipe itself.
        self.bytesRelayed = 0
        # Of bytesIn, what the kernel moved from the client's socket.
        self.bytesSpliced = 0
        self.stderr = b""
        self.began = clock.seconds()
        self.done: Deferred[GitOutcome] = Deferred()
        self.failure: Failure | None = None
        self._stdin: IStdinSource | None = None
        self._killCall: IDelayedCall | None = None
        self._stdinOpen = True
        self._shortAnswer = bytearray()
        self._paused = False
        # The output's relay while it reads git's stdout pipe itself; the
        # pipe is offered once, past MAX_SHORT_ANSWER.
        self._relay: IPushProducer | None = None
        self._pipeOffered = False

    @property
    def _child(self) -> IChildTransport:
        """
        The child's transport, as what it is (see L{IChildTransport}).

        Only a cast: the transport is set when the child is spawned, before
        anything here runs, so L{None} is not a case to handle.
        """
        return cast(IChildTransport, self.transport)

    # Feeding stdin ---------------------------------------------------------

    def feedStdin(self, data: bytes) -> None:
        """Give git a body that was buffered whole (upload-pack negotiation)."""
        self.bytesIn += len(data)
        self._child.write(data)
        self.closeStdin()

    def closeStdin(self) -> None:
        """Tell git its input is complete (or will never be)."""
        self._stdinOpen = False
        self._child.closeStdin()

    def streamStdin(self, source: IStdinSource) -> None:
        """Give git a body while it arrives (a push), paced by git's reading."""

        def finished(received: int) -> None:
            self._stdin = None
            self.bytesIn = received
            self.bytesSpliced = source.spliced
            if not self.childEnded:
                self.closeStdin()

        def failed(failure: Failure) -> None:
            self._stdin = None
            self.bytesIn = source.received
            self.bytesSpliced = source.spliced
            self.log.info(
                "{description}: request body failed: {reason}",
                description=self.description,
                reason=failure.getErrorMessage(),
            )
            self.failure = failure
            self.terminate()

        self._stdin = source
        enlargeInputPipe(self.transport, STDIN_PIPE_SIZE, STDIN_HIGH_WATER)
        source.streamTo(self._child).addCallbacks(finished, failed)

    # The child's side ------------------------------------------------------

    def connectionMade(self) -> None:
        # This protocol, not the process transport, is the output's
        # producer: a process transport cannot stopProducing(), which a
        # front door calls when its client goes away.
        self.output.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """The client is not reading: stop reading git's output."""
        self._paused = True
        if self._relay is not None:
            self._relay.pauseProducing()
        else:
            self._child.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._relay is not None:
            self._relay.resumeProducing()
        else:
            self._child.resumeProducing()

    def stopProducing(self) -> None:
        """The output is gone (the client left): git's output has nowhere to go."""
        if self.outputGone:
            return
        self.outputGone = True
        self._drain()
        if not self.childEnded:
            self.log.info(
                "{description}: client went away; ending git", description=self.description
            )
            self.terminate()

    def outReceived(self, data: bytes) -> None:
        if self.outputGone or self.failure is not None:
            # Nobody to tell, or the request failed on the front door's side
            # (a body over its cap): git's complaint about its cut-off input
            # must not become the answer.
            return
        if self.bytesOut < MAX_SHORT_ANSWER:
            self._shortAnswer += data[: MAX_SHORT_ANSWER + 1 - len(self._shortAnswer)]
        self.bytesOut += len(data)
        self.output.write(data)
        if self.bytesOut > MAX_SHORT_ANSWER and not self._pipeOffered and not self.outputGone:
            self._offerPipe()

    # Relaying: the output reads git's pipe itself ----------------------------

    def _offerPipe(self) -> None:
        """
        Offer git's stdout pipe to an output that can move its bytes itself.
        Only now: what decides an answer (its first bytes, a short refusal)
        has come through L{outReceived} already.
        """
        self._pipeOffered = True
        if not (IRelayableProcess.providedBy(self._child) and IPipeOutput.providedBy(self.output)):
            return
        reader = cast(IRelayableProcess, self._child).outputReader()
        if reader is None:
            return
        relay = cast(IPipeOutput, self.output).relayPipe(_ChildStdout(self, reader))
        if relay is None:
            return
        self._relay = relay
        # Pausing the child stopped its stderr too; from now on a pause only
        # stops the relay, so stderr is read again here, and stdout is
        # left to the relay.
        self._child.resumeProducing()
        reader.stopReading()
        if not self._paused:
            relay.resumeProducing()

    def _relayed(self, length: int) -> None:
        """The relay moved C{length} bytes of git's output to the client."""
        self.bytesOut += length
        self.bytesRelayed += length

    def _relayEnded(self, reader: ProcessReader) -> None:
        """The relay reached the pipe's end: the transport reads it, and sees that end."""
        self._relay = None
        reader.startReading()

    def _drain(self) -> None:
        """
        Nothing takes git's output any more (or it is not the answer): stop
        the relay, if any, and let the transport read the pipe, so that git
        never blocks on it and its end is seen; L{outReceived} drops it.
        """
        if self._relay is not None:
            relay, self._relay = self._relay, None
            relay.stopProducing()
        self._child.resumeProducing()

    def _answeredWithError(self) -> bool:
        """Whether all git wrote is a few whole pkt-lines ending in C{ERR}."""
        if self.bytesOut > MAX_SHORT_ANSWER:
            return False
        try:
            packets = parsePktLines(bytes(self._shortAnswer))
        except ProtocolError:
            return False
        return bool(packets) and packets[-1].startswith(b"ERR ")

    def errReceived(self, data: bytes) -> None:
        if len(self.stderr) < MAX_STDERR:
            self.stderr += data[: MAX_STDERR - len(self.stderr)]

    def processEnded(self, reason: Failure) -> None:
        self.childEnded = True
        if self._stdin is not None:
            # git stopped reading before the body ended (it failed, or was
            # ended): what is left of the body has nowhere to go.
            stdin, self._stdin = self._stdin, None
            # A full-duplex door's stream has no end before git exits.
            self.bytesIn = stdin.received
            stdin.stopProducing()
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        exitCode = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self._logOutcome(exitCode, reason)
        if not self.outputGone:
            self.output.unregisterProducer()
        self.done.callback(
            GitOutcome(
                exitCode=exitCode,
                bytesOut=self.bytesOut,
                completeRefusal=self._answeredWithError(),
                failure=self.failure,
                message=self.clientMessage(),
            )
        )

    def clientMessage(self) -> str:
        """
        What the git user is told when git failed before answering: git's
        own first complaint, unless it is about the server's setup.
        """
        text = self.stderr.decode("utf-8", "replace")
        if "dubious ownership" in text:
            return "the server's git refuses this repository (ownership); see the server log"
        for line in text.splitlines():
            if line.strip():
                return line.strip()[:500]
        return "git failed on the server"

    def _logOutcome(self, exitCode: int | None, reason: Failure) -> None:
        duration = self.clock.seconds() - self.began
        stderr = self.stderr.decode("utf-8", "replace").strip()
        if "dubious ownership" in stderr:
            self.log.error(
                "{description}: git refuses the repository because another user owns it. "
                "Add it to safe.directory in the git config of the user gitserve runs as "
                "(git config --global --add safe.directory PATH, or '*'): {stderr}",
                description=self.description,
                stderr=stderr,
            )
        elif exitCode != 0 or (stderr and self.bytesOut > 0):
            self.log.warn(
                "{description}: git ended with {reason}: {stderr}",
                description=self.description,
                reason=reason.getErrorMessage(),
                stderr=stderr,
            )
        self.log.info(
            "git {description} exit={exitCode} bytes_in={bytesIn} bytes_out={bytesOut} "
            "duration={duration:.3f}s{logSuffix}{relayedField}{splicedField}",
            **self.logFields,
            logSuffix=self.logSuffix,
            # How much of bytes_out the output moved from git's pipe itself
            # (splice(2) on a plain HTTP connection); absent when none.
            relayedField=f" relayed={self.bytesRelayed}" if self.bytesRelayed else "",
            relayed=self.bytesRelayed,
            # How much of bytes_in went from the socket to git's stdin the
            # same way (a chunked push body); absent when none.
            splicedField=f" spliced_in={self.bytesSpliced}" if self.bytesSpliced else "",
            splicedIn=self.bytesSpliced,
            description=self.description,
            exitCode=exitCode,
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            duration=duration,
        )

    # Ending the child --------------------------------------------------------

    def terminate(self) -> None:
        """
        End the child. One that was still reading its request first gets
        EOF and L{TERM_GRACE} to fail on its own: receive-pack's helpers
        (unpack-objects, index-pack) read the same pipe, and a SIGTERM while
        they still write into the quarantine races receive-pack's cleanup
        of it and leaves the directory behind. Then SIGTERM, and SIGKILL
        after L{killGrace}.
        """
        if self.childEnded or self._killCall is not None:
            return
        if self._relay is None or self.failure is not None:
            # Nothing reads git's output any more: let it drain instead of
            # blocking on a paused pipe. (A relay still relaying a shutdown's
            # cut-off answer carries it to its end, which aborts it; if its
            # client stalls, the stall timeout ends it, which drains then.)
            self._drain()
        if self._stdinOpen:
            self.closeStdin()
            self._killCall = self.clock.callLater(TERM_GRACE, self._signal, "TERM")
        else:
            self._signal("TERM")

    def _signal(self, name: str) -> None:
        try:
            self._child.signalProcess(name)
        except ProcessExitedAlready:
            return
        if name == "TERM":
            self._killCall = self.clock.callLater(self.killGrace, self._signal, "KILL")


@implementer(IOutputPipe)
class _ChildStdout:
    """A child's stdout pipe, as handed to the output that relays it."""

    def __init__(self, protocol: GitProcessProtocol, reader: ProcessReader) -> None:
        self._protocol = protocol
        self._reader = reader

    def fileno(self) -> int:
        return int(self._reader.fileno())

    def moved(self, length: int) -> None:
        self._protocol._relayed(length)

    def ended(self) -> None:
        self._protocol._relayEnded(self._reader)
