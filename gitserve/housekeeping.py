"""
Cleaning up after git processes that died without cleaning up themselves.

receive-pack writes an incoming pack into a quarantine directory
(C{objects/tmp_objdir-incoming-*}) and removes it when it exits normally. Since
git 2.38 it no longer removes it when a signal kills it (the cleanup was not
async-signal-safe), and a daemon that dies (SIGKILL, OOM) takes the child's
pipes with it, so the child dies of SIGPIPE and its quarantine stays behind
until C{git gc} prunes it two weeks later. gitserve sweeps such leftovers from
a repository whenever a push to it starts.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

QUARANTINE_PREFIX = "tmp_objdir-incoming-"

# A quarantine nothing has written to for this long belongs to no live push:
# an orphaned receive-pack ends within seconds of losing its stdin, and a live
# one keeps touching the files it writes.
STALE_QUARANTINE_AGE = 600.0


def newestChange(path: Path) -> float:
    """The latest mtime of C{path} or anything under it (symlinks not followed)."""
    newest = path.lstat().st_mtime
    for directory, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            try:
                newest = max(newest, os.lstat(os.path.join(directory, name)).st_mtime)
            except OSError:
                continue
    return newest


def sweepStaleQuarantines(
    gitDir: Path, maxAge: float = STALE_QUARANTINE_AGE, now: float | None = None
) -> list[Path]:
    """
    Remove the quarantine directories of C{gitDir} untouched for C{maxAge}.

    Blocking file-system work: run it in a thread.

    @return: the directories removed.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        entries = list((gitDir / "objects").iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(QUARANTINE_PREFIX) or entry.is_symlink():
            continue
        try:
            if not entry.is_dir() or now - newestChange(entry) < maxAge:
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


class QuarantineSweeper:
    """
    Runs L{sweepStaleQuarantines} for a repository in the reactor's thread
    pool: it may delete a large abandoned pack, and the reactor must not wait
    for that. One sweep per repository at a time.
    """

    log = Logger()

    def __init__(self, reactor: IReactorFromThreads, maxAge: float = STALE_QUARANTINE_AGE):
        self.reactor = reactor
        self.maxAge = maxAge
        self._running: set[Path] = set()

    def sweep(self, gitDir: Path) -> Deferred[list[Path]] | None:
        """Start a sweep of C{gitDir} unless one is under way; its result, for tests."""
        if gitDir in self._running:
            return None
        self._running.add(gitDir)
        swept = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), sweepStaleQuarantines, gitDir, self.maxAge
        )

        def report(removed: list[Path]) -> list[Path]:
            for path in removed:
                self.log.info("removed a stale push quarantine: {path}", path=str(path))
            return removed

        def failed(failure: Failure) -> list[Path]:
            self.log.failure(
                "sweeping push quarantines of {gitDir} failed", failure, gitDir=str(gitDir)
            )
            return []

        swept.addCallbacks(report, failed)
        swept.addBoth(lambda result: (self._running.discard(gitDir), result)[1])
        return swept
