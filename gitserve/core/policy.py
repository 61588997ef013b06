"""
Who may do what: the answer to "may this request touch this repository?".

The switches are git http-backend's, read from the repository's own config,
plus the server's options. Resources ask L{Policy}; none decides on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gitserve.core.errors import AuthenticationRequired, Forbidden, NotFound, Refusal
from gitserve.core.repository import ConfigCache, Repository

if TYPE_CHECKING:
    from gitserve.core.accesscontrol import AccessControl

# The user gitolite's rules see for a request nobody authenticated
# (gitolite's HTTP_ANON_USER).
ANONYMOUS = "anonymous"


class Service(enum.Enum):
    """
    The git services, named as they appear on the wire: the two smart ones
    every door serves, and C{git archive --remote}'s, which only the
    full-duplex doors (SSH, git://) serve, as git daemon does.
    """

    UPLOAD_PACK = "git-upload-pack"
    RECEIVE_PACK = "git-receive-pack"
    UPLOAD_ARCHIVE = "git-upload-archive"

    @property
    def command(self) -> str:
        """The git subcommand that implements the service."""
        return self.value[len("git-") :]

    @property
    def configName(self) -> str:
        """The C{http.*} switch that enables it, as http-backend names it."""
        return self.command.replace("-", "")

    @property
    def isWrite(self) -> bool:
        return self is Service.RECEIVE_PACK

    @classmethod
    def fromWire(cls, name: bytes) -> Service | None:
        """
        The service an HTTP C{service=} parameter names, if any: never
        upload-archive, which has no stateless form that http-backend serves
        by default (newer ones offer it within protocol v2 only, behind
        C{http.uploadarchive}), so HTTP answers it as any unknown service.
        """
        for service in (cls.UPLOAD_PACK, cls.RECEIVE_PACK):
            if service.value.encode("ascii") == name:
                return service
        return None


@dataclass
class Policy:
    """
    The server-wide options that shape access, and the per-repository config.

    @ivar anonymousPush: C{--anonymous-push}: push needs no user anywhere.
    @ivar requireExportOk: C{--require-export-ok}: only repositories holding
        C{git-daemon-export-ok} exist, as far as clients can tell.
    @ivar private: C{--private}: every request needs an authenticated user.
    @ivar access: C{--access}: the gitolite rules, which alone grant rights
        when set (L{None}: the switches above decide, as before).
    @ivar root: the served root, which the rules name repositories under.
    @ivar canAuthenticate: whether a user can log in at all (C{--auth}):
        then an anonymous request for a repository it may not see is asked
        for credentials rather than told it does not exist.
    """

    configs: ConfigCache
    anonymousPush: bool = False
    requireExportOk: bool = False
    private: bool = False
    access: AccessControl | None = None
    root: Path = Path("/")
    canAuthenticate: bool = False

    def hidden(self, user: str | None) -> Refusal:
        """
        The one answer for a repository that is missing or that C{user} may
        not read, so the two cannot be told apart: 404, or for an anonymous
        request when users can log in, the same 401 (git then offers
        credentials, and learns nothing about which repositories exist).
        """
        if user is None and self.canAuthenticate:
            return AuthenticationRequired("Authentication required")
        return NotFound()

    def checkVisible(self, repository: Repository, user: str | None = None) -> None:
        """
        @raise NotFound: when the repository is not exported, or (under
            C{--access}) the user may not read it. The answer is the same
            as for a missing repository, so nothing leaks.
        @raise AuthenticationRequired: the same, to an anonymous request
            when users can log in (see L{hidden}).
        """
        if self.requireExportOk and not repository.exportOk:
            raise self.hidden(user) if self.access is not None else NotFound()
        if self.access is not None:
            # gitolite's pre-git check: R on "any" ref.
            decision = self.access.decide(self.root, repository, user or ANONYMOUS, "R")
            if not decision.allowed:
                raise self.hidden(user)

    def checkService(self, repository: Repository, service: Service, user: str | None) -> None:
        """
        Whether C{user} (L{None} when anonymous) may run C{service}.

        As http-backend: C{http.uploadpack} defaults to on; C{http.receivepack}
        defaults to on for authenticated users only. As git daemon:
        C{daemon.uploadarch} must be true for upload-archive.

        @raise Forbidden: the service is switched off for this repository.
        @raise AuthenticationRequired: it would be allowed to an authenticated user.
        """
        if self.private and user is None:
            raise AuthenticationRequired("Authentication required")
        if service is Service.UPLOAD_ARCHIVE:
            # git daemon's per-repository switch, off unless the repository
            # opts in, as git daemon leaves it: every request makes the
            # server build and compress a whole tree. Reading is the only
            # right it needs, checked when the repository was resolved
            # (checkVisible: R under --access), as for upload-pack.
            if self.configs.getBoolean(repository, "daemon", "uploadarch") is not True:
                raise Forbidden(f"Service not enabled: '{service.command}'")
            return
        enabled = self.configs.getBoolean(repository, "http", service.configName)
        if enabled is False:
            raise Forbidden(f"Service not enabled: '{service.command}'")
        if self.access is not None:
            # The rules alone grant rights: --anonymous-push and
            # http.receivepack=true add nothing. Read was checked when the
            # repository was resolved; a push needs W on some ref (gitolite's
            # check before git runs), and each ref is checked by the update
            # hook as it lands.
            if service.isWrite:
                decision = self.access.decide(self.root, repository, user or ANONYMOUS, "W")
                if not decision.allowed:
                    if user is None and self.canAuthenticate:
                        raise AuthenticationRequired("Authentication required")
                    raise Forbidden(f"access denied: {decision.text}")
            return
        if service.isWrite and enabled is None and user is None and not self.anonymousPush:
            raise AuthenticationRequired(
                "Anonymous push is not allowed: authenticate, or ask the administrator "
                "to set http.receivepack=true in the repository or to start gitserve "
                "with --anonymous-push"
            )

    def pushEnvironment(self, repository: Repository, user: str | None) -> dict[str, str]:
        """
        The variables a push's git child needs for the update hook to check
        each ref (empty without C{--access}).
        """
        if self.access is None:
            return {}
        return self.access.pushEnvironment(self.root, repository, user or ANONYMOUS)

    def checkGetAnyFile(self, repository: Repository) -> None:
        """
        Whether dumb clients may read the repository's files, by
        C{http.getanyfile} (on unless set false), as http-backend checks it
        before every dumb answer. Smart services do not depend on it.

        @raise Forbidden: the switch is off.
        """
        if self.configs.getBoolean(repository, "http", "getanyfile") is False:
            raise Forbidden("Unsupported service: getanyfile")

    def hiddenRefs(self, repository: Repository) -> list[bytes]:
        """
        The hideRefs patterns a fetch must not see: C{transfer.hideRefs} then
        C{uploadpack.hideRefs}, with trailing slashes dropped as git's
        C{parse_hide_refs_config()} drops them. (git applies them in config
        file order across both keys; this keeps each key's order, which
        differs only when C{!} negations are spread over both.)
        """
        values = self.configs.getAll(repository, "transfer", "hideRefs") + self.configs.getAll(
            repository, "uploadpack", "hideRefs"
        )
        return [value.rstrip(b"/") for value in values if value.rstrip(b"/")]
