"""Unit tests for gitserve.http.accesslog: the combined log format with the verified user."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from gitserve.http.accesslog import accessLogFormatter

STAMP = "[21/Nov/2026:11:49:28 +0000]"


def finishedRequest(user: str | None, agent: bytes, uri: bytes) -> DummyRequest:
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", "192.0.2.7", 40000)
    request.method = b"POST"
    request.uri = uri
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 1234
    request.requestHeaders.addRawHeader(b"User-Agent", agent)
    request.requestHeaders.addRawHeader(b"Authorization", b"Basic bWFsbG9yeTp4")  # mallory:x
    request.authenticatedUser = user
    return request


class AccessLogTests(SynchronousTestCase):
    def test_apacheCombinedWithVerifiedUser(self) -> None:
        """The line is Apache's combined format, naming the user authentication verified."""
        line = accessLogFormatter(STAMP, finishedRequest("alice", b"git/2.39.5", b"/p.git/x"))
        self.assertEqual(
            line,
            f'192.0.2.7 - alice {STAMP} "POST /p.git/x HTTP/1.1" 200 1234 "-" "git/2.39.5"',
        )

    def test_claimedUserIsNotLogged(self) -> None:
        """A name sent in Authorization but not verified is not logged as the user."""
        line = accessLogFormatter(STAMP, finishedRequest(None, b"git/2.39.5", b"/"))
        self.assertIn(" - - [", line)
        self.assertNotIn("mallory", line)

    def test_hostileFieldsCannotForgeLines(self) -> None:
        """Quotes, backslashes and control bytes from the client are escaped as \\xHH."""
        line = accessLogFormatter(STAMP, finishedRequest("a", b'x"\x01\\', b"/a\r\nb"))
        self.assertNotIn("\n", line)
        self.assertIn('"x\\x22\\x01\\x5c"', line)
        self.assertIn("/a\\x0d\\x0ab", line)
