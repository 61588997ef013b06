"""
Users' public keys in gitolite's keydir layout, the cred checker that logs a
user in by one of them, and the server's own host key.

C{DIR/alice.pub}, C{DIR/laptops/alice@home.pub}: the user is the file's name
up to C{.pub} or the first C{@}, a file holds one or more keys (one a line),
and subdirectories only organise. The directory is re-read when any file or
directory in it changes, so adding a key takes effect without a restart.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.error import ValidPublicKey
from twisted.conch.ssh.keys import BadKeyError, Key
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

# gitolite's user names: what a keydir file may be called (after dropping
# .pub and anything from the first @). Anything else is skipped with a
# warning, so a stray file never becomes a strange user name in logs and hooks.
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")

# A key file larger than this is not a list of public keys.
MAX_KEY_FILE = 256 * 1024


def fingerprint(blob: bytes) -> str:
    """A key's fingerprint as C{ssh-keygen -l} prints it: C{SHA256:<base64>}."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def userOfKeyFile(name: str) -> str | None:
    """The user a keydir file belongs to (C{alice@home.pub} → C{alice}), if valid."""
    if not name.endswith(".pub"):
        return None
    user = name[: -len(".pub")].split("@", 1)[0]
    return user if _USER_NAME.fullmatch(user) else None


@dataclass(frozen=True)
class KeyOwner:
    """
    Who a key belongs to: the avatar ID the checker gives the realm.

    @ivar user: the user (the key file's name).
    @ivar fingerprint: which of the user's keys it was, for the log.
    """

    user: str
    fingerprint: str


class KeyDirectory:
    """
    The keydir, read again whenever it changed.

    Change is noticed by stamps (size, mtime, inode) of every directory and
    C{.pub} file below it, taken at each login: a few C{stat}s for a team's
    keys, and no watcher to go stale.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamps: tuple[tuple[str, int, int, int], ...] | None = None
        self._owners: dict[bytes, str] = {}

    def _scan(self) -> tuple[tuple[tuple[str, int, int, int], ...], list[Path]]:
        stamps: list[tuple[str, int, int, int]] = []
        files: list[Path] = []
        # followlinks=False: a link to / in the keydir must not walk the disk.
        for directory, subdirectories, names in os.walk(self.path):
            subdirectories.sort()
            try:
                info = os.stat(directory)
            except OSError:
                continue
            stamps.append((directory, info.st_size, info.st_mtime_ns, info.st_ino))
            for name in sorted(names):
                if not name.endswith(".pub"):
                    continue
                path = Path(directory) / name
                try:
                    info = path.stat()
                except OSError:
                    continue
                stamps.append((str(path), info.st_size, info.st_mtime_ns, info.st_ino))
                files.append(path)
        return tuple(stamps), files

    def owners(self) -> dict[bytes, str]:
        """Every key blob, with the user it logs in."""
        stamps, files = self._scan()
        if stamps == self._stamps:
            return self._owners
        owners: dict[bytes, str] = {}
        for path in files:
            user = userOfKeyFile(path.name)
            if user is None:
                log.warn("ssh keys: ignoring {path}: not a user name", path=str(path))
                continue
            for blob in self._readKeys(path):
                previous = owners.setdefault(blob, user)
                if previous != user:
                    # One key, two users: which would it log in? Neither.
                    log.warn(
                        "ssh keys: {fingerprint} is listed for both {first} and {second}; "
                        "it logs in neither",
                        fingerprint=fingerprint(blob),
                        first=previous,
                        second=user,
                    )
                    owners[blob] = ""
        self._owners = {blob: user for blob, user in owners.items() if user}
        self._stamps = stamps
        log.info(
            "ssh keys: {keys} keys of {users} users from {path}",
            keys=len(self._owners),
            users=len(set(self._owners.values())),
            path=str(self.path),
        )
        return self._owners

    def _readKeys(self, path: Path) -> list[bytes]:
        try:
            if path.stat().st_size > MAX_KEY_FILE:
                raise OSError("file too large")
            lines = path.read_bytes().splitlines()
        except OSError as e:
            log.warn("ssh keys: cannot read {path}: {error}", path=str(path), error=str(e))
            return []
        blobs = []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                blobs.append(Key.fromString(line).blob())
            except (BadKeyError, ValueError, IndexError, TypeError) as e:
                # authorized_keys options (command=...) are not keydir syntax
                # either: such a line is skipped, never half-understood.
                log.warn(
                    "ssh keys: {path}:{line}: not a public key ({error})",
                    path=str(path),
                    line=number,
                    error=str(e) or type(e).__name__,
                )
        return blobs

    def ownerOf(self, blob: bytes) -> str | None:
        """The user C{blob} logs in, or L{None} for a key nobody listed."""
        return self.owners().get(blob)


@implementer(ICredentialsChecker)
class KeyDirectoryChecker:
    """
    Logs a user in by a key in the keydir; the SSH user name (C{git} in
    C{git@host}) plays no part, as on every git hosting service.
    """

    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, keys: KeyDirectory) -> None:
        self.keys = keys

    def requestAvatarId(self, credentials: Any) -> Deferred[KeyOwner]:  # type: ignore[override]
        """
        (ICredentialsChecker types avatar IDs as bytes; a L{KeyOwner} also
        carries which key it was, for the log, and the realm expects it.)

        @return: the key's L{KeyOwner}; fails with L{ValidPublicKey} when the
            client only asks whether the key would do (no signature yet), and
            with L{UnauthorizedLogin} for an unknown key or a bad signature.
        """
        blob = credentials.blob
        user = self.keys.ownerOf(blob)
        if user is None:
            return fail(UnauthorizedLogin("unknown key"))
        if not credentials.signature:
            # The client asks before signing; say the key would be accepted.
            return fail(ValidPublicKey())
        try:
            key = Key.fromString(blob)
            valid = key.verify(credentials.signature, credentials.sigData)
        except (BadKeyError, ValueError, TypeError):
            valid = False
        if not valid:
            return fail(UnauthorizedLogin("bad signature"))
        return succeed(KeyOwner(user, fingerprint(blob)))


def loadOrCreateHostKey(path: Path) -> Key:
    """
    The server's private host key from C{path}; when the file does not
    exist, a new ed25519 key is written there first (mode 0600, created
    exclusively, so an existing file is never overwritten), so that the
    first start just works. The fingerprint is logged either way, for users
    to check on their first connection.

    @raise OSError: the file cannot be read or created.
    @raise BadKeyError: it is not a private key.
    """
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(pem)
        log.info("ssh: created host key {path}", path=str(path))
    key = Key.fromFile(str(path))
    if key.isPublic():
        raise BadKeyError(f"{path} holds a public key; --ssh-host-key needs the private key")
    log.info(
        "ssh host key {type} {fingerprint} ({path})",
        type=key.sshType().decode("ascii"),
        fingerprint=fingerprint(key.public().blob()),
        path=str(path),
    )
    return key
