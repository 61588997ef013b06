"""
C{GET /-/health}: whether this daemon wants new work, for a load balancer.

It answers C{200 ok} while serving and C{503 draining} from the moment a
graceful shutdown begins, while transfers in flight go on: a load balancer
that checks it stops sending new requests here before the listener closes.
The path cannot name a repository: C{-} is refused as a leading character
of any repository segment (see L{gitserve.core.repository}).
"""

from __future__ import annotations

from twisted.web.resource import Resource
from twisted.web.server import Request

from gitserve.http.headers import setNoCache

HEALTH_PATH = b"/-/health"


class Health:
    """
    The serving state one daemon shares between its health answers and its
    shutdown: L{beginDraining} is called once, when the shutdown begins.
    """

    def __init__(self) -> None:
        self.draining = False

    def beginDraining(self) -> None:
        """From now on, say 503: new work should go elsewhere."""
        self.draining = True

    def render(self, request: Request) -> bytes:
        """
        Answer a health check: C{200 ok} or C{503 draining}, never cached,
        C{405} for a method other than GET and HEAD.
        """
        # Counted apart from git's routes, so that checks every second do
        # not drown the other requests in the metrics.
        request.routeKind = "health"  # type: ignore[attr-defined]
        setNoCache(request)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            body = b"Method Not Allowed\n"
        elif self.draining:
            request.setResponseCode(503)
            body = b"draining\n"
        else:
            request.setResponseCode(200)
            body = b"ok\n"
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body


class HealthResource(Resource):
    """L{Health} as a leaf resource, for a site of its own (the metrics listener)."""

    isLeaf = True

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def render(self, request: Request) -> bytes:
        return self.health.render(request)


__all__ = ["HEALTH_PATH", "Health", "HealthResource"]
