"""
Who may do what: the answer to "may this request touch this repository?".

The switches are git http-backend's, read from the repository's own config,
plus the server's options. Resources ask L{Policy}; none decides on its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gitserve.core.errors import AuthenticationRequired, Forbidden, NotFound
from gitserve.core.repository import ConfigCache, Repository


class Service(enum.Enum):
    """The two smart services, named as they appear on the wire."""

    UPLOAD_PACK = "git-upload-pack"
    RECEIVE_PACK = "git-receive-pack"

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
        """The service a C{service=} parameter or POST route names, if any."""
        for service in cls:
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
    """

    configs: ConfigCache
    anonymousPush: bool = False
    requireExportOk: bool = False
    private: bool = False

    def checkVisible(self, repository: Repository) -> None:
        """
        @raise NotFound: when the repository is not exported. The answer is
            the same as for a missing repository, so nothing leaks.
        """
        if self.requireExportOk and not repository.exportOk:
            raise NotFound()

    def checkService(self, repository: Repository, service: Service, user: str | None) -> None:
        """
        Whether C{user} (L{None} when anonymous) may run C{service}.

        As http-backend: C{http.uploadpack} defaults to on; C{http.receivepack}
        defaults to on for authenticated users only.

        @raise Forbidden: the service is switched off for this repository.
        @raise AuthenticationRequired: it would be allowed to an authenticated user.
        """
        if self.private and user is None:
            raise AuthenticationRequired("Authentication required")
        enabled = self.configs.getBoolean(repository, "http", service.configName)
        if enabled is False:
            raise Forbidden(f"Service not enabled: '{service.command}'")
        if service.isWrite and enabled is None and user is None and not self.anonymousPush:
            raise AuthenticationRequired(
                "Anonymous push is not allowed: authenticate, or ask the administrator "
                "to set http.receivepack=true in the repository or to start gitserve "
                "with --anonymous-push"
            )

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
