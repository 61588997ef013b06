"""
Refusals that map to HTTP statuses, and the one function that renders them.

Resources raise these; L{renderError} is the only place that turns one into a
response, so every refusal has the same shape: a status, a C{text/plain}
message that git shows to the user, and no-cache headers.
"""

from __future__ import annotations

from twisted.web.server import Request

from gitserve.headers import setNoCache


class HTTPError(Exception):
    """
    A request refused with an HTTP status and a message for the git user.

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


class BadRequest(HTTPError):
    code = 400
    defaultMessage = "Bad Request"


class Unauthorized(HTTPError):
    code = 401
    defaultMessage = "Authentication required"


class Forbidden(HTTPError):
    code = 403
    defaultMessage = "Forbidden"


class NotFound(HTTPError):
    code = 404
    defaultMessage = "Not Found"


class MethodNotAllowed(HTTPError):
    code = 405
    defaultMessage = "Method Not Allowed"


class RequestTooLarge(HTTPError):
    code = 413
    defaultMessage = "Request Entity Too Large"


class UnsupportedMediaType(HTTPError):
    code = 415
    defaultMessage = "Unsupported Media Type"


class ServiceUnavailable(HTTPError):
    code = 503
    defaultMessage = "Service Unavailable"


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
