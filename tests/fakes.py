"""Fakes shared by the unit tests: each one lives here once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred


class QueuedThreadRunner:
    """
    A stand-in for C{deferToThread} that runs nothing until told to.

    Tests see what was handed to the thread pool (so they can prove that
    work left the reactor thread) and decide when it completes.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred]] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        self.pending.append((f, args, d))
        return d

    def runAll(self) -> None:
        """Run every queued call, as the pool would, and fire its Deferred."""
        while self.pending:
            f, args, d = self.pending.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)
