"""
One listening endpoint as a service, and the readiness line it logs.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from gitserve.http.channel import GitSite


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
        site: GitSite | IProtocolFactory,
        reactor: IReactorCore,
        notBefore: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        """
        @param notBefore: when stopping, close the port only once what this
            returns has fired (a drain announcement: see
            L{gitserve.app.shutdown.DrainAnnouncement}).
        """
        self.notBefore = notBefore
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
        # An IP address has a host and a port; a unix socket only a name.
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        where = str(address) if number is None else f"{host}:{number}"
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
        if self.port is None:
            return None
        port = self.port
        if self.notBefore is None:
            return port.stopListening()
        return self.notBefore().addCallback(lambda _: port.stopListening())


__all__ = ["ListeningService"]
