"""
The connections a door has open, and who waits for none to be left: what a
graceful shutdown asks of every door (HTTP, SSH, git://) alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

_Connection = TypeVar("_Connection")


class OpenConnections(Generic[_Connection]):
    """
    A set of open connections whose emptying can be waited for.

    Iterating gives a copy, so a loop may close (and so remove) what it
    visits.
    """

    def __init__(self) -> None:
        self._open: set[_Connection] = set()
        self._waiters: list[Deferred[None]] = []

    def add(self, connection: _Connection) -> None:
        """A connection was made."""
        self._open.add(connection)

    def discard(self, connection: _Connection) -> None:
        """A connection ended; the last one to end fires every waiter."""
        self._open.discard(connection)
        if not self._open:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenEmpty(self) -> Deferred[None]:
        """Fires once no connection is left (at once if none is open)."""
        if not self._open:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def __iter__(self) -> Iterator[_Connection]:
        return iter(list(self._open))

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, connection: object) -> bool:
        return connection in self._open
