"""
One git operation, described the same way by every front door, and the core
that carries it out: a job slot, then a git child writing to the front
door's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from gitserve.core.advertisement import CapabilityCache
from gitserve.core.gitprotocol import protocolVersion
from gitserve.core.jobs import JobLimiter
from gitserve.core.policy import Policy, Service
from gitserve.core.process import Caller, GitBackend, GitProcessProtocol
from gitserve.core.repository import ConfigCache, Repository
from gitserve.interfaces import IGitOutput


@dataclass(frozen=True)
class GitOperation:
    """
    What a front door asks of the core: which service, on which (resolved)
    repository, for whom, and whether only the advertisement is wanted
    (C{--advertise-refs}, as a stateless HTTP C{info/refs} asks).

    @ivar statelessRpc: HTTP's request-and-answer mode; false for the
        full-duplex doors (SSH, git://), where one git child talks with the
        client for the whole operation.
    """

    service: Service
    repository: Repository
    caller: Caller
    advertise: bool = False
    statelessRpc: bool = True

    @property
    def protocolVersion(self) -> int:
        """The protocol version the client asked for (0 when it did not say)."""
        return protocolVersion(self.caller.protocol)

    def describe(self) -> str:
        """The operation as the per-operation log line names it."""
        return (
            f"{self.service.value}{' advertise' if self.advertise else ''} "
            f"repo={self.repository.name} user={self.caller.user or '-'} "
            f"protocol=v{self.protocolVersion}"
        )

    def describeTransport(self) -> str:
        """
        The door the operation came through (and the SSH key used), as the
        end of the per-operation log line: after the fields the line always
        had, so that what parsed it before still does.
        """
        text = f" transport={self.caller.transport}"
        if self.caller.keyFingerprint:
            text += f" key={self.caller.keyFingerprint}"
        return text

    def logFields(self) -> dict[str, object]:
        """The same, as separate event fields for structured log observers."""
        return {
            "service": self.service.value,
            "repository": self.repository.name,
            "user": self.caller.user,
            "protocolVersion": self.protocolVersion,
            "advertise": self.advertise,
            "transport": self.caller.transport,
            "keyFingerprint": self.caller.keyFingerprint,
        }


@dataclass
class GitCore:
    """
    What every front door shares: the repositories, the policy, the git
    backend, the job limiter and the caches. One per daemon, built by
    L{gitserve.tap}.

    @ivar jobs: the cap on concurrent git children, if any.
    @ivar runBlocking: runs a blocking, thread-safe computation (the dumb
        C{info/refs} of a repository with many refs) off the reactor thread;
        the default runs it inline, which is what unit tests want.
    """

    root: Path
    policy: Policy
    backend: GitBackend
    clock: IReactorTime
    configs: ConfigCache = field(default_factory=ConfigCache)
    jobs: JobLimiter | None = None
    capabilities: CapabilityCache | None = None
    runBlocking: Callable[[Callable[[], Any]], Deferred[Any]] = maybeDeferred

    def start(self, operation: GitOperation, output: IGitOutput) -> Deferred[GitProcessProtocol]:
        """
        Start git for C{operation} once a job slot is free, writing to
        C{output}. Cancelling the result (the client left while queued) gives
        up the place in the queue.

        @return: fires with the child's protocol, or fails with
            L{gitserve.core.errors.Busy}.
        """

        def spawn() -> GitProcessProtocol:
            protocol = GitProcessProtocol(
                output,
                self.clock,
                description=operation.describe(),
                logFields=operation.logFields(),
                killGrace=self.backend.killGrace,
                logSuffix=operation.describeTransport(),
            )
            self.backend.spawn(
                protocol,
                operation.service,
                operation.repository,
                operation.caller,
                operation.advertise,
                operation.statelessRpc,
            )
            return protocol

        if self.jobs is None:
            return maybeDeferred(spawn)
        return self.jobs.run(spawn)
