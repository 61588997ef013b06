"""
What every HTTP handler needs: the core, and the HTTP-only settings around
it (authentication, the push size cap).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

from gitserve.core.errors import Refusal
from gitserve.core.operations import GitCore
from gitserve.core.process import Caller
from gitserve.http.errors import HTTPError, httpErrorFor
from gitserve.http.health import Health
from gitserve.interfaces import IRelayReactor

# Default --max-push-size: a push body (inflated) larger than this is refused.
MAX_PUSH_SIZE = 2 * 1024**3


@dataclass
class HTTPContext:
    """
    One per daemon, built by L{gitserve.tap}.

    @ivar authenticate: maps a request to its user (L{None} for anonymous);
        without it (no authentication configured) everyone is anonymous.
    @ivar challenge: the C{WWW-Authenticate} value a 401 carries.
    @ivar browse: the browser pages, or L{None} when they are off.
    @ivar health: the serving state C{/-/health} reports.
    @ivar pipeReactor: the reactor that watches git's output pipes while
        they are spliced to plain sockets (L{gitserve.http.relay});
        L{None} writes all of git's output, and the dumb protocol's files,
        through Twisted (C{--no-splice}: see L{splicing}).
    """

    core: GitCore
    maxPushSize: int = MAX_PUSH_SIZE
    authenticate: Callable[[Request], Deferred[str | None]] | None = None
    challenge: bytes = b'Basic realm="gitserve"'
    # The browser pages (L{gitserve.http.browse.BrowsePages}); None with --no-browse.
    browse: Any = None
    # What /-/health answers: 503 once a graceful shutdown begins.
    health: Health = field(default_factory=Health)
    pipeReactor: IRelayReactor | None = None

    @property
    def splicing(self) -> bool:
        """
        Whether the kernel moves bytes between files, git's pipes and plain
        sockets: git's output relayed with C{splice(2)}
        (L{gitserve.http.relay}), a push body moved in the same way
        (L{gitserve.http.inbound}), the dumb protocol's files sent with
        C{sendfile(2)} (L{gitserve.http.dumb}). C{--no-splice} switches all
        off at once, for comparing and in case a kernel misbehaves with them.
        """
        return self.pipeReactor is not None

    def userFor(self, request: Request) -> Deferred[str | None]:
        """
        The authenticated user of C{request}, L{None} when anonymous; decided
        once per request (private mode asks before routing, handlers again)
        and kept on the request for the access log.
        """
        if self.authenticate is None:
            return succeed(None)
        if getattr(request, "userDecided", False):
            return succeed(getattr(request, "authenticatedUser", None))

        def remember(user: str | None) -> str | None:
            request.authenticatedUser = user  # type: ignore[attr-defined]
            request.userDecided = True  # type: ignore[attr-defined]
            return user

        return self.authenticate(request).addCallback(remember)

    def httpErrorFor(self, error: Refusal | HTTPError) -> HTTPError:
        """The answer the client gets for C{error} on this server."""
        return httpErrorFor(error, self.challenge if self.authenticate is not None else None)

    def caller(self, request: Request, user: str | None, gitProtocol: bytes | None) -> Caller:
        """Who a git child started for C{request} works for."""
        address = request.getClientAddress()
        return Caller(
            remoteAddr=str(getattr(address, "host", "") or ""),
            user=user,
            userAgent=request.getHeader(b"User-Agent"),
            protocol=gitProtocol,
        )
