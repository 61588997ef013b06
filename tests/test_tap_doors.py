"""The SSH and git:// options, and the listeners makeService builds for them."""

from __future__ import annotations

import os
import stat

from twisted.application.service import IService
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from gitserve.gitd.daemon import GitDaemonFactory
from gitserve.ssh.server import GitSSHFactory
from gitserve.tap import Options, makeService
from tests.fakes import FakeServiceReactor, scratchDirectory


class DoorOptionsTests(SynchronousTestCase):
    """--listen-ssh, --ssh-host-key, --ssh-keys and --listen-git build their doors."""

    def setUp(self) -> None:
        self.root = scratchDirectory(self)
        self.keys = self.root / "keys"
        self.keys.mkdir()
        self.hostKey = self.root / "host_key"
        self.reactor = FakeServiceReactor()

    def build(self, *args: str) -> IService:
        options = Options()
        options.parseOptions(["--root", str(self.root), "--listen", "tcp:0", *args])
        return makeService(options, reactor=self.reactor)

    def test_doorsListen(self) -> None:
        """--listen-ssh and --listen-git listen with their doors; the host key is created 0600."""
        service = self.build(
            "--listen-ssh",
            "tcp:2222",
            "--listen-git",
            "tcp:9418",
            "--listen-git",
            "tcp:9419",
            "--ssh-keys",
            str(self.keys),
            "--ssh-host-key",
            str(self.hostKey),
        )
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        factories = {port: factory for port, factory, _, _ in self.reactor.tcpServers}
        self.assertIsInstance(factories[2222], GitSSHFactory)
        self.assertIsInstance(factories[9418], GitDaemonFactory)
        self.assertIs(factories[9418], factories[9419])
        self.assertEqual(stat.S_IMODE(os.stat(self.hostKey).st_mode), 0o600)

    def test_sshNeedsKeys(self) -> None:
        """--listen-ssh without --ssh-keys (or with a missing directory) is a usage error."""
        with self.assertRaises(usage.UsageError):
            self.build("--listen-ssh", "tcp:2222")
        with self.assertRaises(usage.UsageError):
            self.build("--listen-ssh", "tcp:2222", "--ssh-keys", str(self.root / "nope"))

    def test_badEndpointNamesTheOption(self) -> None:
        """A --listen-git that does not parse is a usage error naming --listen-git."""
        with self.assertRaises(usage.UsageError) as raised:
            self.build("--listen-git", "nonsense:1")
        self.assertIn("--listen-git", str(raised.exception))

    def test_unreadableHostKeyIsAUsageError(self) -> None:
        """A host key file that is not a key stops start-up with a usage error."""
        self.hostKey.write_text("not a key\n")
        with self.assertRaises(usage.UsageError) as raised:
            self.build(
                "--listen-ssh",
                "tcp:2222",
                "--ssh-keys",
                str(self.keys),
                "--ssh-host-key",
                str(self.hostKey),
            )
        self.assertIn("--ssh-host-key", str(raised.exception))
