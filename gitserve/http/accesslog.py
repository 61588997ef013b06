"""
The access log: one line per request in the combined log format.

Twisted's own combined formatter quotes the client address and always writes
C{-} for the user; log analysers and fail2ban filters expect Apache's exact
layout, with the authenticated user in the third field, so gitserve writes
that instead.
"""

from __future__ import annotations

from typing import Any

# Bytes that would let a client forge or split log lines: controls, DEL,
# quotes and backslashes, escaped as Apache escapes them (\xHH).
_SAFE = {b for b in range(0x20, 0x7F)} - {ord('"'), ord("\\")}


def escape(value: bytes | str | None) -> str:
    """A log field: C{-} when empty, non-printable bytes as C{\\xHH}."""
    if not value:
        return "-"
    if isinstance(value, str):
        value = value.encode("utf-8")
    return "".join(chr(b) if b in _SAFE else f"\\x{b:02x}" for b in value)


def accessLogFormatter(timestamp: str, request: Any) -> str:
    """
    Format one request as Apache's combined log format.

    @param timestamp: the request time as Twisted's HTTPFactory formats it
        (C{[21/Nov/2026:11:49:28 +0000]}).
    @param request: a finished request; its C{authenticatedUser}, when set,
        is the user that authentication verified (never a name merely
        claimed in a header).
    """
    address = request.getClientAddress()
    host = getattr(address, "host", None) or "-"
    user = getattr(request, "authenticatedUser", None)
    line = (
        f"{escape(host)} - {escape(user)} {timestamp} "
        f'"{escape(request.method)} {escape(request.uri)} {escape(request.clientproto)}" '
        f"{int(request.code)} {request.sentLength or '-'} "
        f'"{escape(request.getHeader(b"referer"))}" "{escape(request.getHeader(b"user-agent"))}"'
    )
    return line
