"""A request body that is complete before its consumer arrives (auth or a job queue delayed git)."""

from __future__ import annotations

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from .fakes import cappedBody


class Sink(StringTransport):
    """A consumer that keeps what it is written."""


class LateConsumerTests(SynchronousTestCase):
    def test_streamToAfterTheWholeBodyArrived(self) -> None:
        """streamTo on a complete body writes it all and returns a fired Deferred."""
        body = cappedBody(StringTransport(), 1024, None)
        body.dataReceived(b"0000")
        body.allReceived()
        sink = Sink()
        self.assertEqual(self.successResultOf(body.streamTo(sink)), 4)
        self.assertEqual(sink.value(), b"0000")

    def test_readAllAfterTheWholeBodyArrived(self) -> None:
        """readAll on a complete body gives the body."""
        body = cappedBody(StringTransport(), 1024, None)
        body.dataReceived(b"0009done\n")
        body.allReceived()
        self.assertEqual(self.successResultOf(body.readAll()), b"0009done\n")
