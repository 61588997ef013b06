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

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from gitserve.core.jobs import JobLimiter
from gitserve.http.channel import GitSite
from gitserve.http.health import Health

DEFAULT_SHUTDOWN_GRACE = 30.0

# After SIGKILL, how long to wait for the children's pipes to close. A hook's
# own child that outlives git can hold them open; the daemon stops anyway.
REAP_MARGIN = 2.0


class Drainable(Protocol):
    """
    A door other than the web site whose connections a shutdown closes: the
    SSH and git:// factories.
    """

    def drainConnections(self) -> Deferred[None]:
        """Close each connection once its operation is done; fires when none is left."""

    def abortConnections(self) -> None:
        """Drop every connection at once."""


class DrainAnnouncement:
    """
    The first step of a graceful shutdown: C{/-/health} turns 503 at once,
    and new work is still taken for C{delay} seconds, long enough for a load
    balancer's health checks to notice and send it elsewhere; only then do
    the listeners close and the drain proper begin. With no delay (the
    default) they close at once, as before, and a load balancer learns it
    from refused connections instead.
    """

    def __init__(self, health: Health, delay: float, clock: IReactorTime) -> None:
        self.health = health
        self.delay = delay
        self.clock = clock
        self._waiters: list[Deferred[None]] | None = None

    def begin(self) -> Deferred[None]:
        """
        Start announcing (once; later calls join in).

        @return: fires when the announcement is over and listeners may close.
        """
        waiter: Deferred[None] = Deferred()
        if self._waiters is None:
            self._waiters = [waiter]
            self.health.beginDraining()
            if self.delay > 0:
                self.clock.callLater(self.delay, self._over)
            else:
                self._over()
        elif self._waiters:
            self._waiters.append(waiter)
        else:
            waiter.callback(None)
        return waiter

    def _over(self) -> None:
        waiters, self._waiters = self._waiters or [], []
        for waiter in waiters:
            waiter.callback(None)


class GracefulShutdownService(Service):
    """Drain the git children when the daemon stops."""

    log = Logger()

    def __init__(
        self,
        jobs: JobLimiter,
        site: GitSite,
        grace: float,
        killGrace: float,
        clock: IReactorTime,
        announcement: DrainAnnouncement | None = None,
        doors: Sequence[Drainable] = (),
    ) -> None:
        """
        @param site: its connections are closed as their requests end.
        @param grace: C{--shutdown-grace}: how long transfers may go on.
        @param killGrace: how long a child gets between SIGTERM and SIGKILL.
        @param doors: the other doors (SSH, git://), drained the same way.
        @param announcement: begun first, so that C{/-/health} says 503
            before anything else happens; the drain waits for its end.
        """
        self._announcement = announcement
        self._jobs = jobs
        self._site = site
        self._grace = grace
        self._killGrace = killGrace
        self._clock = clock
        self._doors = list(doors)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._announcement is None:
            return self._drain()
        return self._announcement.begin().addCallback(lambda _: self._drain())

    def _drain(self) -> Deferred[None]:
        if self._jobs.busy:
            self.log.info(
                "stopping: letting {busy} git operations finish (up to {grace}s)",
                busy=self._jobs.busy,
                grace=self._grace,
            )
        finished = gatherResults(
            [
                self._jobs.whenIdle(),
                self._site.drainConnections(),
                *[door.drainConnections() for door in self._doors],
            ]
        )
        return self._within(finished, self._grace).addCallback(self._afterGrace)

    def _within(self, d: Deferred[Any], seconds: float) -> Deferred[bool]:
        """
        Whether C{d} fires within C{seconds}. C{d} is left alone, not
        cancelled: it is only watched.
        """
        result: Deferred[bool] = Deferred()

        def expired() -> None:
            if not result.called:
                result.callback(False)

        timer = self._clock.callLater(seconds, expired)

        def fired(_: object) -> None:
            if timer.active():
                timer.cancel()
            if not result.called:
                result.callback(True)

        d.addBoth(fired)
        return result

    def _afterGrace(self, finished: bool) -> Deferred[None] | None:
        if finished:
            self.log.info("stopping: every transfer finished")
            return None
        self.log.warn(
            "stopping: shutdown grace of {grace}s over; ending {count} git operations",
            grace=self._grace,
            count=len(self._jobs.running),
        )
        self._jobs.terminateAll()

        def reaped(ended: bool) -> None:
            if not ended:
                self.log.error(
                    "stopping: {count} git children did not end; stopping anyway",
                    count=len(self._jobs.running),
                )
            # Their children are gone, so their requests are answered or
            # aborted; whatever connection is left has nothing to finish.
            self._site.abortConnections()
            for door in self._doors:
                door.abortConnections()

        return self._within(self._jobs.whenIdle(), self._killGrace + REAP_MARGIN).addCallback(
            reaped
        )
