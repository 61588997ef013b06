"""
What the daemon counts, as a transport-neutral seam: every front door (HTTP
now, SSH and git:// alike) reports through one L{IMetrics}, and only the
assembly (L{gitserve.app.metrics}) knows the numbers end up in Prometheus.

Labels are bounded by construction: a service, a protocol version, a
transport, an exit status, an HTTP method from a fixed list, a route kind, a
status code. Never a repository, a user or an address, so a scrape does not
grow with the number of repositories or users.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from zope.interface import Interface, implementer


@dataclass(frozen=True)
class OperationLabels:
    """
    The labels of one git operation.

    @ivar service: C{git-upload-pack}, C{git-receive-pack} or C{git-upload-archive}.
    @ivar version: the protocol version the client asked for (0, 1, 2).
    @ivar transport: the front door it came through: C{http}, C{ssh}, C{git}.
    @ivar advertise: only the ref or capability advertisement
        (C{info/refs}), as opposed to the fetch or push itself.
    """

    service: str
    version: int
    transport: str
    advertise: bool = False


def exitStatusLabel(exitCode: int | None, failed: bool) -> str:
    """
    An operation's exit status as a label: C{0} when git succeeded, git's own
    exit code when it failed, C{signal} when a signal ended it, C{aborted}
    when the front door's side failed (the body broke, the client left).
    At most 258 values.
    """
    if failed:
        return "aborted"
    if exitCode is None:
        return "signal"
    return str(exitCode & 0xFF)


class CountsJobs(Protocol):
    """What the metrics read from a job limiter at scrape time."""

    @property
    def busy(self) -> int: ...

    @property
    def queued(self) -> int: ...

    refusals: int


class CountsLookups(Protocol):
    """What the metrics read from a cache at scrape time."""

    @property
    def hits(self) -> int: ...

    @property
    def misses(self) -> int: ...


class IMetrics(Interface):
    """
    Where front doors and the core report what happened. Counts the objects
    already keep (jobs, cache lookups, open connections) are read when
    scraped, through the C{watch*} methods, rather than pushed on every
    change.
    """

    def operationFinished(
        labels: OperationLabels,
        exitStatus: str,
        duration: float,
        bytesIn: int,
        bytesOut: int,
    ) -> None:
        """A git operation ended (see L{exitStatusLabel})."""

    def requestFinished(transport: str, method: str, kind: str, status: int) -> None:
        """
        A front-door request was answered.

        @param method: a method from a fixed list, or C{other}.
        @param kind: the route kind: C{smart}, C{dumb}, C{browse},
            C{health} or C{other}.
        """

    def authenticationFailed(transport: str) -> None:
        """Someone presented credentials that did not check out."""

    def watchJobs(jobs: CountsJobs) -> None:
        """Report the jobs running and waiting, and the busy refusals, of C{jobs}."""

    def watchCache(name: str, cache: CountsLookups) -> None:
        """Report the hits and misses of C{cache}, labelled C{name}."""

    def watchConnections(transport: str, count: Callable[[], int]) -> None:
        """Report C{count()} as the connections open on C{transport}."""


@implementer(IMetrics)
class NullMetrics:
    """Counts nothing: the default when no C{--metrics} listener is asked for."""

    def operationFinished(
        self,
        labels: OperationLabels,
        exitStatus: str,
        duration: float,
        bytesIn: int,
        bytesOut: int,
    ) -> None:
        pass

    def requestFinished(self, transport: str, method: str, kind: str, status: int) -> None:
        pass

    def authenticationFailed(self, transport: str) -> None:
        pass

    def watchJobs(self, jobs: CountsJobs) -> None:
        pass

    def watchCache(self, name: str, cache: CountsLookups) -> None:
        pass

    def watchConnections(self, transport: str, count: Callable[[], int]) -> None:
        pass


__all__ = [
    "IMetrics",
    "NullMetrics",
    "OperationLabels",
    "exitStatusLabel",
    "CountsJobs",
    "CountsLookups",
]
