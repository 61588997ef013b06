"""OpenConnections: what a graceful shutdown waits on, for every door."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gitserve.core.connections import OpenConnections


class OpenConnectionsTests(SynchronousTestCase):
    def test_whenEmptyFiresOnceTheLastConnectionEnds(self) -> None:
        """Waiters fire when the last open connection is discarded, not before."""
        connections: OpenConnections[str] = OpenConnections()
        connections.add("a")
        connections.add("b")
        waiting = connections.whenEmpty()
        connections.discard("a")
        self.assertNoResult(waiting)
        connections.discard("b")
        self.assertIsNone(self.successResultOf(waiting))

    def test_whenEmptyAtOnceWithNothingOpen(self) -> None:
        """With nothing open, whenEmpty has already fired."""
        self.assertIsNone(self.successResultOf(OpenConnections().whenEmpty()))

    def test_iterationIsACopy(self) -> None:
        """A loop may discard what it visits (closing a connection removes it)."""
        connections: OpenConnections[int] = OpenConnections()
        for n in range(3):
            connections.add(n)
        for n in connections:
            connections.discard(n)
        self.assertEqual(len(connections), 0)
        self.assertNotIn(1, connections)
