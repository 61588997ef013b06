"""
The C{GIT_PROTOCOL} value a client asks for (C{Git-Protocol} over HTTP, an
SSH C{env} request, git://'s extra parameters): checked before it reaches
git's environment, and read for the protocol version.
"""

from __future__ import annotations

import re

from gitserve.core.errors import InvalidRequest

# The value git's fast path for the v2 capability advertisement answers.
VERSION_2 = b"version=2"

# Colon-separated key[=value] items (gitprotocol-v2(5)); the value becomes
# GIT_PROTOCOL in git's environment, so it is held to that shape and length.
MAX_GIT_PROTOCOL = 256
_GIT_PROTOCOL = re.compile(
    rb"[A-Za-z0-9._-]+(=[A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+(=[A-Za-z0-9._-]*)?)*"
)
_PROTOCOL_VERSION = re.compile(rb"(?:^|:)version=([0-9]+)(?::|$)")


def checkGitProtocol(value: bytes) -> bytes:
    """
    C{value}, when it is the colon-separated C{key=value} list git sends.

    @raise InvalidRequest: too long, or anything else.
    """
    if len(value) > MAX_GIT_PROTOCOL or not _GIT_PROTOCOL.fullmatch(value):
        raise InvalidRequest("Invalid Git-Protocol header")
    return value


def protocolVersion(gitProtocol: bytes | None) -> int:
    """The protocol version a C{GIT_PROTOCOL} value asks for (0 when none)."""
    match = _PROTOCOL_VERSION.search(gitProtocol or b"")
    return int(match.group(1)) if match else 0
