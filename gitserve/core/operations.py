"""
One git operation, described the same way by every front door, and the core
that carries it out: a job slot, then a git child writing to the front
door's output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime

from gitserve.core.advertisement import CapabilityCache
from gitserve.core.gitprotocol import protocolVersion
from gitserve.core.jobs import JobLimiter
from gitserve.core.policy import Policy, Service
from gitserve.core.process import Caller, GitBackend, GitProcessProtocol
from gitserve.core.repository import ConfigCache, Repository
from gitserve.interfaces import IGitOutput

if TYPE_CHECKING:
    from gitserve.core.packcache import PackCache


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
    # Variables for the child beyond the caller's (a push's access-rules
    # snapshot for the update hook, see gitserve.core.accesscontrol).
    environment: tuple[tuple[str, str], ...] = ()
    # How the pack cache answered (hit, follow, lead, miss; see
    # gitserve.core.packcache), or None when it has no say.
    cache: str | None = None

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
            f"{f' cache={self.cache}' if self.cache else ''}"
        )

    def logFields(self) -> dict[str, object]:
        """The same, as separate event fields for structured log observers."""
        return {
            "service": self.service.value,
            "repository": self.repository.name,
            "user": self.caller.user,
            "protocolVersion": self.protocolVersion,
            "advertise": self.advertise,
            **({"cache": self.cache} if self.cache else {}),
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
    # Shared upload-pack answers (--pack-cache), or None when off.
    packCache: PackCache | None = None
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
            )
            self.backend.spawn(
                protocol,
                operation.service,
                operation.repository,
                operation.caller,
                operation.advertise,
                dict(operation.environment),
            )
            return protocol

        if self.jobs is None:
            return maybeDeferred(spawn)
        return self.jobs.run(spawn)
