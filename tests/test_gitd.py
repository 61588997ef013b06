"""
The git:// door in unit: the request packet read as git daemon reads it, and
a connection over a StringTransport and a core whose git children are fakes.
"""

from __future__ import annotations

from twisted.internet.protocol import connectionDone
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gitserve.core.jobs import JobLimiter
from gitserve.core.pktline import pktLine
from gitserve.gitd.daemon import BadRequest, GitDaemonFactory, parseRequest
from tests.fakes import CLIENT, FakeProcessReactor, makeCore, makeRepository, scratchDirectory


class ParseRequestTests(SynchronousTestCase):
    """parseRequest reads git daemon's request line, host= and the extra parameters."""

    def test_v0(self) -> None:
        """git's v0 request: service, path, host."""
        request = parseRequest(b"git-upload-pack /app.git\0host=example.com:9418\0")
        self.assertEqual(
            (request.service, request.path, request.host, request.gitProtocol),
            (b"git-upload-pack", b"/app.git", b"example.com:9418", None),
        )

    def test_v2ExtraParameters(self) -> None:
        """Parameters after a second NUL become GIT_PROTOCOL, joined with ':'."""
        request = parseRequest(
            b"git-upload-pack /app.git\0host=h\0\0version=2\0object-format=sha1\0"
        )
        self.assertEqual(request.gitProtocol, b"version=2:object-format=sha1")
        request = parseRequest(b"git-upload-pack /app.git\0\0version=2\0")
        self.assertEqual((request.host, request.gitProtocol), (None, b"version=2"))

    def test_newlineAndNoHost(self) -> None:
        """A trailing newline is dropped; host= is optional."""
        request = parseRequest(b"git-upload-pack /app.git\n")
        self.assertEqual((request.path, request.host), (b"/app.git", None))

    def test_refused(self) -> None:
        """Unknown services, junk instead of host=, a host that is not a host name."""
        for payload in [
            b"git-upload-packx /app.git\0",
            b"upload-pack /app.git\0",
            b"git-upload-pack\0",
            b"git-upload-pack /a\0user=x\0",
            b"git-upload-pack /a\0host=h\0junk\0",
            b"git-upload-pack /a\0host=h/../x\0",
            b"git-upload-pack /a\0host=h h\0",
            b"git-upload-pack /a\0host=-h\0",
        ]:
            with self.assertRaises(BadRequest, msg=payload):
                parseRequest(payload)


DENIED = b"ERR access denied or repository not exported: "


class DaemonProtocolTests(SynchronousTestCase):
    """A git:// connection: refusals as git daemon words them, upload-pack through the core."""

    def setUp(self) -> None:
        self.root = scratchDirectory(self)
        makeRepository(self.root / "app.git")
        makeRepository(self.root / "off.git", "[daemon]\n\tuploadpack = false\n")
        self.reactor = FakeProcessReactor()
        self.jobs = JobLimiter(1, 0)

    def connect(self, payload: bytes, **policy: bool) -> StringTransport:
        factory = GitDaemonFactory(
            makeCore(self.root, self.reactor, jobs=self.jobs, **policy), self.reactor, 60.0
        )
        protocol = factory.buildProtocol(CLIENT)
        assert protocol is not None
        transport = StringTransport(peerAddress=CLIENT)
        protocol.makeConnection(transport)
        protocol.dataReceived(pktLine(payload))
        self.factory = factory
        self.protocol = protocol
        return transport

    def test_uploadPackStateful(self) -> None:
        """upload-pack runs without --stateless-rpc, as user daemon, with the v2 parameters."""
        transport = self.connect(b"git-upload-pack /app.git\0host=127.0.0.1\0\0version=2\0")
        [child] = self.reactor.spawned
        self.assertNotIn("--stateless-rpc", child.args)
        self.assertEqual(child.args[-1], str((self.root / "app.git").resolve()))
        self.assertEqual(child.env["GIT_PROTOCOL"], "version=2")
        self.assertEqual(child.env["REMOTE_USER"], "daemon")
        self.protocol.dataReceived(b"0000")
        self.assertEqual(bytes(child.stdin), b"0000")
        child.protocol.outReceived(b"0000")  # type: ignore[attr-defined]
        child.exit(0)
        self.assertEqual(transport.value(), b"0000")
        self.assertTrue(transport.disconnecting)

    def test_receivePackRefused(self) -> None:
        """A push gets git daemon's answer, and no git runs."""
        transport = self.connect(b"git-receive-pack /app.git\0host=h\0")
        self.assertEqual(transport.value(), pktLine(DENIED + b"/app.git\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.spawned, [])

    def test_uploadArchiveWhereAllowed(self) -> None:
        """upload-archive runs where daemon.uploadarch is true: stateful, on the resolved path."""
        makeRepository(self.root / "archived.git", "[daemon]\n\tuploadarch = true\n")
        self.connect(b"git-upload-archive /archived.git\0host=h\0")
        [child] = self.reactor.spawned
        self.assertEqual(
            child.args,
            ["/usr/bin/git", "upload-archive", str((self.root / "archived.git").resolve())],
        )
        self.assertEqual(child.env["REMOTE_USER"], "daemon")

    def test_uploadArchiveRefusedAsGitDaemon(self) -> None:
        """Without daemon.uploadarch, or not exported under --require-export-ok: one answer."""
        makeRepository(self.root / "archived.git", "[daemon]\n\tuploadarch = true\n")
        for path, requireExportOk in ((b"/app.git", False), (b"/archived.git", True)):
            transport = self.connect(
                b"git-upload-archive " + path + b"\0host=h\0", requireExportOk=requireExportOk
            )
            self.assertEqual(transport.value(), pktLine(DENIED + path + b"\n"), path)
        self.assertEqual(self.reactor.spawned, [])

    def test_sameAnswerForEveryRefusal(self) -> None:
        """Missing, traversal, ~user, ~/, relative, daemon.uploadpack=false: one answer."""
        for path in [
            b"/missing.git",
            b"/../app.git",
            b"~root/app.git",
            # git daemon refuses every ~ form without --user-path, ~/ too.
            b"~/app.git",
            b"app.git",
            b"/off.git",
        ]:
            transport = self.connect(b"git-upload-pack " + path + b"\0host=h\0")
            self.assertEqual(transport.value(), pktLine(DENIED + path + b"\n"), path)
        self.assertEqual(self.reactor.spawned, [])

    def test_requireExportOk(self) -> None:
        """--require-export-ok: only repositories with git-daemon-export-ok are served."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0", requireExportOk=True)
        self.assertEqual(transport.value(), pktLine(DENIED + b"/app.git\n"))
        (self.root / "app.git" / "git-daemon-export-ok").touch()
        self.connect(b"git-upload-pack /app.git\0host=h\0", requireExportOk=True)
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_privateServesNothing(self) -> None:
        """--private: git:// has no user to prove, so nothing is served."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0", private=True)
        self.assertEqual(transport.value(), pktLine(DENIED + b"/app.git\n"))

    def test_busy(self) -> None:
        """With every slot taken, the client gets the busy message as an ERR packet."""
        self.connect(b"git-upload-pack /app.git\0host=h\0")
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        self.assertIn(b"ERR The server is busy", transport.value())

    def test_badRequestClosesSilently(self) -> None:
        """Not a git request: the connection is closed without an answer, as git daemon does."""
        transport = self.connect(b"GET / HTTP/1.1\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_gitFailsBeforeWriting(self) -> None:
        """git failing before it wrote anything: its complaint as an ERR packet."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        child.protocol.errReceived(b"fatal: something broke\n")  # type: ignore[attr-defined]
        child.exit(128)
        self.assertEqual(transport.value(), pktLine(b"ERR fatal: something broke\n"))

    def test_gitFailsAfterWriting(self) -> None:
        """git failing mid-answer: the connection is aborted, never closed as if complete."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        child.protocol.outReceived(b"0032" + b"x" * 46)  # type: ignore[attr-defined]
        child.exit(128)
        self.assertTrue(transport.disconnected)

    def test_clientLeavingEndsGit(self) -> None:
        """A client that goes away ends git."""
        self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        self.protocol.connectionLost(connectionDone)
        self.reactor.advance(10)
        self.assertIn("TERM", child.signals)

    def test_idleTimeout(self) -> None:
        """A connection with nothing sent either way for the idle timeout is dropped."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        self.reactor.advance(61)
        self.assertTrue(transport.disconnected)

    def test_stdinBackPressure(self) -> None:
        """A git that does not read its stdin pauses the socket, and resumes it."""
        self.reactor.pipeCapacity = 10
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        self.protocol.dataReceived(b"x" * 100)
        self.assertEqual(transport.producerState, "paused")
        child.readStdin()
        self.assertEqual(transport.producerState, "producing")

    def test_outputPacedBySocket(self) -> None:
        """git's child is the socket's producer while it runs, and leaves it when it ends."""
        transport = self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        self.assertIs(transport.producer, child.protocol)
        transport.producer.pauseProducing()
        self.assertTrue(child.paused)
        child.exit(0)
        self.assertIsNone(transport.producer)

    def test_drainWaitsForRunningGit(self) -> None:
        """A shutdown closes idle connections now and waits for the one running git."""
        busy = self.connect(b"git-upload-pack /app.git\0host=h\0")
        [child] = self.reactor.spawned
        busyProtocol = self.protocol
        idle = StringTransport(peerAddress=CLIENT)
        idleProtocol = self.factory.buildProtocol(CLIENT)
        assert idleProtocol is not None
        idleProtocol.makeConnection(idle)
        drained = self.factory.drainConnections()
        self.assertTrue(idle.disconnecting)
        self.assertFalse(busy.disconnecting)
        idleProtocol.connectionLost(connectionDone)
        self.assertNoResult(drained)
        child.exit(0)
        self.assertTrue(busy.disconnecting)
        busyProtocol.connectionLost(connectionDone)
        self.successResultOf(drained)
