"""
Refusals as HTTP answers: the one place that maps the core's refusals to
statuses, and the one function that renders them.

Every refusal has the same shape on the wire: a status, a C{text/plain}
message that git shows to the user, and no-cache headers.
"""

from __future__ import annotations

from twisted.web.server import Request

from gitserve.core.errors import (
    AuthenticationRequired,
    Busy,
    Forbidden,
    InvalidRequest,
    NotFound,
    Refusal,
    TooLarge,
)
from gitserve.http.headers import setNoCache


class HTTPError(Exception):
    """
    A request refused with an HTTP status and a message for the git user.

    Raised as such only for what exists in HTTP alone (a method, a media
    type); the core's refusals become one through L{httpErrorFor}.

    @ivar code: the HTTP status.
    @ivar message: one line, shown by git (as C{remote: ...} on C{info/refs}).
    @ivar headers: extra response headers, e.g. C{WWW-Authenticate}.
    """

    code = 500
    defaultMessage = "Internal Server Error"

    def __init__(self, message: str | None = None, headers: dict[bytes, bytes] | None = None):
        self.message = message if message is not None else self.defaultMessage
        self.headers = headers or {}
        super().__init__(self.message)


class MethodNotAllowed(HTTPError):
    code = 405
    defaultMessage = "Method Not Allowed"

    def __init__(self, allowed: tuple[bytes, ...]) -> None:
        # RFC 9110 15.5.6: a 405 names the methods the resource does answer.
        super().__init__(headers={b"Allow": b", ".join(allowed)})


class UnsupportedMediaType(HTTPError):
    code = 415
    defaultMessage = "Unsupported Media Type"


# The core's refusals, by class, in one table. Order matters only for
# subclasses, and there are none among them.
STATUSES: dict[type[Refusal], int] = {
    InvalidRequest: 400,
    AuthenticationRequired: 401,
    Forbidden: 403,
    NotFound: 404,
    TooLarge: 413,
    Busy: 503,
}


def httpErrorFor(error: Refusal | HTTPError, challenge: bytes | None) -> HTTPError:
    """
    The HTTP answer to C{error}.

    @param challenge: the C{WWW-Authenticate} value, L{None} when no
        authentication is configured: then "authenticate first" becomes 403,
        since there are no credentials to ask for.
    """
    if isinstance(error, HTTPError):
        return error
    answer = HTTPError(error.message)
    answer.code = STATUSES.get(type(error), 500)
    if isinstance(error, AuthenticationRequired):
        if challenge is None:
            answer.code = 403
        else:
            # The challenge is what makes git ask for credentials (and retry).
            answer.headers[b"WWW-Authenticate"] = challenge
    if isinstance(error, Busy) and error.retryAfter is not None:
        answer.headers[b"Retry-After"] = b"%d" % error.retryAfter
    return answer


def renderError(request: Request, error: HTTPError) -> bytes:
    """
    Prepare C{request} to answer with C{error} and return the body to write.

    Git shows a C{text/plain} body of a failed request line by line, prefixed
    with C{remote:}, so the message is all the user sees: it never names a
    path on the server.
    """
    if error.code == 405 and request.clientproto != b"HTTP/1.1":
        # http-backend answers 400 to HTTP/1.0 clients, which predate 405.
        request.setResponseCode(400, b"Bad Request")
    else:
        request.setResponseCode(error.code)
    setNoCache(request)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    for name, value in error.headers.items():
        request.setHeader(name, value)
    body = (error.message + "\n").encode("utf-8", "replace")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body
