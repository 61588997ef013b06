"""
The git child: spawn it with a clean environment, stream both ways, clean up.

One L{GitProcessProtocol} per smart request. Its process transport is the
request's streaming producer (a client that stops reading pauses git), a
request body is the child's stdin producer (a child that stops reading pauses
the client), and every way a request can end leads to exactly one outcome:
a finished response, an aborted connection, or an error response, and never a
child left running.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import AnyStr

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessProtocol,
    IProcessTransport,
    IPushProducer,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.process import Process, ProcessReader
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from gitserve.body import RequestBody
from gitserve.errors import HTTPError, renderError
from gitserve.headers import startGitResponse
from gitserve.pktline import ProtocolError, errorLine, parsePktLines
from gitserve.policy import Service
from gitserve.repository import Repository

# The daemon's own variables a child may inherit; everything else, GIT_DIR and
# GIT_CONFIG_* and LD_PRELOAD included, stays out (see DESIGN.md: an env dict
# is exactly the child's environment).
INHERITED_ENVIRONMENT = ("PATH", "HOME")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"

# git's stderr kept for the log and the error message; the rest is dropped.
MAX_STDERR = 64 * 1024

# An answer this short is kept, to tell a complete ERR refusal from a cut-off
# answer when git fails after it began writing.
MAX_SHORT_ANSWER = 4096

# How long a child gets between SIGTERM and SIGKILL.
KILL_GRACE = 5.0

# How long a child that was still reading its request gets, after its stdin
# is closed, to fail and clean up on its own before SIGTERM.
TERM_GRACE = 2.0

_PRINTABLE = re.compile(rb"[^\x20-\x7e]")

# How much of git's output is read at once: a pipe's whole default capacity.
# Twisted's process reader reads 8 KiB, so a 64 MiB pack took 8192 reads, each
# a reactor turn and a wakeup of git blocked on a full pipe.
PIPE_READ_SIZE = 64 * 1024


class _PipeReader(ProcessReader):
    """A child's output pipe, read L{PIPE_READ_SIZE} bytes at a time."""

    def doRead(self) -> object:
        # Twisted's fdesc.readFromFD, with the read size as the only change.
        try:
            output = os.read(self.fd, PIPE_READ_SIZE)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not output:
            return CONNECTION_DONE
        self.dataReceived(output)
        return None


class _GitProcess(Process):
    processReaderFactory = _PipeReader


@implementer(IReactorProcess)
class PipeReadingSpawner:
    """
    Spawns children on a POSIX reactor as its C{spawnProcess} does, with
    their output read in large pieces (see L{PIPE_READ_SIZE}).
    """

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str] = (),
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        if usePTY:
            raise ValueError("git is never given a terminal")
        return _GitProcess(
            self.reactor, executable, args, env, path, processProtocol, uid, gid, childFDs
        )


@dataclass(frozen=True)
class Caller:
    """Who a git child works for, as its environment tells hooks and reflogs."""

    remoteAddr: str
    user: str | None = None
    userAgent: bytes | None = None
    protocol: bytes | None = None


@dataclass
class GitBackend:
    """
    Spawns git for the smart services.

    @ivar reactor: spawns the children and times their kill grace.
    @ivar gitPath: the git binary, found once at start-up.
    @ivar environ: the daemon's environment; only L{INHERITED_ENVIRONMENT}
        of it reaches a child.
    @ivar available: false when no git binary was found: fetches then fall
        back to the native dumb protocol (see L{gitserve.web.getInfoRefs}).
    """

    reactor: IReactorProcess
    gitPath: str
    environ: Mapping[str, str] = field(default_factory=dict)
    killGrace: float = KILL_GRACE
    available: bool = True

    def environment(self, caller: Caller) -> dict[str, str]:
        """
        The child's whole environment: what http-backend would give it.

        GIT_COMMITTER_NAME/EMAIL name the pusher (or C{anonymous}) at
        C{http.<address>}, as http-backend sets them, so reflogs and hooks
        see who pushed.
        """
        env = {name: self.environ[name] for name in INHERITED_ENVIRONMENT if name in self.environ}
        env.setdefault("PATH", DEFAULT_PATH)
        user = caller.user or "anonymous"
        env["REMOTE_ADDR"] = caller.remoteAddr
        if caller.user:
            env["REMOTE_USER"] = caller.user
        env["GIT_COMMITTER_NAME"] = user
        env["GIT_COMMITTER_EMAIL"] = f"{user}@http.{caller.remoteAddr or '(none)'}"
        if caller.userAgent:
            env["GIT_HTTP_USER_AGENT"] = _PRINTABLE.sub(b"", caller.userAgent)[:256].decode()
        if caller.protocol:
            # Validated by the web layer before it gets here.
            env["GIT_PROTOCOL"] = caller.protocol.decode("ascii")
        return env

    def argv(self, service: Service, repository: Repository, advertise: bool) -> list[str]:
        """
        The command line. The repository is an absolute, resolved path, so it
        starts with C{/} and git cannot read it as an option.
        """
        args = [self.gitPath, service.command]
        if service is Service.UPLOAD_PACK:
            # --strict: serve exactly this directory, never <dir>/.git.
            args.append("--strict")
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
    ) -> IProcessTransport:
        """Start git for one request, driven by C{protocol}."""
        args = self.argv(service, repository, advertise)
        # No working directory: git enters the repository named by its
        # absolute path itself (and hooks run there), and without a chdir
        # Twisted starts the child with posix_spawn instead of fork(), which
        # would copy the daemon's page tables and stall the reactor for every
        # request.
        return self.reactor.spawnProcess(
            protocol,
            self.gitPath,
            args,
            env=self.environment(caller),
        )


@implementer(IPushProducer)
class GitProcessProtocol(ProcessProtocol):
    """
    Connects one git child to one HTTP request.

    Nothing is written to the client until git writes: a child that fails
    before its first byte gets a clean error response (an ERR packet, which
    git shows as C{remote error: ...}); one that fails after the response
    began gets its connection aborted, so the client sees an error, never a
    truncated success, unless what it wrote was itself a complete refusal
    ending in an ERR packet, which is passed on whole.

    @ivar preamble: bytes sent before git's own output (the C{# service=}
        announcement of a v0 advertisement).
    @ivar done: fires with the exit code once the child has ended and the
        request is answered.
    @ivar output: set to a L{bytearray} to keep a copy of what git writes to
        stdout (an advertisement to cache); L{None} keeps nothing.
    """

    log = Logger()

    def __init__(
        self,
        request: Request,
        clock: IReactorTime,
        contentType: bytes,
        description: str,
        preamble: bytes = b"",
        killGrace: float = KILL_GRACE,
        logFields: Mapping[str, object] | None = None,
    ) -> None:
        self.request = request
        # The operation's service, repository, user and protocol version as
        # separate event fields, for JSON log observers.
        self.logFields = dict(logFields or {})
        self.clock = clock
        self.contentType = contentType
        self.description = description
        self.preamble = preamble
        self.killGrace = killGrace
        self.started = False
        self.requestGone = False
        self.childEnded = False
        self.bytesIn = 0
        self.bytesOut = 0
        self.stderr = b""
        self.began = clock.seconds()
        self.done: Deferred[int | None] = Deferred()
        self.failure: Failure | None = None
        self.output: bytearray | None = None
        self.body: RequestBody | None = None
        self._killCall: IDelayedCall | None = None
        self._stdinOpen = True
        self._shortAnswer = bytearray()
        request.notifyFinish().addErrback(self._requestLost)

    # Feeding stdin ---------------------------------------------------------

    def feedStdin(self, data: bytes) -> None:
        """Give git a body that was buffered whole (upload-pack negotiation)."""
        self.bytesIn += len(data)
        self.transport.write(data)
        self.closeStdin()

    def closeStdin(self) -> None:
        """Tell git its input is complete (or will never be)."""
        self._stdinOpen = False
        self.transport.closeStdin()

    def streamStdin(self, body: RequestBody) -> None:
        """Give git a body while it arrives (a push), paced by git's reading."""

        def finished(_: None) -> None:
            self.bytesIn = body.received
            if not self.childEnded:
                self.closeStdin()

        def failed(failure: Failure) -> None:
            self.bytesIn = body.received
            self.log.info(
                "{description}: request body failed: {reason}",
                description=self.description,
                reason=failure.getErrorMessage(),
            )
            self.failure = failure
            self.terminate()

        self.body = body
        body.streamTo(self.transport).addCallbacks(finished, failed)

    # The child's side ------------------------------------------------------

    def connectionMade(self) -> None:
        # This protocol, not the process transport, is the request's
        # producer: a process transport cannot stopProducing(), which the
        # connection calls when the client goes away.
        self.request.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """The client is not reading: stop reading git's output."""
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The connection is gone: git's output has nowhere to go."""
        self.terminate()

    def outReceived(self, data: bytes) -> None:
        if self.output is not None:
            self.output += data
        if self.requestGone or self.failure is not None:
            # Nobody to tell, or the request failed on our side (a body over
            # its cap): git's complaint about its cut-off input must not
            # become the answer.
            return
        if not self.started:
            self.started = True
            startGitResponse(self.request, self.contentType)
            data = self.preamble + data
        if self.bytesOut < MAX_SHORT_ANSWER:
            self._shortAnswer += data[: MAX_SHORT_ANSWER + 1 - len(self._shortAnswer)]
        self.bytesOut += len(data)
        self.request.write(data)

    def _answeredWithError(self) -> bool:
        """
        Whether all git wrote is a few whole pkt-lines ending in an C{ERR}
        packet: a complete refusal (C{not our ref} for a want that a push
        made unreachable since the advertisement), not a cut-off answer.
        """
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
        if self.body is not None and not self.body.complete:
            # git stopped reading before the body ended (it failed, or was
            # ended): what is left of the body has nowhere to go.
            self.body.stopProducing()
        if self._killCall is not None and self._killCall.active():
            self._killCall.cancel()
        exitCode = 0 if reason.check(ProcessDone) else getattr(reason.value, "exitCode", None)
        self._logOutcome(exitCode, reason)
        if not self.requestGone:
            self.request.unregisterProducer()
            self._answer(exitCode)
        self.done.callback(exitCode)

    def _answer(self, exitCode: int | None) -> None:
        if self.started:
            if (exitCode == 0 or self._answeredWithError()) and self.failure is None:
                self.request.finish()
            else:
                # The response is under way: only a broken connection tells
                # the client that what it got is incomplete.
                self.request.channel.transport.abortConnection()
            return
        if self.failure is not None:
            error = self.failure.value
            if not isinstance(error, HTTPError):
                error = HTTPError("the request failed on the server")
            self.request.write(renderError(self.request, error))
            self.request.finish()
            return
        startGitResponse(self.request, self.contentType)
        if exitCode != 0:
            self.request.write(errorLine(self.clientMessage()))
        self.request.finish()

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
        elif exitCode != 0 or (stderr and self.started):
            self.log.warn(
                "{description}: git ended with {reason}: {stderr}",
                description=self.description,
                reason=reason.getErrorMessage(),
                stderr=stderr,
            )
        self.log.info(
            "git {description} exit={exitCode} bytes_in={bytesIn} bytes_out={bytesOut} "
            "duration={duration:.3f}s",
            **self.logFields,
            description=self.description,
            exitCode=exitCode,
            bytesIn=self.bytesIn,
            bytesOut=self.bytesOut,
            duration=duration,
        )

    # Ending the child --------------------------------------------------------

    def _requestLost(self, reason: Failure) -> None:
        self.requestGone = True
        if not self.childEnded:
            self.log.info(
                "{description}: client went away; ending git", description=self.description
            )
            self.terminate()

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
        # Nothing reads git's output any more: let it drain instead of
        # blocking on a paused pipe.
        self.transport.resumeProducing()
        if self._stdinOpen:
            self.closeStdin()
            self._killCall = self.clock.callLater(TERM_GRACE, self._signal, "TERM")
        else:
            self._signal("TERM")

    def _signal(self, name: str) -> None:
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            return
        if name == "TERM":
            self._killCall = self.clock.callLater(self.killGrace, self._signal, "KILL")
