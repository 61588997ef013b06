"""The cache headers git http-backend sends, shared by smart, dumb and error responses."""

from __future__ import annotations

from twisted.web.http import datetimeToString
from twisted.web.server import Request

# http-backend.c, hdr_nocache(): refs and advertisements must never be cached,
# or a client fetches against stale refs.
NO_CACHE_HEADERS = (
    (b"Expires", b"Fri, 01 Jan 1980 00:00:00 GMT"),
    (b"Pragma", b"no-cache"),
    (b"Cache-Control", b"no-cache, max-age=0, must-revalidate"),
)

ONE_YEAR = 31536000


def setNoCache(request: Request) -> None:
    """Mark a response as never cacheable, exactly as http-backend does."""
    for name, value in NO_CACHE_HEADERS:
        request.setHeader(name, value)


def startGitResponse(request: Request, contentType: bytes) -> None:
    """
    The head of a smart-protocol answer: 200, the service's content type,
    never cached. Whether git answers or a cached advertisement does, the
    client sees the same headers.
    """
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", contentType)
    setNoCache(request)


def setCacheForever(request: Request, now: float) -> None:
    """
    Mark a response as cacheable for a year (http-backend's hdr_cache_forever):
    objects and packs are named by their content, so they never change.
    """
    request.setHeader(b"Date", datetimeToString(now))
    request.setHeader(b"Expires", datetimeToString(now + ONE_YEAR))
    request.setHeader(b"Cache-Control", b"public, max-age=%d" % ONE_YEAR)
