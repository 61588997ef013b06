"""
Refusals: what the core says when it will not do what was asked.

They carry a message for the git user and nothing about any transport: no
status code, no header. Each front door turns them into its own form of "no"
in one place (an HTTP status in L{gitserve.http.errors}, an C{ERR} packet or
an SSH exit status elsewhere), so a policy decision reads the same whichever
door the request came through.
"""

from __future__ import annotations


class Refusal(Exception):
    """
    A request refused, with one line the git user is shown.

    The message never names a path on the server: clients see it verbatim.
    """

    defaultMessage = "refused"

    def __init__(self, message: str | None = None) -> None:
        self.message = message if message is not None else self.defaultMessage
        super().__init__(self.message)


class NotFound(Refusal):
    """No such repository, or one the caller may not learn exists."""

    defaultMessage = "Not Found"


class Forbidden(Refusal):
    """The repository exists and the caller may know it, but not do this."""

    defaultMessage = "Forbidden"


class AuthenticationRequired(Refusal):
    """Refused to an anonymous caller; an authenticated one might be allowed."""

    defaultMessage = "Authentication required"


class InvalidRequest(Refusal):
    """Input that is not what git sends: bad pkt-lines, encodings, parameters."""

    defaultMessage = "Bad Request"


class TooLarge(Refusal):
    """Input past a configured size limit."""

    defaultMessage = "Request Entity Too Large"


class Busy(Refusal):
    """
    No job slot and no room to wait for one.

    @ivar retryAfter: seconds the client is asked to wait before retrying.
    """

    defaultMessage = "Service Unavailable"

    def __init__(self, message: str | None = None, retryAfter: int | None = None) -> None:
        super().__init__(message)
        self.retryAfter = retryAfter
