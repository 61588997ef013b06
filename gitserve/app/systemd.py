"""
The systemd notification protocol (sd_notify), without libsystemd.

With C{Type=notify}, systemd counts the service as started only when it says
C{READY=1}: units ordered after it, and socket-activated clients, then find it
listening. C{STOPPING=1} tells systemd a stop is under way, so a slow drain is
not mistaken for a hang. The protocol is one datagram per message on the
C{AF_UNIX} socket named by C{$NOTIFY_SOCKET}; a leading C{@} names a socket in
the abstract namespace.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

SocketFactory = Callable[[int, int], socket.socket]


class SystemdNotifier:
    """
    Send state changes to the service manager, when there is one.

    Without C{$NOTIFY_SOCKET} (not under systemd, or not C{Type=notify})
    every notification is a no-op, so callers need not check.
    """

    log = Logger()

    def __init__(
        self, environ: Mapping[str, str], socketFactory: SocketFactory = socket.socket
    ) -> None:
        """
        @param environ: the daemon's environment (C{os.environ}).
        @param socketFactory: makes the datagram socket; tests pass their own.
        """
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            # Abstract namespace: the name starts with a NUL byte, not "@".
            self.address: str | None = "\0" + address[1:]
        elif address.startswith("/"):
            self.address = address
        else:
            # Unset, or a vsock address (vsock:CID:PORT) this module does
            # not speak: nothing to notify.
            self.address = None
        self._socketFactory = socketFactory

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """
        Send one message made of C{VARIABLE=value} lines.

        A failure is logged, not raised: a notification that cannot be sent
        must not stop the daemon from serving (systemd's own sd_notify is
        best-effort in the same way).

        @return: whether the message was sent.
        """
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with self._socketFactory(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # A datagram to a local socket is queued or refused at once;
                # it never waits on the network.
                sock.sendto(message, self.address)
        except OSError as e:
            self.log.warn(
                "could not notify systemd ({assignments}): {error}",
                assignments=", ".join(assignments),
                error=str(e),
            )
            return False
        return True


class SystemdNotifyService(Service):
    """
    Say C{READY=1} once every listener listens, and C{STOPPING=1} when the
    daemon begins to stop.
    """

    log = Logger()

    def __init__(
        self, notifier: SystemdNotifier, whenListening: Callable[[], Deferred], status: str
    ) -> None:
        """
        @param whenListening: returns a L{Deferred} that fires once the
            daemon accepts connections on all its endpoints, and fails if
            one of them could not listen.
        @param status: a one-line description for C{systemctl status}.
        """
        self._notifier = notifier
        self._whenListening = whenListening
        self._status = status

    def startService(self) -> None:
        super().startService()

        def ready(_: object) -> None:
            self._notifier.notify("READY=1", f"STATUS={self._status}")

        def failed(reason: Failure) -> None:
            # No READY=1: systemd times the start out and reports it failed,
            # which is the truth; the endpoint service already logged why.
            self._notifier.notify(f"STATUS=could not listen: {reason.getErrorMessage()}")

        self._whenListening().addCallbacks(ready, failed)

    def stopService(self) -> None:
        super().stopService()
        self._notifier.notify("STOPPING=1", "STATUS=stopping: finishing transfers in progress")
