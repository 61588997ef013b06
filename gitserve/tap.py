"""
The twistd plugin's options and service: `twistd -n gitserve --root DIR --listen ENDPOINT`.

Only this module touches the global reactor and the process environment;
everything below it gets them passed in.
"""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorCore, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from gitserve.advertisement import CapabilityCache
from gitserve.policy import Policy
from gitserve.repository import ConfigCache
from gitserve.service import Caller, GitBackend, PipeReadingSpawner
from gitserve.web import MAX_PUSH_SIZE, GitServer, GitSite, RootResource

DEFAULT_LISTEN = "tcp:8080"

_SIZE_SUFFIXES = {"k": 1024, "m": 1024**2, "g": 1024**3}


def parseSize(text: str) -> int:
    """
    A byte count with an optional k/m/g suffix (binary, as git's own sizes).

    @raise usage.UsageError: for anything else.
    """
    value = text.strip().lower()
    scale = _SIZE_SUFFIXES.get(value[-1:], 1)
    digits = value[:-1] if scale != 1 else value
    if not digits.isdigit():
        raise usage.UsageError(f"not a size: {text!r} (use e.g. 500m or 2g)")
    return int(digits) * scale


class Options(usage.Options):
    """The command line of `twistd gitserve`."""

    synopsis = "[options]"
    longdesc = (
        "Serve every git repository under --root over smart and dumb HTTP(S). "
        "Fetch is anonymous; push needs an authenticated user, http.receivepack=true "
        "in the repository, or --anonymous-push."
    )

    optFlags = [
        ["anonymous-push", None, "Allow push without authentication on every repository."],
        ["require-export-ok", None, "Serve only repositories holding git-daemon-export-ok."],
    ]
    optParameters = [
        ["root", None, ".", "The directory of repositories to serve."],
        ["max-push-size", None, "2g", "Refuse push bodies larger than this (k/m/g suffixes)."],
    ]

    compData = usage.Completions(optActions={"root": usage.CompleteDirs()})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """A Twisted endpoint to listen on (repeatable; default tcp:8080)."""
        self["listen"].append(description)

    def postOptions(self) -> None:
        from twisted.internet import reactor

        root = Path(self["root"])
        if not root.is_dir():
            raise usage.UsageError(f"--root {self['root']!r} is not a directory")
        self["root"] = root.resolve()
        self["max-push-size"] = parseSize(self["max-push-size"])
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        self["endpoints"] = []
        for description in self["listen"]:
            try:
                endpoint = endpoints.serverFromString(reactor, description)
            except (ValueError, KeyError, TypeError) as e:
                raise usage.UsageError(f"--listen {description!r} is not an endpoint: {e}") from e
            self["endpoints"].append((description, endpoint))


class ListeningService(Service):
    """
    Listens on one endpoint and says so, with the real address: a readiness
    line for scripts and tests (and the port actually bound for C{tcp:0}).
    """

    log = Logger()

    def __init__(
        self,
        description: str,
        endpoint: IStreamServerEndpoint,
        site: GitSite,
        reactor: IReactorCore,
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.port: IListeningPort | None = None
        self.listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        self.listening = self.endpoint.listen(self.site)
        self.listening.addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        address = port.getHost()
        where = f"{address.host}:{address.port}" if hasattr(address, "port") else str(address)
        self.log.info(
            "gitserve listening on {where} ({description})",
            where=where,
            description=self.description,
        )
        return port

    def _failed(self, failure: Failure) -> None:
        self.log.failure("cannot listen on {description}", failure, description=self.description)
        self.reactor.stop()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


def makeService(options: Options) -> IService:
    """Assemble the daemon: one site, one listening service per --listen."""
    from twisted.internet import reactor

    log = Logger()
    gitPath = shutil.which("git", path=os.environ.get("PATH"))
    available = gitPath is not None
    if gitPath is None:
        log.warn(
            "no git binary on PATH: fetches are served over the dumb protocol only, "
            "and pushes will fail"
        )
        gitPath = "git"
    configs = ConfigCache()
    backend = GitBackend(
        reactor=PipeReadingSpawner(reactor),
        gitPath=gitPath,
        environ=dict(os.environ),
        available=available,
    )
    server = GitServer(
        root=options["root"],
        policy=Policy(
            configs=configs,
            anonymousPush=options["anonymous-push"],
            requireExportOk=options["require-export-ok"],
        ),
        backend=backend,
        clock=reactor,
        configs=configs,
        maxPushSize=options["max-push-size"],
        capabilities=CapabilityCache(
            gitPath=gitPath, environment=backend.environment(Caller(remoteAddr=""))
        ),
        runBlocking=partial(deferToThreadPool, reactor, reactor.getThreadPool()),
    )
    site = GitSite(RootResource(server))
    top = MultiService()
    for description, endpoint in options["endpoints"]:
        ListeningService(description, endpoint, site, reactor).setServiceParent(top)
    log.info("gitserve serving {root}", root=str(options["root"]))
    return top


__all__ = ["Options", "makeService", "MAX_PUSH_SIZE"]
