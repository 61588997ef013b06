"""Unit tests for gitserve.auth: htpasswd parsing and checking, the cache, Basic auth."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import bcrypt
from twisted.cred import strcred
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from gitserve.auth import (
    DEFAULT_CACHE_SECONDS,
    BasicAuthenticator,
    HtpasswdChecker,
    HtpasswdError,
    makePortal,
    parseHtpasswd,
)
from tests.fakes import QueuedThreadRunner, scratchDirectory


def htpasswdLine(user: str, password: str) -> str:
    """An entry as `htpasswd -B` writes it ($2y$), at the cheapest cost for speed."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:$2y${hashed[4:]}"


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class ParseHtpasswdTests(SynchronousTestCase):
    def test_bcryptEntriesCommentsAndBlankLines(self) -> None:
        """bcrypt entries are read; comments and blank lines are skipped."""
        text = "# team\n\n" + htpasswdLine("alice", "a") + "\n" + htpasswdLine("bob", "b") + "\n"
        entries = parseHtpasswd(Path("users"), text)
        self.assertEqual(sorted(entries), ["alice", "bob"])
        self.assertTrue(bcrypt.checkpw(b"a", entries["alice"]))

    def test_unsupportedSchemesNameFileAndLine(self) -> None:
        """MD5, SHA-1, crypt and plain entries are refused with file:line and the scheme."""
        cases = {
            "carol:$apr1$abcdefgh$0123456789abcdefghijkl": "$apr1$",
            "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=": "{SHA}",
            "carol:$6$salt$hash": "$6$",
            "carol:plaintext": "crypt or plain text",
        }
        for line, scheme in cases.items():
            text = htpasswdLine("alice", "a") + "\n\n" + line + "\n"
            with self.assertRaises(HtpasswdError) as caught:
                parseHtpasswd(Path("/etc/users"), text)
            self.assertIn("/etc/users:3:", str(caught.exception))
            self.assertIn(scheme, str(caught.exception))
            self.assertIn("htpasswd -B", str(caught.exception))

    def test_malformedLine(self) -> None:
        """A line without a colon is refused, naming its line."""
        with self.assertRaises(HtpasswdError) as caught:
            parseHtpasswd(Path("u"), "justaname\n")
        self.assertEqual(caught.exception.lineNumber, 1)

    def test_firstEntryWins(self) -> None:
        """A user listed twice keeps the first entry, as Apache does."""
        text = htpasswdLine("alice", "first") + "\n" + htpasswdLine("alice", "second") + "\n"
        self.assertTrue(bcrypt.checkpw(b"first", parseHtpasswd(Path("u"), text)["alice"]))


class HtpasswdCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = scratchDirectory(self) / "users"
        self.path.write_text(htpasswdLine("alice", "secret") + "\n")
        self.runner = QueuedThreadRunner()
        self.clock = MemoryReactorClock()
        self.checker = HtpasswdChecker(self.path, self.runner, self.clock)

    def check(self, user: str, password: str) -> object:
        d = self.checker.requestAvatarId(UsernamePassword(user.encode(), password.encode()))
        self.runner.runAll()
        return d

    def rewrite(self, text: str) -> None:
        """Replace the file and make sure its mtime differs, as a later edit would."""
        self.path.write_text(text)
        st = self.path.stat()
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    def test_hashingRunsInTheThreadRunner(self) -> None:
        """bcrypt is handed to the thread runner; nothing is answered before it runs."""
        d = self.checker.requestAvatarId(UsernamePassword(b"alice", b"secret"))
        self.assertNoResult(d)
        self.assertEqual(self.runner.pending[0][0], bcrypt.checkpw)
        self.runner.runAll()
        self.assertEqual(self.successResultOf(d), "alice")

    def test_wrongPasswordAndUnknownUser(self) -> None:
        """A wrong password and an unknown user both fail, and both cost a hash."""
        self.failureResultOf(self.check("alice", "nope"), UnauthorizedLogin)
        self.failureResultOf(self.check("mallory", "secret"), UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 2)

    def test_verifiedCredentialsAreCachedBriefly(self) -> None:
        """A verified pair is not re-hashed until the cache expires; a wrong one always is."""
        self.assertEqual(self.successResultOf(self.check("alice", "secret")), "alice")
        self.assertEqual(self.successResultOf(self.check("alice", "secret")), "alice")
        self.assertEqual(self.runner.calls, 1)
        self.failureResultOf(self.check("alice", "other"), UnauthorizedLogin)
        self.assertEqual(self.runner.calls, 2)
        self.clock.advance(DEFAULT_CACHE_SECONDS + 1)
        self.assertEqual(self.successResultOf(self.check("alice", "secret")), "alice")
        self.assertEqual(self.runner.calls, 3)

    def test_changesArePickedUpWithoutRestart(self) -> None:
        """A new user works and a changed password stops working once the file changes."""
        self.successResultOf(self.check("alice", "secret"))
        self.rewrite(htpasswdLine("alice", "rotated") + "\n" + htpasswdLine("bob", "b") + "\n")
        self.assertEqual(self.successResultOf(self.check("bob", "b")), "bob")
        self.failureResultOf(self.check("alice", "secret"), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.check("alice", "rotated")), "alice")

    def test_badEditKeepsPreviousUsers(self) -> None:
        """A file that turns bad while serving keeps the last good entries and logs the line."""
        self.rewrite(htpasswdLine("alice", "secret") + "\nbob:$apr1$x$y\n")
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(self.check("alice", "secret")), "alice")
        self.assertIn(f"{self.path}:2:", events[0]["error"])
        self.rewrite(htpasswdLine("bob", "b") + "\n")
        self.assertEqual(self.successResultOf(self.check("bob", "b")), "bob")

    def test_startUpRefusesUnsupportedEntry(self) -> None:
        """Start-up fails on an unsupported entry, naming the file and line."""
        self.path.write_text(htpasswdLine("alice", "a") + "\nbob:$apr1$x$y\n")
        with self.assertRaises(HtpasswdError) as caught:
            HtpasswdChecker(self.path, self.runner, self.clock)
        self.assertIn(f"{self.path}:2:", str(caught.exception))

    def test_startUpRefusesMissingFile(self) -> None:
        """A missing file stops the start-up with its name."""
        with self.assertRaises(HtpasswdError) as caught:
            HtpasswdChecker(Path("/nonexistent/users"), self.runner, self.clock)
        self.assertIn("/nonexistent/users", str(caught.exception))


class StrcredTests(SynchronousTestCase):
    def test_htpasswdPluginBuildsTheChecker(self) -> None:
        """`--auth htpasswd:FILE` goes through strcred to an HtpasswdChecker."""
        path = scratchDirectory(self) / "users"
        path.write_text(htpasswdLine("alice", "a") + "\n")
        self.assertIsInstance(strcred.makeChecker(f"htpasswd:{path}"), HtpasswdChecker)

    def test_htpasswdPluginReportsBadLineAsUsageError(self) -> None:
        """A bad entry becomes a usage error, which twistd prints without a traceback."""
        path = scratchDirectory(self) / "users"
        path.write_text("alice:{SHA}abc\n")
        with self.assertRaises(usage.UsageError) as caught:
            strcred.makeChecker(f"htpasswd:{path}")
        self.assertIn(f"{path}:1:", str(caught.exception))

    def test_threadedTwistedChecker(self) -> None:
        """Twisted's memory: checker works with Basic credentials, through the thread runner."""
        runner = QueuedThreadRunner()
        portal = makePortal([strcred.makeChecker("memory:alice:pw")], runner)
        ok = BasicAuthenticator(portal).authenticate(basic("alice", "pw"))
        bad = BasicAuthenticator(portal).authenticate(basic("alice", "no"))
        self.assertNoResult(ok)
        runner.runAll()
        self.assertEqual(self.successResultOf(ok), "alice")
        self.assertIsNone(self.successResultOf(bad))


class FileCheckerTests(SynchronousTestCase):
    def test_twistedFileChecker(self) -> None:
        """Twisted's file: checker (user:password lines) works with Basic credentials."""
        path = scratchDirectory(self) / "passwords"
        path.write_text("carol:pw\n")
        runner = QueuedThreadRunner()
        authenticator = BasicAuthenticator(
            makePortal([strcred.makeChecker(f"file:{path}")], runner)
        )
        ok = authenticator.authenticate(basic("carol", "pw"))
        bad = authenticator.authenticate(basic("carol", "no"))
        runner.runAll()
        self.assertEqual(self.successResultOf(ok), "carol")
        self.assertIsNone(self.successResultOf(bad))


class BasicAuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runner = QueuedThreadRunner()
        first = InMemoryUsernamePasswordDatabaseDontUse(alice=b"a")
        second = InMemoryUsernamePasswordDatabaseDontUse(bob=b"b")
        self.authenticator = BasicAuthenticator(makePortal([first, second], self.runner), "team")

    def authenticate(self, header: bytes | None) -> object:
        d = self.authenticator.authenticate(header, "192.0.2.1")
        self.runner.runAll()
        return self.successResultOf(d)

    def test_usersFromEveryChecker(self) -> None:
        """Users known to any configured checker are accepted, as str names."""
        self.assertEqual(self.authenticate(basic("alice", "a")), "alice")
        self.assertEqual(self.authenticate(basic("bob", "b")), "bob")

    def test_missingWrongAndMalformedAreAnonymous(self) -> None:
        """No header, a wrong password, bad base64 and other schemes all give no user."""
        self.assertIsNone(self.authenticate(None))
        self.assertIsNone(self.authenticate(basic("alice", "b")))
        self.assertIsNone(self.authenticate(b"Basic !!!notbase64"))
        self.assertIsNone(self.authenticate(b"Bearer abc"))

    def test_controlCharactersInNamesAreRefused(self) -> None:
        """A name that would split log lines or break a committer ident is not a user."""
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{"eve\nx": b"e", "a<b": b"e"})
        authenticator = BasicAuthenticator(makePortal([checker], self.runner))
        for name in ("eve\nx", "a<b"):
            d = authenticator.authenticate(basic(name, "e"))
            self.runner.runAll()
            self.assertIsNone(self.successResultOf(d))

    def test_challenge(self) -> None:
        """The challenge names the realm and UTF-8, as RFC 7617 allows."""
        self.assertEqual(self.authenticator.challenge, b'Basic realm="team", charset="UTF-8"')
