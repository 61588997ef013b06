"""
Prometheus metrics: L{PrometheusMetrics} is the daemon's L{IMetrics}, and
L{metricsSite} serves it at C{/metrics} on the C{--metrics} listener only
(never on a public listener unless the admin points C{--metrics} there).

Everything is prometheus-client's: its metric types, its text exposition,
its process collector (CPU, RSS, open descriptors), and its Twisted
resource. Each daemon has its own registry, so a test process can build
several daemons, and nothing registered by other libraries in the global
registry is exposed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from gitserve.core.metrics import CountsJobs, CountsLookups, IMetrics, OperationLabels
from gitserve.http.health import Health, HealthResource

# Git operations last from milliseconds (a cached advertisement, ls-refs) to
# many minutes (a clone of a large repository over a slow link).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

_OPERATION_LABELS = ("service", "version", "transport", "advertise")


class _ScrapeTimeCollector(Collector):
    """
    The counts other objects already keep (job slots, cache lookups, open
    connections), read when Prometheus scrapes rather than pushed on every
    change.
    """

    def __init__(self) -> None:
        self.jobs: list[CountsJobs] = []
        self.caches: list[tuple[str, CountsLookups]] = []
        self.connections: list[tuple[str, Callable[[], int]]] = []

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily("gitserve_jobs_running", "git children running now.")
        waiting = GaugeMetricFamily(
            "gitserve_jobs_waiting", "Requests waiting for a job slot (--max-queue)."
        )
        refused = CounterMetricFamily(
            "gitserve_busy_refusals",
            "Requests refused because every job slot and queue place was taken (503).",
        )
        for jobs in self.jobs:
            running.add_metric([], jobs.busy)
            waiting.add_metric([], jobs.queued)
            refused.add_metric([], jobs.refusals)
        hits = CounterMetricFamily(
            "gitserve_cache_hits", "Lookups answered from a cache.", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "gitserve_cache_misses", "Lookups a cache could not answer.", labels=["cache"]
        )
        for name, cache in self.caches:
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
        connections = GaugeMetricFamily(
            "gitserve_connections_open", "Client connections open now.", labels=["transport"]
        )
        for transport, count in self.connections:
            connections.add_metric([transport], count())
        yield from (running, waiting, refused, hits, misses, connections)


@implementer(IMetrics)
class PrometheusMetrics:
    """
    The daemon's metrics in a registry of their own.

    @ivar registry: what C{/metrics} exposes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "gitserve_http_requests",
            "HTTP requests answered, by method, route kind and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.operations = Counter(
            "gitserve_git_operations",
            "git operations ended, by service, protocol version, transport and exit status.",
            [*_OPERATION_LABELS, "exit"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gitserve_git_operation_duration_seconds",
            "How long git operations took, from spawn to exit.",
            list(_OPERATION_LABELS),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.bytesIn = Counter(
            "gitserve_git_received_bytes",
            "Bytes given to git children (negotiation, pushed packs).",
            list(_OPERATION_LABELS),
            registry=self.registry,
        )
        self.bytesOut = Counter(
            "gitserve_git_sent_bytes",
            "Bytes git children wrote that reached their client.",
            list(_OPERATION_LABELS),
            registry=self.registry,
        )
        self.authFailures = Counter(
            "gitserve_authentication_failures",
            "Credentials that did not check out.",
            ["transport"],
            registry=self.registry,
        )
        self._scrapeTime = _ScrapeTimeCollector()
        self.registry.register(self._scrapeTime)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def operationFinished(
        self,
        labels: OperationLabels,
        exitStatus: str,
        duration: float,
        bytesIn: int,
        bytesOut: int,
    ) -> None:
        values = (
            labels.service,
            str(labels.version),
            labels.transport,
            "true" if labels.advertise else "false",
        )
        self.operations.labels(*values, exitStatus).inc()
        self.duration.labels(*values).observe(duration)
        self.bytesIn.labels(*values).inc(bytesIn)
        self.bytesOut.labels(*values).inc(bytesOut)

    def requestFinished(self, transport: str, method: str, kind: str, status: int) -> None:
        # Only HTTP has requests with methods and statuses; other doors
        # count their work as operations.
        self.requests.labels(method, kind, str(status)).inc()

    def authenticationFailed(self, transport: str) -> None:
        self.authFailures.labels(transport).inc()

    def watchJobs(self, jobs: CountsJobs) -> None:
        self._scrapeTime.jobs.append(jobs)

    def watchCache(self, name: str, cache: CountsLookups) -> None:
        self._scrapeTime.caches.append((name, cache))

    def watchConnections(self, transport: str, count: Callable[[], int]) -> None:
        self._scrapeTime.connections.append((transport, count))


def metricsSite(metrics: PrometheusMetrics, health: Health) -> Site:
    """
    The site of the C{--metrics} listener: C{/metrics}, and C{/-/health} as
    on every HTTP listener.
    """
    # Imported here: prometheus-client's Twisted module imports the global
    # reactor, which only a daemon that serves metrics should pull in.
    from prometheus_client.twisted import MetricsResource

    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry=metrics.registry))
    dash = Resource()
    dash.putChild(b"health", HealthResource(health))
    root.putChild(b"-", dash)
    return _QuietSite(root)


class _QuietSite(Site):
    """A site without an access log: a scrape every few seconds would drown the log."""

    noisy = False

    def log(self, request: object) -> None:
        pass


__all__ = ["PrometheusMetrics", "metricsSite"]
