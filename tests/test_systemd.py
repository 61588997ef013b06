"""Unit tests for gitserve.app.systemd: sd_notify over a datagram socket the test owns."""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from gitserve.app.systemd import SystemdNotifier, SystemdNotifyService


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"gitserve-test-{os.getpid()}-{id(self)}"
            self.sock.bind("\0" + name)
            self.environ = {"NOTIFY_SOCKET": "@" + name}
        else:
            self.dir = tempfile.TemporaryDirectory()
            path = os.path.join(self.dir.name, "notify")
            self.sock.bind(path)
            self.environ = {"NOTIFY_SOCKET": path}
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        found = []
        while True:
            try:
                found.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return found

    def close(self) -> None:
        self.sock.close()


class SystemdNotifierTests(SynchronousTestCase):
    def test_pathSocket(self) -> None:
        """A message reaches a socket named by a filesystem path."""
        target = NotifySocket()
        self.addCleanup(target.close)
        self.assertTrue(SystemdNotifier(target.environ).notify("READY=1", "STATUS=ok"))
        self.assertEqual(target.messages(), ["READY=1\nSTATUS=ok"])

    def test_abstractSocket(self) -> None:
        """A leading @ names an abstract-namespace socket."""
        target = NotifySocket(abstract=True)
        self.addCleanup(target.close)
        self.assertTrue(SystemdNotifier(target.environ).notify("STOPPING=1"))
        self.assertEqual(target.messages(), ["STOPPING=1"])

    def test_noSocketIsANoop(self) -> None:
        """Outside systemd nothing is sent and nothing fails."""
        notifier = SystemdNotifier({})
        self.assertFalse(notifier.enabled)
        self.assertFalse(notifier.notify("READY=1"))

    def test_vanishedSocketIsLoggedNotRaised(self) -> None:
        """A notify socket that went away does not stop the daemon."""
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "/nonexistent/notify"})
        self.assertTrue(notifier.enabled)
        self.assertFalse(notifier.notify("READY=1"))


class SystemdNotifyServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.target = NotifySocket()
        self.addCleanup(self.target.close)
        self.notifier = SystemdNotifier(self.target.environ)

    def test_readyOnlyOnceListening(self) -> None:
        """READY=1 waits for the listeners; STOPPING=1 comes at stop."""
        listening: Deferred = Deferred()
        service = SystemdNotifyService(self.notifier, lambda: listening, "serving /srv/git")
        service.startService()
        self.assertEqual(self.target.messages(), [])
        listening.callback(None)
        self.assertEqual(self.target.messages(), ["READY=1\nSTATUS=serving /srv/git"])
        service.stopService()
        self.assertEqual(self.target.messages()[0].split("\n")[0], "STOPPING=1")

    def test_noReadyWhenListeningFails(self) -> None:
        """A listener that fails means no READY=1, only a status saying why."""
        service = SystemdNotifyService(
            self.notifier, lambda: fail(OSError("address in use")), "serving"
        )
        service.startService()
        [message] = self.target.messages()
        self.assertNotIn("READY=1", message)
        self.assertIn("address in use", message)
