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

from twisted.logger import Logger

QUARANTINE_PREFIX = "tmp_objdir-incoming-"

# A quarantine nothing has written to for this long belongs to no live push:
# an orphaned receive-pack ends within seconds of losing its stdin, and a live
# one keeps touching the files it writes.
STALE_QUARANTINE_AGE = 600.0

log = Logger()


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

    Blocking file-system work (it may delete a large abandoned pack): run
    it in a thread.

    @return: the directories removed.
    """
    now = time.time() if now is None else now
    removed: list[Path] = []
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
        log.info("removed a stale push quarantine: {path}", path=str(entry))
        removed.append(entry)
    return removed
