"""
The SSH door in unit: git-shell's command parsing, the keydir and its
checker, the host key, and a session channel driven with a fake connection
over a core whose git children are fakes.
"""

from __future__ import annotations

import os
import stat
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.cred.credentials import SSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gitserve.core.duplex import DuplexStdin, segmentsOfPath
from gitserve.core.errors import InvalidRequest
from gitserve.core.jobs import JobLimiter
from gitserve.core.policy import Service
from gitserve.ssh.command import CommandRefused, parseCommand, sqDequote
from gitserve.ssh.keys import (
    KeyDirectory,
    KeyDirectoryChecker,
    KeyOwner,
    fingerprint,
    loadOrCreateHostKey,
    userOfKeyFile,
)
from gitserve.ssh.session import GitAvatar, GitSessionChannel, SSHDoor
from tests.fakes import (
    FakeProcessReactor,
    FakeSSHConnection,
    makeCore,
    makeRepository,
    scratchDirectory,
)


def newKey() -> Key:
    """A fresh ed25519 key."""
    return Key(Ed25519PrivateKey.generate())


ALICE = newKey()


# The command, as git-shell reads it ---------------------------------------------


class CommandTests(SynchronousTestCase):
    """parseCommand accepts what git sends and nothing git-shell would refuse."""

    def test_gitSendsThese(self) -> None:
        """The forms git sends (dash, space, --upload-pack verbatim) give a service and a path."""
        cases = {
            b"git-upload-pack '/app.git'": (Service.UPLOAD_PACK, b"/app.git"),
            b"git-receive-pack 'team/app.git'": (Service.RECEIVE_PACK, b"team/app.git"),
            b"git upload-pack '/app.git'": (Service.UPLOAD_PACK, b"/app.git"),
            b"git receive-pack '~alice/x'": (Service.RECEIVE_PACK, b"~alice/x"),
            b"git-upload-pack '/it'\\''s'": (Service.UPLOAD_PACK, b"/it's"),
            b"git-upload-pack '/wow'\\!''": (Service.UPLOAD_PACK, b"/wow!"),
            b"git-upload-archive '/app.git'": (Service.UPLOAD_ARCHIVE, b"/app.git"),
            b"git upload-archive 'app.git'": (Service.UPLOAD_ARCHIVE, b"app.git"),
        }
        for command, (service, path) in cases.items():
            parsed = parseCommand(command)
            self.assertEqual((parsed.service, parsed.path), (service, path), command)

    def test_injectionRefused(self) -> None:
        """Shell syntax outside the quotes, options, other programs: all refused."""
        for command in [
            b"git-upload-pack '/r.git'; touch /tmp/x",
            b"git-upload-pack '/r.git' && id",
            b"git-upload-pack `id`",
            b"git-upload-pack $(id)",
            b"git-upload-pack '/r.git'`id`",
            b"git-upload-pack /r.git",
            b'git-upload-pack "/r.git"',
            b"git-upload-pack '--upload-pack=touch /tmp/x'",
            b"git-upload-pack '-h'",
            b"git-upload-pack",
            b"git-upload-pack ",
            b"git-upload-pack '/r.git",
            b"git-upload-pack '/a' '/b'",
            b"git-upload-pack '/r.git'\\x'",
            b"git-upload-pack '/r\0.git'",
            b"git-upload-packer '/r.git'",
            b"git  upload-pack '/r.git'",
            b"rm -rf /",
            b"sh -c 'git-upload-pack /r.git'",
            b"",
            b"git-upload-archive '--remote=x'",
            b"git-upload-archive '/r.git' --exec=x",
        ]:
            with self.assertRaises(CommandRefused, msg=command):
                parseCommand(command)

    def test_quotedMetacharactersStayInThePath(self) -> None:
        """Backticks, $(), ;, newlines inside the quotes are just characters of a path."""
        parsed = parseCommand(b"git-upload-pack '/r.git; `id` $(id)\n'")
        self.assertEqual(parsed.path, b"/r.git; `id` $(id)\n")

    def test_sqDequoteIsGits(self) -> None:
        """sqDequote agrees with git's sq_dequote on its edge cases."""
        self.assertEqual(sqDequote(b"'a'"), b"a")
        self.assertEqual(sqDequote(b"''"), b"")
        self.assertEqual(sqDequote(b"'a'\\''b'"), b"a'b")
        self.assertIsNone(sqDequote(b"a"))
        self.assertIsNone(sqDequote(b"'a'\\'b'"))
        self.assertIsNone(sqDequote(b"'a'\\x'b'"))
        self.assertIsNone(sqDequote(b"'a'b"))
        self.assertIsNone(sqDequote(b"'a"))


class PathTests(SynchronousTestCase):
    """segmentsOfPath maps the path forms git sends under the root, and refuses ~user."""

    def test_forms(self) -> None:
        """/x, x, ~/x, /team/x/ name repositories from the root; ~user is refused."""
        self.assertEqual(segmentsOfPath(b"/app.git"), [b"app.git"])
        self.assertEqual(segmentsOfPath(b"app.git"), [b"app.git"])
        self.assertEqual(segmentsOfPath(b"~/app.git"), [b"app.git"])
        self.assertEqual(segmentsOfPath(b"~/team/app.git/"), [b"team", b"app.git"])
        # Still resolution's to refuse: ~/../x is traversal like /../x.
        self.assertEqual(segmentsOfPath(b"~/../x"), [b"..", b"x"])
        self.assertEqual(segmentsOfPath(b"/team/app.git/"), [b"team", b"app.git"])
        self.assertEqual(segmentsOfPath(b"/"), [])
        # Traversal is left to resolution, which refuses it.
        self.assertEqual(segmentsOfPath(b"/../x"), [b"..", b"x"])
        for path in (b"~alice/x", b"~alice", b"~root/"):
            with self.assertRaises(InvalidRequest, msg=path):
                segmentsOfPath(path)
        with self.assertRaises(InvalidRequest):
            segmentsOfPath(b"/" * 5000)


class DuplexStdinTests(SynchronousTestCase):
    """The client's stream reaches git's stdin in order, paced by git."""

    def test_earlyInputThenStream(self) -> None:
        """What came before git started goes first; EOF fires with the byte count."""
        paused: list[str] = []
        stdin = DuplexStdin(lambda: paused.append("pause"), lambda: paused.append("resume"))
        stdin.feed(b"early ")
        consumer = StringTransport()
        done = stdin.streamTo(consumer)
        stdin.feed(b"late")
        stdin.finish()
        self.assertEqual(consumer.value(), b"early late")
        self.assertEqual(self.successResultOf(done), 10)
        self.assertIsNone(consumer.producer)

    def test_earlyFloodPauses(self) -> None:
        """A client sending much before git runs is paused, not buffered without bound."""
        paused: list[str] = []
        stdin = DuplexStdin(lambda: paused.append("pause"), lambda: paused.append("resume"))
        stdin.feed(b"x" * (70 * 1024))
        self.assertEqual(paused, ["pause"])

    def test_clientLeaves(self) -> None:
        """A client leaving fails the stream, so git sees its input end."""
        stdin = DuplexStdin(lambda: None, lambda: None)
        done = stdin.streamTo(StringTransport())
        stdin.fail()
        self.failureResultOf(done)


# Keys ------------------------------------------------------------------------------


class KeyDirectoryTests(SynchronousTestCase):
    """The keydir: users by file name, several keys a file, re-read when it changes."""

    def setUp(self) -> None:
        self.path = scratchDirectory(self) / "keys"
        self.path.mkdir()
        self.keys = KeyDirectory(self.path)

    def test_userNames(self) -> None:
        """The user is the file name up to .pub or the first @; odd names are no users."""
        self.assertEqual(userOfKeyFile("alice.pub"), "alice")
        self.assertEqual(userOfKeyFile("alice@home.pub"), "alice")
        self.assertEqual(userOfKeyFile("a.b-c@x@y.pub"), "a.b-c")
        self.assertIsNone(userOfKeyFile("@home.pub"))
        self.assertIsNone(userOfKeyFile("-rf.pub"))
        self.assertIsNone(userOfKeyFile("alice"))

    def test_layout(self) -> None:
        """Subdirectories, alice@home.pub and several keys in a file all log in their user."""
        one, two, three = newKey(), newKey(), newKey()
        (self.path / "laptops").mkdir()
        (self.path / "laptops" / "alice@home.pub").write_bytes(one.public().toString("openssh"))
        (self.path / "bob.pub").write_bytes(
            two.public().toString("openssh")
            + b" bob@a\n\n# comment\nnot a key\n"
            + three.public().toString("openssh")
            + b"\n"
        )
        self.assertEqual(self.keys.ownerOf(one.public().blob()), "alice")
        self.assertEqual(self.keys.ownerOf(two.public().blob()), "bob")
        self.assertEqual(self.keys.ownerOf(three.public().blob()), "bob")
        self.assertIsNone(self.keys.ownerOf(newKey().public().blob()))

    def test_reReadOnChange(self) -> None:
        """A key added, then the file removed, takes effect at the next login."""
        key = newKey()
        self.assertIsNone(self.keys.ownerOf(key.public().blob()))
        (self.path / "carol.pub").write_bytes(key.public().toString("openssh"))
        self.assertEqual(self.keys.ownerOf(key.public().blob()), "carol")
        (self.path / "carol.pub").unlink()
        self.assertIsNone(self.keys.ownerOf(key.public().blob()))

    def test_sharedKeyLogsInNobody(self) -> None:
        """One key listed for two users logs in neither."""
        key = newKey().public().toString("openssh")
        (self.path / "alice.pub").write_bytes(key)
        (self.path / "bob.pub").write_bytes(key)
        self.assertEqual(self.keys.owners(), {})


class CheckerTests(SynchronousTestCase):
    """The checker logs in the key's owner, whatever the SSH user name."""

    def setUp(self) -> None:
        path = scratchDirectory(self)
        (path / "alice.pub").write_bytes(ALICE.public().toString("openssh"))
        self.checker = KeyDirectoryChecker(KeyDirectory(path))

    def credentials(self, key: Key, sign: bool, data: bytes = b"session data") -> SSHPrivateKey:
        blob = key.public().blob()
        signature = key.sign(data) if sign else None
        return SSHPrivateKey(b"git", b"ssh-ed25519", blob, data, signature)

    def test_ownerWithFingerprint(self) -> None:
        """A valid signature by alice's key logs in alice, with the key's fingerprint."""
        owner = self.successResultOf(self.checker.requestAvatarId(self.credentials(ALICE, True)))
        self.assertEqual(owner, KeyOwner("alice", fingerprint(ALICE.public().blob())))
        self.assertTrue(owner.fingerprint.startswith("SHA256:"))

    def test_queryBeforeSigning(self) -> None:
        """A known key without a signature yet is answered 'would do' (ValidPublicKey)."""
        self.failureResultOf(
            self.checker.requestAvatarId(self.credentials(ALICE, False)), ValidPublicKey
        )

    def test_unknownKey(self) -> None:
        """An unknown key fails authentication, signed or not."""
        for sign in (False, True):
            self.failureResultOf(
                self.checker.requestAvatarId(self.credentials(newKey(), sign)), UnauthorizedLogin
            )

    def test_badSignature(self) -> None:
        """A signature over other data fails."""
        credentials = self.credentials(ALICE, True)
        forged = SSHPrivateKey(
            b"git", b"ssh-ed25519", credentials.blob, b"other data", credentials.signature
        )
        self.failureResultOf(self.checker.requestAvatarId(forged), UnauthorizedLogin)


class HostKeyTests(SynchronousTestCase):
    """The host key is created on first start, private, and kept after."""

    def test_createdOnceMode0600(self) -> None:
        """A missing host key file is created (ed25519, 0600) and read back the same next time."""
        path = scratchDirectory(self) / "host_key"
        key = loadOrCreateHostKey(path)
        self.assertEqual(key.sshType(), b"ssh-ed25519")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(loadOrCreateHostKey(path).public().blob(), key.public().blob())

    def test_publicKeyRefused(self) -> None:
        """A public key given as the host key is an error, not a server without a key."""
        path = scratchDirectory(self) / "host_key.pub"
        path.write_bytes(ALICE.public().toString("openssh"))
        with self.assertRaises(BadKeyError):
            loadOrCreateHostKey(path)


# A session channel ---------------------------------------------------------------------


class SessionTests(SynchronousTestCase):
    """A session channel answers requests through the core, as HTTP does."""

    def setUp(self) -> None:
        self.root = scratchDirectory(self)
        makeRepository(self.root / "app.git")
        self.reactor = FakeProcessReactor()
        self.jobs = JobLimiter(1, 0)
        self.core = makeCore(self.root, self.reactor, jobs=self.jobs)
        self.channel = self.openChannel()

    def openChannel(self, user: str = "alice") -> GitSessionChannel:
        avatar = GitAvatar(KeyOwner(user, "SHA256:abc"), SSHDoor(self.core, self.reactor))
        channel = GitSessionChannel(remoteWindow=1 << 20, remoteMaxPacket=32768, avatar=avatar)
        channel.conn = FakeSSHConnection()  # type: ignore[assignment]
        return channel

    @property
    def conn(self) -> FakeSSHConnection:
        return self.channel.conn  # type: ignore[return-value]

    def request(self, kind: bytes, data: bytes, channel: GitSessionChannel | None = None) -> bool:
        channel = channel or self.channel
        result = channel.requestReceived(kind, data)
        self.reactor.advance(0)
        return bool(result)

    def exitStatus(self, channel: GitSessionChannel | None = None) -> int | None:
        conn: FakeSSHConnection = (channel or self.channel).conn  # type: ignore[assignment]
        for kind, data in conn.requests:
            if kind == b"exit-status":
                return int(struct.unpack(">L", data)[0])
        return None

    def test_execRunsStatefulGit(self) -> None:
        """exec spawns stateful git (no --stateless-rpc) with GIT_PROTOCOL and the user."""
        self.assertTrue(self.request(b"env", NS(b"LANG") + NS(b"C.UTF-8")))
        self.assertTrue(self.request(b"env", NS(b"GIT_PROTOCOL") + NS(b"version=2")))
        self.assertTrue(self.request(b"exec", NS(b"git-upload-pack '/app.git'")))
        [child] = self.reactor.spawned
        self.assertEqual(
            child.args,
            ["/usr/bin/git", "upload-pack", "--strict", str((self.root / "app.git").resolve())],
        )
        self.assertEqual(child.env["GIT_PROTOCOL"], "version=2")
        self.assertEqual(child.env["REMOTE_USER"], "alice")
        self.assertEqual(child.env["GIT_COMMITTER_EMAIL"], "alice@ssh.192.0.2.7")
        self.assertNotIn("LANG", child.env)
        self.channel.dataReceived(b"0000")
        self.assertEqual(bytes(child.stdin), b"0000")
        child.protocol.outReceived(b"0008NAK\n")  # type: ignore[attr-defined]
        child.exit(0)
        self.assertEqual(bytes(self.conn.data), b"0008NAK\n")
        self.assertEqual(self.exitStatus(), 0)
        self.assertTrue(self.conn.eof and self.conn.closedChannel)

    def test_tildeIsTheRoot(self) -> None:
        """'~/app.git', as git sends for git@host:~/app.git, runs git on the root's app.git."""
        self.assertTrue(self.request(b"exec", NS(b"git-upload-pack '~/app.git'")))
        [child] = self.reactor.spawned
        self.assertEqual(child.args[-1], str((self.root / "app.git").resolve()))

    def test_otherEnvironmentRefused(self) -> None:
        """Only GIT_PROTOCOL is taken: GIT_CONFIG_*, LD_PRELOAD are refused and never reach git."""
        for name in (b"GIT_CONFIG_PARAMETERS", b"GIT_CONFIG_COUNT", b"LD_PRELOAD", b"PATH"):
            self.assertFalse(self.request(b"env", NS(name) + NS(b"x")))
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"))
        [child] = self.reactor.spawned
        self.assertFalse(
            {"GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "LD_PRELOAD"} & set(child.env)
        )

    def test_invalidGitProtocolRefusesTheCommand(self) -> None:
        """A GIT_PROTOCOL that is not key=value is refused, and so is the command after it."""
        self.assertFalse(self.request(b"env", NS(b"GIT_PROTOCOL") + NS(b"version=2\n;x")))
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"))
        self.assertEqual(self.reactor.spawned, [])
        self.assertIn(b"invalid GIT_PROTOCOL", bytes(self.conn.stderr))
        self.assertEqual(self.exitStatus(), 128)

    def test_refusedCommands(self) -> None:
        """Other commands, bad paths, traversal: a fatal line, status 128, nothing run."""
        cases = {
            b"rm -rf /": b"unrecognized command",
            b"git-upload-pack '/app.git'; touch /tmp/x": b"bad argument",
            b"git-upload-pack '../app.git'": b"'../app.git' does not appear to be a git repository",
            b"git-upload-pack '/missing.git'": b"does not appear to be a git repository",
            b"git-upload-pack '~alice/app.git'": b"~user paths are not served",
            b"git-upload-pack '/app.git\n'": b"'/app.git?' does not appear",
            b"git-upload-archive '/app.git'": b"Service not enabled: 'upload-archive'",
        }
        for command, message in cases.items():
            channel = self.openChannel()
            self.assertTrue(self.request(b"exec", NS(command), channel))
            conn: FakeSSHConnection = channel.conn  # type: ignore[assignment]
            self.assertIn(b"fatal: ", bytes(conn.stderr), command)
            self.assertIn(message, bytes(conn.stderr), command)
            self.assertEqual(self.exitStatus(channel), 128, command)
        self.assertEqual(self.reactor.spawned, [])

    def test_uploadArchiveWhereAllowed(self) -> None:
        """upload-archive runs (stateful, on the resolved path) where daemon.uploadarch is true."""
        makeRepository(self.root / "archived.git", "[daemon]\n\tuploadarch = true\n")
        self.assertTrue(self.request(b"exec", NS(b"git upload-archive '/archived.git'")))
        [child] = self.reactor.spawned
        self.assertEqual(
            child.args,
            ["/usr/bin/git", "upload-archive", str((self.root / "archived.git").resolve())],
        )
        self.channel.dataReceived(b"0000")
        self.assertEqual(bytes(child.stdin), b"0000")

    def test_uploadArchiveSwitchedOff(self) -> None:
        """daemon.uploadarch unset or false: refused with a fatal line, status 128, nothing run."""
        makeRepository(self.root / "off.git", "[daemon]\n\tuploadarch = false\n")
        for path in (b"/app.git", b"/off.git"):
            channel = self.openChannel()
            self.request(b"exec", NS(b"git-upload-archive '" + path + b"'"), channel)
            conn: FakeSSHConnection = channel.conn  # type: ignore[assignment]
            self.assertEqual(
                bytes(conn.stderr), b"fatal: Service not enabled: 'upload-archive'\n", path
            )
            self.assertEqual(self.exitStatus(channel), 128)
        self.assertEqual(self.reactor.spawned, [])

    def test_uploadArchiveRequiresExportOk(self) -> None:
        """--require-export-ok hides a repository from upload-archive as from upload-pack."""
        makeRepository(self.root / "archived.git", "[daemon]\n\tuploadarch = true\n")
        self.core = makeCore(self.root, self.reactor, jobs=self.jobs, requireExportOk=True)
        channel = self.openChannel()
        self.request(b"exec", NS(b"git-upload-archive '/archived.git'"), channel)
        conn: FakeSSHConnection = channel.conn  # type: ignore[assignment]
        self.assertIn(b"does not appear to be a git repository", bytes(conn.stderr))
        self.assertEqual(self.reactor.spawned, [])
        (self.root / "archived.git" / "git-daemon-export-ok").touch()
        self.request(b"exec", NS(b"git-upload-archive '/archived.git'"), self.openChannel())
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_notRequestsRefusedWithMessage(self) -> None:
        """pty, subsystems, X11 and agent forwarding are refused with a line on stderr."""
        for kind in (b"pty-req", b"x11-req", b"auth-agent-req@openssh.com"):
            self.assertFalse(self.request(kind, b""))
        text = bytes(self.conn.stderr).decode()
        self.assertEqual(text.count("this server runs git commands only"), 3)
        self.assertFalse(self.conn.closedChannel)
        # A subsystem is accepted only to be refused in words, with status 1.
        self.assertTrue(self.request(b"subsystem", NS(b"sftp")))
        self.assertIn("no subsystems (sftp, ...) here", bytes(self.conn.stderr).decode())
        self.assertEqual(self.exitStatus(), 1)

    def test_secondCommandRefused(self) -> None:
        """A session runs one command: a second exec is refused."""
        self.assertTrue(self.request(b"exec", NS(b"git-upload-pack '/app.git'")))
        self.assertFalse(self.request(b"exec", NS(b"git-upload-pack '/app.git'")))
        self.assertEqual(len(self.reactor.spawned), 1)

    def test_inputWithTheCommandReachesGit(self) -> None:
        """A request sent in the same breath as the exec, before it is handled, reaches git."""
        self.channel.requestReceived(b"exec", NS(b"git-upload-pack '/app.git'"))
        self.channel.dataReceived(b"0000")
        self.channel.eofReceived()
        self.reactor.advance(0)
        [child] = self.reactor.spawned
        self.assertEqual(bytes(child.stdin), b"0000")
        self.assertTrue(child.stdinClosed)

    def test_inputBeforeGitStartsReachesGit(self) -> None:
        """A request sent while git waits for a job slot reaches git whole once it runs."""
        self.jobs.maxQueue = 1
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"))
        waiting = self.openChannel()
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"), waiting)
        waiting.dataReceived(b"0009done\n")
        waiting.eofReceived()
        [first] = self.reactor.spawned
        first.exit(0)
        self.reactor.advance(0)
        second = self.reactor.spawned[1]
        self.assertEqual(bytes(second.stdin), b"0009done\n")
        self.assertTrue(second.stdinClosed)

    def test_busyIsAMessage(self) -> None:
        """With every job slot taken and no queue, the user is told the server is busy."""
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"))
        other = self.openChannel()
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"), other)
        conn: FakeSSHConnection = other.conn  # type: ignore[assignment]
        self.assertIn(b"The server is busy", bytes(conn.stderr))
        self.assertEqual(self.exitStatus(other), 128)

    def test_clientLeavingEndsGit(self) -> None:
        """A channel closed by the client ends its git child."""
        self.request(b"exec", NS(b"git-receive-pack '/app.git'"))
        [child] = self.reactor.spawned
        self.channel.closeReceived()
        self.channel.closed()
        self.reactor.advance(10)
        self.assertIn("TERM", child.signals)

    def test_stdinBackPressure(self) -> None:
        """While git's stdin is full, the channel's window is not re-opened; then it is."""
        self.reactor.pipeCapacity = 10
        self.request(b"exec", NS(b"git-receive-pack '/app.git'"))
        [child] = self.reactor.spawned
        self.channel.localWindowLeft -= 100
        self.channel.dataReceived(b"x" * 100)
        self.assertTrue(self.channel.inputPaused)
        child.readStdin()
        self.assertFalse(self.channel.inputPaused)
        self.assertEqual(self.conn.windowAdjusts, [100])

    def test_outputPacedByWindow(self) -> None:
        """A client window that fills pauses git's output; one re-opened resumes it."""
        self.request(b"exec", NS(b"git-upload-pack '/app.git'"))
        [child] = self.reactor.spawned
        self.channel.stopWriting()
        self.assertTrue(child.paused)
        self.channel.startWriting()
        self.assertFalse(child.paused)
        self.channel.closed()
        child.protocol.outReceived(b"0000")  # type: ignore[attr-defined]
        self.assertEqual(bytes(self.conn.data), b"")

    def test_greeting(self) -> None:
        """A shell request gets the greeting: the user and what they may read and push."""
        makeRepository(self.root / "team" / "tools.git", "[http]\n\treceivepack = false\n")
        makeRepository(self.root / "off.git", "[http]\n\tuploadpack = false\n")
        self.assertTrue(self.request(b"shell", b""))
        text = bytes(self.conn.data).decode()
        self.assertIn("hello alice", text)
        self.assertIn(" R W\tapp.git", text)
        self.assertIn(" R  \tteam/tools.git", text)
        self.assertNotIn("off.git", text)
        self.assertEqual(self.exitStatus(), 0)
        self.assertEqual(self.reactor.spawned, [])
