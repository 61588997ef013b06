"""
The route table and the resource that answers every request.

Routing works like git http-backend's: the end of the path names the route
(C{info/refs}, C{git-upload-pack}, ...), the rest names the repository, which
L{resolveRepository} turns into a L{Repository} exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gitserve.core.errors import AuthenticationRequired, NotFound, Refusal
from gitserve.core.repository import Repository, resolveRepository
from gitserve.http import dumb, smart
from gitserve.http.body import BodyLost
from gitserve.http.channel import isAnswerable
from gitserve.http.context import HTTPContext
from gitserve.http.errors import HTTPError, MethodNotAllowed, renderError
from gitserve.http.health import HEALTH_PATH

Handler = Callable[[HTTPContext, Request, Repository, Sequence[str]], Any]


@dataclass(frozen=True)
class Route:
    """
    One line of the route table: the methods a path suffix answers and the
    handler for it. The suffix is matched segment by segment, so a repository
    named like a route part cannot confuse it.
    """

    methods: tuple[bytes, ...]
    suffix: tuple[re.Pattern[str], ...]
    handler: Handler

    def match(self, segments: Sequence[str]) -> Sequence[str] | None:
        """The matched suffix segments, when C{segments} end with this route."""
        if len(segments) <= len(self.suffix):
            return None
        tail = segments[len(segments) - len(self.suffix) :]
        if all(p.fullmatch(s) for p, s in zip(self.suffix, tail, strict=True)):
            return tail
        return None


def route(methods: tuple[bytes, ...], *suffix: str) -> Callable[[Handler], Route]:
    """Build a L{Route} from a handler and its path suffix patterns."""

    def build(handler: Handler) -> Route:
        return Route(methods, tuple(re.compile(p) for p in suffix), handler)

    return build


# The route table, in http-backend.c's order. Methods other than the ones
# listed get 405.
_GET = (b"GET", b"HEAD")
_PACK_NAME = r"pack-(?:[0-9a-f]{40}|[0-9a-f]{64})"
ROUTES: list[Route] = [
    route(_GET, "HEAD")(dumb.getHead),
    route(_GET, "info", "refs")(smart.getInfoRefs),
    route(_GET, "objects", "info", "alternates")(dumb.getTextFile),
    route(_GET, "objects", "info", "http-alternates")(dumb.getTextFile),
    route(_GET, "objects", "info", "packs")(dumb.getInfoPacks),
    route(_GET, "objects", "[0-9a-f]{2}", "[0-9a-f]{38}|[0-9a-f]{62}")(dumb.getLooseObject),
    route(_GET, "objects", "pack", _PACK_NAME + r"\.pack")(dumb.getPackFile),
    route(_GET, "objects", "pack", _PACK_NAME + r"\.idx")(dumb.getIdxFile),
    route((b"POST",), "git-upload-pack")(smart.postUploadPack),
    route((b"POST",), "git-receive-pack")(smart.postReceivePack),
]


def matchRoute(segments: Sequence[str]) -> tuple[Route, Sequence[str], Sequence[str]] | None:
    """The route a path ends with, its matched suffix, and the repository part."""
    for candidate in ROUTES:
        tail = candidate.match(segments)
        if tail is not None:
            return candidate, tail, segments[: len(segments) - len(tail)]
    return None


class RootResource(Resource):
    """
    Answers every request: route, resolve, check, hand over to a handler.
    Every refusal goes through L{_refuse}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, context: HTTPContext) -> None:
        super().__init__()
        self.context = context

    def render(self, request: Request) -> bytes | int:
        # Before routing and before private mode's authentication: a load
        # balancer checks it anonymously, and it says nothing about any
        # repository.
        if request.path == HEALTH_PATH:
            return self.context.health.render(request)
        if self.context.core.policy.private:
            result = self.context.userFor(request).addCallback(self._dispatchPrivate, request)
        else:
            try:
                result = self._dispatch(request)
            except (Refusal, HTTPError) as error:
                return self._refuse(request, error)
        if isinstance(result, Deferred):
            result.addErrback(self._failed, request)
            return NOT_DONE_YET
        return result

    def _dispatchPrivate(self, user: str | None, request: Request) -> Any:
        """
        Private mode: nobody learns anything, not even whether a repository
        exists, before authenticating, so this comes before routing.
        """
        if user is None:
            raise AuthenticationRequired("Authentication required")
        result = self._dispatch(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
            return None
        return result if isinstance(result, Deferred) else None

    def _dispatch(self, request: Request) -> Any:
        # Twisted types postpath as optional (a Request exists before it is
        # routed); the Site has set it by the time a resource renders.
        assert request.postpath is not None
        segments = []
        for raw in request.postpath:
            try:
                segments.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise NotFound() from None
        # Browser pages first: they claim only what git never asks for.
        browse = self.context.browse
        if browse is not None and browse.claims(request, segments):
            request.routeKind = "browse"  # type: ignore[attr-defined]
            return browse.render(request, segments)
        matched = matchRoute(segments)
        if matched is None:
            raise NotFound()
        chosen, tail, repositorySegments = matched
        # As http-backend: a method the route does not answer is refused
        # before the repository is looked up, so the answer says nothing
        # about which repositories exist.
        if request.method not in chosen.methods:
            raise MethodNotAllowed(chosen.methods)
        # For the metrics: info/refs without service= is the dumb ref list.
        smartRoute = chosen.handler.__module__ == smart.__name__ and (
            chosen.handler is not smart.getInfoRefs or b"service" in (request.args or {})
        )
        request.routeKind = "smart" if smartRoute else "dumb"  # type: ignore[attr-defined]
        core = self.context.core
        named = [part.encode("utf-8") for part in repositorySegments]
        if core.policy.access is not None:
            # Under --access, what a user may see depends on who they are,
            # and a smart request may create a wild repository.
            create = self._mayCreateOn(request, chosen)
            return self.context.userFor(request).addCallback(
                lambda user: core.resolveFor(named, user, create).addCallback(
                    self._answer, request, chosen, tail
                )
            )
        repository = resolveRepository(core.root, named)
        if repository is None:
            raise NotFound()
        core.policy.checkVisible(repository)
        return chosen.handler(self.context, request, repository, tail)

    def _answer(
        self, repository: Repository, request: Request, chosen: Route, tail: Sequence[str]
    ) -> Any:
        result = chosen.handler(self.context, request, repository, tail)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
            return None
        return result

    @staticmethod
    def _mayCreateOn(request: Request, chosen: Route) -> bool:
        """Whether this route is a smart fetch or push (the only ones that create)."""
        if chosen.handler in (smart.postUploadPack, smart.postReceivePack):
            return True
        return chosen.handler is smart.getInfoRefs and b"service" in (request.args or {})

    def _refuse(self, request: Request, error: Refusal | HTTPError) -> bytes:
        answer = self.context.httpErrorFor(error)
        self.log.info(
            "refused {method} {uri}: {code} {message}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            code=answer.code,
            message=answer.message,
        )
        return renderError(request, answer)

    def _failed(self, failure: Failure, request: Request) -> None:
        # CancelledError: the client left while its request waited for a job.
        if not isAnswerable(request) or failure.check(BodyLost, CancelledError):
            return
        if failure.check(Refusal, HTTPError):
            body = self._refuse(request, failure.value)
        else:
            self.log.failure("unexpected error answering {uri}", failure, uri=request.uri)
            body = renderError(request, HTTPError("Internal Server Error"))
        request.write(body)
        request.finish()
