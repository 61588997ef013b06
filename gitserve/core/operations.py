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
from gitserve.core.metrics import IMetrics, NullMetrics, OperationLabels, exitStatusLabel
from gitserve.core.policy import Policy, Service
from gitserve.core.process import Caller, GitBackend, GitOutcome, GitProcessProtocol
from gitserve.core.repository import ConfigCache, Repository
from gitserve.interfaces import IGitOutput


@dataclass(frozen=True)
class GitOperation:
    """
    What a front door asks of the core: which service, on which (resolved)
    repository, for whom, and whether only the advertisement is wanted
    (C{--advertise-refs}, as a stateless HTTP C{info/refs} asks).
    """

    service: Service
    repository: Repository
    caller: Caller
    advertise: bool = False

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
            # The client's address: behind a load balancer, the one its
            # PROXY header gave (see the haproxy: listener in the README).
            f" remote={self.caller.remoteAddr or '-'}"
        )

    def metricLabels(self) -> OperationLabels:
        """
        The operation's bounded labels for the metrics: never its repository
        or user. A door that adds a C{transport} attribute (SSH, git://)
        gets it as the transport label; HTTP is the default.
        """
        return OperationLabels(
            service=self.service.value,
            version=self.protocolVersion,
            transport=str(getattr(self, "transport", "http")),
            advertise=self.advertise,
        )

    def logFields(self) -> dict[str, object]:
        """The same, as separate event fields for structured log observers."""
        return {
            "service": self.service.value,
            "repository": self.repository.name,
            "user": self.caller.user,
            "protocolVersion": self.protocolVersion,
            "advertise": self.advertise,
            "remoteAddr": self.caller.remoteAddr,
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
    metrics: IMetrics = field(default_factory=NullMetrics)

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
            )
            protocol.done.addCallback(self._measure, operation, protocol)
            self.backend.spawn(
                protocol,
                operation.service,
                operation.repository,
                operation.caller,
                operation.advertise,
            )
            return protocol

        if self.jobs is None:
            return maybeDeferred(spawn)
        return self.jobs.run(spawn)

    def _measure(
        self, outcome: GitOutcome, operation: GitOperation, protocol: GitProcessProtocol
    ) -> GitOutcome:
        """Report an ended operation to the metrics, whatever door it came through."""
        self.metrics.operationFinished(
            operation.metricLabels(),
            exitStatusLabel(outcome.exitCode, outcome.failure is not None),
            max(0.0, self.clock.seconds() - protocol.began),
            protocol.bytesIn,
            protocol.bytesOut,
        )
        return outcome
