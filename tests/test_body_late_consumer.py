"""A request body that is complete before its consumer arrives (auth or a job queue delayed git)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gitserve.body import RequestBody


class Sink(StringTransport):
    """A consumer that keeps what it is written."""


class LateConsumerTests(SynchronousTestCase):
    def test_streamToAfterTheWholeBodyArrived(self) -> None:
        """streamTo on a complete body writes it all and returns a fired Deferred."""
        body = RequestBody(StringTransport(), limit=1024, contentEncoding=None)
        body.dataReceived(b"0000")
        body.allReceived()
        sink = Sink()
        self.assertIsNone(self.successResultOf(body.streamTo(sink)))
        self.assertEqual(sink.value(), b"0000")

    def test_readAllAfterTheWholeBodyArrived(self) -> None:
        """readAll on a complete body gives the body."""
        body = RequestBody(StringTransport(), limit=1024, contentEncoding=None)
        body.dataReceived(b"0009done\n")
        body.allReceived()
        self.assertEqual(self.successResultOf(body.readAll()), b"0009done\n")
