"""
One git operation, described the same way by every front door, and the core
that carries it out: a job slot, then a git child writing to the front
door's output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gitserve.core.advertisement import CapabilityCache
from gitserve.core.errors import NotFound, Refusal
from gitserve.core.gitprotocol import protocolVersion
from gitserve.core.jobs import JobLimiter
from gitserve.core.metrics import IMetrics, NullMetrics, OperationLabels, exitStatusLabel
from gitserve.core.policy import ANONYMOUS, Policy, Service
from gitserve.core.process import Caller, GitBackend, GitOutcome, GitProcessProtocol
from gitserve.core.repository import ConfigCache, Repository, resolveRepository
from gitserve.interfaces import IGitOutput

log = Logger()
if TYPE_CHECKING:
    from gitserve.core.packcache import PackCache


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
    # Variables for the child beyond the caller's (a push's access-rules
    # snapshot for the update hook, see gitserve.core.accesscontrol).
    environment: tuple[tuple[str, str], ...] = ()
    statelessRpc: bool = True
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
            # The client's address: behind a load balancer, the one its
            # PROXY header gave (see the haproxy: listener in the README).
            f" remote={self.caller.remoteAddr or '-'}"
            f"{f' cache={self.cache}' if self.cache else ''}"
        )

    def metricLabels(self) -> OperationLabels:
        """
        The operation's bounded labels for the metrics: never its repository
        or user. The transport is the caller's door (http, ssh, git).
        """
        return OperationLabels(
            service=self.service.value,
            version=self.protocolVersion,
            transport=self.caller.transport,
            advertise=self.advertise,
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
            "remoteAddr": self.caller.remoteAddr,
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
    metrics: IMetrics = field(default_factory=NullMetrics)

    def resolveFor(
        self, segments: Sequence[bytes], user: str | None, create: bool
    ) -> Deferred[Repository]:
        """
        The repository named by C{segments} that C{user} may see, for every
        door: resolved once, and checked against the policy (the access rules
        when there are some) with the user.

        Under C{--access}, a missing repository that C{user} may create (a
        wild one: gitolite's C{^C}) is created first when C{create} is true
        (a smart fetch or a push), as gitolite creates on the first fetch or
        push; otherwise a missing and an unreadable repository are refused
        alike (L{Policy.hidden}).

        @return: fires with the repository, or fails with a refusal.
        """
        policy = self.policy
        repository = resolveRepository(self.root, segments)
        if repository is not None:
            try:
                policy.checkVisible(repository, user)
            except Refusal as refusal:
                return fail(refusal)
            return succeed(repository)
        if policy.access is None:
            return fail(NotFound())
        # Only under --access (see gitserve.tap: the rule engine is loaded
        # for it alone).
        from gitserve.core.accesscontrol import createRepository, requestedName

        name = requestedName([s.decode("utf-8", "replace") for s in segments])
        creator = user or ANONYMOUS
        if not create or name is None or not policy.access.mayCreate(name, creator).allowed:
            return fail(policy.hidden(user))
        created = self.runBlocking(
            partial(createRepository, self.root, name, creator, self.backend.gitPath)
        )

        def resolved(_: object) -> Repository:
            again = resolveRepository(self.root, segments)
            if again is None:
                raise policy.hidden(user)
            log.info("created {name} for {user}", name=name, user=creator)
            policy.checkVisible(again, user)
            return again

        return created.addCallback(resolved)

    def operation(
        self,
        service: Service,
        repository: Repository,
        caller: Caller,
        advertise: bool = False,
        statelessRpc: bool = True,
    ) -> GitOperation:
        """
        The operation a door asks for, with what the core adds for every door:
        a push carries the user's access-rules snapshot for the update hook.
        """
        environment: dict[str, str] = {}
        if service.isWrite and not advertise:
            environment = self.policy.pushEnvironment(repository, caller.user)
        return GitOperation(
            service, repository, caller, advertise, tuple(environment.items()), statelessRpc
        )

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
            protocol.done.addCallback(self._measure, operation, protocol)
            self.backend.spawn(
                protocol,
                operation.service,
                operation.repository,
                operation.caller,
                operation.advertise,
                dict(operation.environment),
                operation.statelessRpc,
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
