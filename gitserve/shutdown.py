"""
Graceful shutdown: stop taking work, let transfers in flight finish, then end
what is left.

twistd stops the application's services when it gets SIGTERM and waits for
the L{Deferred}s their C{stopService} returns before the reactor stops. The
listening services stop accepting at once; L{GracefulShutdownService} holds
the reactor up until every git child has ended, or the grace period is over
and the remaining children were ended (SIGTERM, then SIGKILL). git cleans up
after SIGTERM itself: a push it did not finish leaves neither its quarantined
objects nor ref locks, and a push it finished is whole, so every push is
applied wholly or not at all.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gitserve.limits import GuardedSite, JobLimiter

DEFAULT_SHUTDOWN_GRACE = 30.0

# After SIGKILL, how long to wait for the children's pipes to close. A hook's
# own child that outlives git can hold them open; the daemon stops anyway.
REAP_MARGIN = 2.0


class GracefulShutdownService(Service):
    """Drain the git children when the daemon stops."""

    log = Logger()

    def __init__(
        self,
        jobs: JobLimiter,
        site: GuardedSite,
        grace: float,
        killGrace: float,
        clock: IReactorTime,
    ) -> None:
        """
        @param site: its connections are closed as their requests end.
        @param grace: C{--shutdown-grace}: how long transfers may go on.
        @param killGrace: how long a child gets between SIGTERM and SIGKILL.
        """
        self._jobs = jobs
        self._site = site
        self._grace = grace
        self._killGrace = killGrace
        self._clock = clock

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._jobs.busy:
            self.log.info(
                "stopping: letting {busy} git operations finish (up to {grace}s)",
                busy=self._jobs.busy,
                grace=self._grace,
            )
        drained = gatherResults(
            [self._jobs.whenIdle(), self._site.drainConnections()], consumeErrors=True
        ).addTimeout(self._grace, self._clock)
        return drained.addCallbacks(self._drained, self._graceOver)

    def _drained(self, _: object) -> None:
        self.log.info("stopping: every transfer finished")

    def _graceOver(self, failure: Failure) -> Deferred[None]:
        failure.trap(TimeoutError)
        self.log.warn(
            "stopping: shutdown grace of {grace}s over; ending {count} git operations",
            grace=self._grace,
            count=len(self._jobs.running),
        )
        self._jobs.terminateAll()
        reaped = self._jobs.whenIdle().addTimeout(self._killGrace + REAP_MARGIN, self._clock)

        def stragglers(failure: Failure) -> None:
            failure.trap(TimeoutError)
            self.log.error(
                "stopping: {count} git children did not end; stopping anyway",
                count=len(self._jobs.running),
            )

        def closeTheRest(_: object) -> None:
            # Their children are gone, so their requests are answered or
            # aborted; whatever connection is left has nothing to finish.
            self._site.abortConnections()

        return reaped.addErrback(stragglers).addCallback(closeTheRest)
