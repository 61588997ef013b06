"""
Authentication: an htpasswd checker for twisted.cred, and HTTP Basic on top of a portal.

Two promises shape this module. Password hashing never runs on the reactor
thread (a bcrypt check costs tens of milliseconds, long enough to stall every
other clone), so checks go through an injected thread runner. And one push
makes two or three requests carrying the same credentials, so a short-lived
cache of verified credentials spares re-hashing each of them; the cache holds
keyed digests, never a password.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import bcrypt
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.guard import BasicCredentialFactory
from zope.interface import Interface, implementer

from gitserve.core.filestamps import stampOf
from gitserve.core.metrics import IMetrics, NullMetrics

# The prefixes `htpasswd -B` writes ($2y$) and the other spellings of the same
# bcrypt scheme; pyca/bcrypt verifies all three.
BCRYPT_PREFIXES = ("$2y$", "$2a$", "$2b$")

# How long a verified username/password pair is trusted without re-hashing:
# long enough to cover the requests of one push, short enough that a removed
# user or a changed password stops working within the minute even if the file
# were edited in a way that kept its mtime.
DEFAULT_CACHE_SECONDS = 60.0

# A bound on the cache so that a stream of distinct valid logins cannot grow it
# without limit; expired entries are dropped first.
MAX_CACHED_CREDENTIALS = 1024

DEFAULT_REALM = "gitserve"

ThreadRunner = Callable[..., Deferred]


class HtpasswdError(ValueError):
    """An htpasswd file this checker refuses to serve from, with the file and line to fix."""

    def __init__(self, path: Path, lineNumber: int | None, reason: str):
        self.path = path
        self.lineNumber = lineNumber
        self.reason = reason
        where = f"{path}:{lineNumber}" if lineNumber is not None else str(path)
        super().__init__(f"{where}: {reason}")


def _unsupportedScheme(hashed: str) -> str:
    """Name the scheme of a hash this checker does not verify, with the way out."""
    if hashed.startswith("$apr1$"):
        scheme = "MD5 ($apr1$)"
    elif hashed.startswith("{SHA}"):
        scheme = "SHA-1 ({SHA})"
    elif hashed.startswith(("$5$", "$6$", "$1$")):
        scheme = "crypt(3) " + hashed[:3]
    elif hashed.startswith("$"):
        scheme = "$" + hashed.split("$")[1] + "$"
    else:
        scheme = "crypt or plain text"
    return f"password scheme {scheme} is not supported; recreate the entry with `htpasswd -B`"


def parseHtpasswd(path: Path, text: str) -> dict[str, bytes]:
    """
    Read an Apache htpasswd file that holds only bcrypt entries.

    Every other scheme is refused rather than skipped: a user whose entry
    silently never matches is a support call, an error naming the line is a
    one-minute fix. Blank lines and C{#} comments are allowed, as Apache's
    mod_authn_file allows them; a user listed twice keeps the first entry, as
    Apache does.

    @raise HtpasswdError: for a malformed line or an unsupported scheme.
    """
    entries: dict[str, bytes] = {}
    for lineNumber, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            raise HtpasswdError(path, lineNumber, "expected `user:hash`")
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise HtpasswdError(path, lineNumber, _unsupportedScheme(hashed))
        if len(hashed) != 60:
            raise HtpasswdError(path, lineNumber, "truncated or malformed bcrypt hash")
        entries.setdefault(user, hashed.encode("ascii"))
    return entries


@implementer(ICredentialsChecker)
class HtpasswdChecker:
    """
    Check usernames and passwords against an htpasswd file of bcrypt entries.

    The file is re-read when its modification time, size or inode changes
    (C{htpasswd} rewrites it in place, editors and config management replace
    it), so adding a user needs no restart. A file that turns bad while
    serving keeps the last good entries and logs the line to fix: refusing
    every user because of one typo would lock out the whole team.
    """

    credentialInterfaces = (IUsernamePassword,)
    log = Logger()

    def __init__(
        self,
        path: Path,
        runInThread: ThreadRunner,
        clock: IReactorTime,
        cacheSeconds: float = DEFAULT_CACHE_SECONDS,
    ):
        """
        @param path: the htpasswd file.
        @param runInThread: runs a blocking callable off the reactor thread
            and returns a L{Deferred} of its result, such as
            C{partial(deferToThreadPool, reactor, pool)}.
        @param clock: times the cache of verified credentials.
        @param cacheSeconds: how long a verified pair is trusted.
        @raise HtpasswdError: when the file cannot be read or holds an
            entry this checker does not support, so that a bad file stops
            the daemon at start-up with the line to fix.
        """
        self._path = path
        self._runInThread = runInThread
        self._clock = clock
        self._cacheSeconds = cacheSeconds
        # A per-process key: the cache holds HMACs of credentials, which are
        # useless outside this process.
        self._cacheKey = os.urandom(32)
        self._verified: dict[bytes, float] = {}
        # Unknown users are checked against a hash too, so that the answer
        # takes as long as for a known user and does not reveal who exists.
        self._dummyHash = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(rounds=5))
        try:
            self._stamp = stampOf(str(path))
            self._entries = parseHtpasswd(path, path.read_text(encoding="utf-8"))
        except OSError as e:
            raise HtpasswdError(path, None, e.strerror or str(e)) from e
        except UnicodeDecodeError as e:
            raise HtpasswdError(path, None, "not UTF-8 text") from e

    def _refresh(self) -> None:
        """Re-read the file if it changed since it was last read."""
        try:
            stamp = stampOf(str(self._path))
            if stamp == self._stamp:
                return
            entries = parseHtpasswd(self._path, self._path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, HtpasswdError) as e:
            self.log.error(
                "htpasswd file {path} could not be reloaded ({error}); "
                "keeping the previous {count} users",
                path=str(self._path),
                error=str(e),
                count=len(self._entries),
            )
            return
        self._stamp = stamp
        self._entries = entries
        # Removed users and changed passwords must stop working at once.
        self._verified.clear()
        self.log.info(
            "htpasswd file {path} reloaded: {count} users", path=str(self._path), count=len(entries)
        )

    def _cacheKeyFor(self, username: bytes, password: bytes, hashed: bytes) -> bytes:
        # The stored hash is part of the key: a changed entry misses the cache.
        message = b"\0".join((username, password, hashed))
        return hmac.new(self._cacheKey, message, hashlib.sha256).digest()

    def _remember(self, key: bytes) -> None:
        now = self._clock.seconds()
        if len(self._verified) >= MAX_CACHED_CREDENTIALS:
            for stale in [k for k, expiry in self._verified.items() if expiry <= now]:
                del self._verified[stale]
            if len(self._verified) >= MAX_CACHED_CREDENTIALS:
                self._verified.clear()
        self._verified[key] = now + self._cacheSeconds

    def requestAvatarId(self, credentials: Any) -> Deferred:
        """
        Verify a username and password.

        @return: a L{Deferred} firing with the username as C{str}, or
            failing with L{UnauthorizedLogin}.
        """
        self._refresh()
        username: bytes = credentials.username
        password: bytes = credentials.password
        try:
            name = username.decode("utf-8")
        except UnicodeDecodeError:
            return fail(UnauthorizedLogin())
        hashed = self._entries.get(name)
        if hashed is not None:
            key = self._cacheKeyFor(username, password, hashed)
            expiry = self._verified.get(key)
            if expiry is not None:
                if expiry > self._clock.seconds():
                    return succeed(name)
                del self._verified[key]
        d = self._runInThread(bcrypt.checkpw, password, hashed or self._dummyHash)

        def checked(matches: bool) -> str:
            if not matches or hashed is None:
                raise UnauthorizedLogin()
            self._remember(key)
            return name

        return d.addCallback(checked)


@implementer(ICredentialsChecker)
class FirstMatchChecker:
    """
    Several checkers for the same credentials, tried in order.

    A portal keeps one checker per credential interface, so C{--auth
    htpasswd:team --auth unix} needs this to accept a user known to either.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, checkers: Sequence[ICredentialsChecker]):
        self._checkers = list(checkers)

    def requestAvatarId(self, credentials: Any) -> Deferred:
        """The avatar id from the first checker that accepts the credentials."""
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: Any) -> Any:
        for checker in self._checkers:
            try:
                # Twisted's own checkers sometimes return a plain value.
                return await maybeDeferred(checker.requestAvatarId, credentials)
            except LoginFailed:
                continue
        raise UnauthorizedLogin()


@implementer(ICredentialsChecker)
class ThreadedChecker:
    """
    Run a synchronous checker in a worker thread.

    Twisted's strcred checkers (C{memory:}, C{file:}, C{unix}) answer at
    once, but C{file:} reads a file and C{unix} runs C{crypt(3)} while doing
    so: on the reactor thread that would stall every transfer. Only checkers
    that finish inside C{requestAvatarId} belong here; an asynchronous one
    would be driven from a thread that must not touch the reactor.
    """

    def __init__(self, checker: ICredentialsChecker, runInThread: ThreadRunner):
        self.credentialInterfaces = checker.credentialInterfaces
        self._checker = checker
        self._runInThread = runInThread

    def _checkInThread(self, credentials: Any) -> Any:
        outcome: list[Any] = []
        maybeDeferred(self._checker.requestAvatarId, credentials).addBoth(outcome.append)
        if not outcome:
            raise RuntimeError(f"{self._checker!r} did not answer synchronously")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    def requestAvatarId(self, credentials: Any) -> Deferred:
        """The wrapped checker's answer, computed off the reactor thread."""
        return self._runInThread(self._checkInThread, credentials)


class IGitUser(Interface):
    """The avatar interface: an authenticated user, represented by their name."""


@implementer(IRealm)
class GitUserRealm:
    """A realm whose avatars are just the user names that checkers vouch for."""

    def requestAvatar(self, avatarId: Any, mind: object, *interfaces: Any) -> tuple:
        if IGitUser not in interfaces:
            raise NotImplementedError("gitserve only knows IGitUser avatars")
        if isinstance(avatarId, bytes):
            avatarId = avatarId.decode("utf-8", "replace")
        return IGitUser, str(avatarId), lambda: None


def _encodeMemoryUsers(checker: InMemoryUsernamePasswordDatabaseDontUse) -> None:
    """
    Make C{--auth memory:user:password} usable: Twisted's C{memory:} factory
    stores C{str} names and passwords, while HTTP Basic credentials (and the
    checker's own comparison) are C{bytes}, so no login could ever match.
    """
    checker.users = {
        (k.encode("utf-8") if isinstance(k, str) else k): (
            v.encode("utf-8") if isinstance(v, str) else v
        )
        for k, v in checker.users.items()
    }


def makePortal(checkers: Sequence[ICredentialsChecker], runInThread: ThreadRunner) -> Portal:
    """
    A portal over C{checkers} (tried in order) for username/password logins.

    Checkers other than L{HtpasswdChecker} (which threads its own hashing)
    are moved to a worker thread, see L{ThreadedChecker}.
    """
    for c in checkers:
        if isinstance(c, InMemoryUsernamePasswordDatabaseDontUse):
            _encodeMemoryUsers(c)
    threaded = [
        c if isinstance(c, HtpasswdChecker) else ThreadedChecker(c, runInThread) for c in checkers
    ]
    checker = threaded[0] if len(threaded) == 1 else FirstMatchChecker(threaded)
    return Portal(GitUserRealm(), [checker])


def isAcceptableUserName(name: str) -> bool:
    """
    Whether a verified name may go to git and into log lines.

    It becomes C{REMOTE_USER} and C{GIT_COMMITTER_NAME}, and the local part
    of C{GIT_COMMITTER_EMAIL}: control characters would split log lines and
    C{<>} would break the committer ident git writes into the reflog.
    """
    return bool(name) and not any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch in "<>" for ch in name)


class BasicAuthenticator:
    """
    HTTP Basic over a cred portal: from an C{Authorization} header to a user.

    The web layer asks this before it reads any body byte, and decides with
    the policy whether a missing user means 401.
    """

    log = Logger()

    def __init__(self, portal: Portal, realm: str = DEFAULT_REALM, metrics: IMetrics | None = None):
        """@param metrics: counts failed logins."""
        self._portal = portal
        self._metrics: IMetrics = metrics if metrics is not None else NullMetrics()
        self._factory = BasicCredentialFactory(realm)
        self.challenge = b'Basic realm="%s", charset="UTF-8"' % (
            realm.replace("\\", "\\\\").replace('"', '\\"').encode("utf-8")
        )

    def authenticate(self, authorization: bytes | None, remoteAddress: str = "-") -> Deferred:
        """
        The user that an C{Authorization} header proves, if any.

        Wrong credentials answer the same as none (L{None}): where a user is
        needed the client gets the same 401 either way, and where none is
        needed (anonymous fetch) a stale password in a URL does not stand in
        the way. Failures are logged with the claimed name, for fail2ban.

        @return: a L{Deferred} firing with the user name, or L{None}.
        """
        if not authorization:
            return succeed(None)
        scheme, _, response = authorization.partition(b" ")
        if scheme.lower() != self._factory.scheme:
            return succeed(None)
        try:
            credentials = self._factory.decode(response.strip(), None)
        except LoginFailed:
            self.log.warn("malformed Basic credentials from {remote}", remote=remoteAddress)
            return succeed(None)
        d = self._portal.login(credentials, None, IGitUser)

        def loggedIn(result: tuple) -> str | None:
            _, name, _ = result
            if not isAcceptableUserName(name):
                self.log.warn("refusing user name {name!r}", name=name)
                return None
            return name

        def refused(reason: Failure) -> None:
            reason.trap(LoginFailed)
            self._metrics.authenticationFailed("http")
            self.log.warn(
                "authentication failed for {user!r} from {remote}",
                user=credentials.username.decode("utf-8", "replace"),
                remote=remoteAddress,
            )
            return None

        return d.addCallbacks(loggedIn, refused)
