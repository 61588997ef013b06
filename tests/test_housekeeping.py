"""
The sweep of push quarantines left by receive-packs that a signal killed:
only stale ones go, live ones (recently written anywhere inside) stay, and
nothing outside the repository is ever followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from gitserve.core.housekeeping import STALE_QUARANTINE_AGE, sweepStaleQuarantines

NOW = 1_800_000_000.0


def age(path: Path, seconds: float) -> None:
    """Set the mtime of C{path} and everything under it to C{seconds} before NOW."""
    then = NOW - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then), follow_symlinks=False)


def quarantine(gitDir: Path, name: str, files: dict[str, bytes]) -> Path:
    path = gitDir / "objects" / f"tmp_objdir-incoming-{name}"
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_staleQuarantineIsRemoved(tmp_path: Path) -> None:
    """A quarantine untouched for longer than the age is removed, with its contents."""
    stale = quarantine(tmp_path, "old", {"pack/tmp_pack_x": b"x" * 100, "ab/cdef": b"y"})
    age(stale, STALE_QUARANTINE_AGE + 1)
    assert sweepStaleQuarantines(tmp_path, now=NOW) == [stale]
    assert not stale.exists()


def test_recentlyWrittenQuarantineStays(tmp_path: Path) -> None:
    """One file still being written deep inside keeps an old quarantine alive."""
    live = quarantine(tmp_path, "live", {"pack/tmp_pack_x": b"x"})
    age(live, STALE_QUARANTINE_AGE * 10)
    os.utime(live / "pack" / "tmp_pack_x", (NOW - 5, NOW - 5))
    assert sweepStaleQuarantines(tmp_path, now=NOW) == []
    assert live.exists()


def test_otherObjectDirectoriesAreNeverTouched(tmp_path: Path) -> None:
    """Only tmp_objdir-incoming-* directories are candidates, however old the rest is."""
    objects = tmp_path / "objects"
    (objects / "pack").mkdir(parents=True)
    (objects / "ab").mkdir()
    (objects / "tmp_objdir-incoming-file").write_bytes(b"not a directory")
    age(objects, STALE_QUARANTINE_AGE * 10)
    assert sweepStaleQuarantines(tmp_path, now=NOW) == []
    assert sorted(p.name for p in objects.iterdir()) == ["ab", "pack", "tmp_objdir-incoming-file"]


def test_symlinkedQuarantineIsNotFollowed(tmp_path: Path) -> None:
    """A quarantine name that is a symlink (to anywhere) is left alone, target included."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"keep me")
    (tmp_path / "repo" / "objects").mkdir(parents=True)
    link = tmp_path / "repo" / "objects" / "tmp_objdir-incoming-link"
    link.symlink_to(outside)
    age(outside, STALE_QUARANTINE_AGE * 10)
    assert sweepStaleQuarantines(tmp_path / "repo", now=NOW) == []
    assert (outside / "precious").read_bytes() == b"keep me"


def test_missingObjectsDirectoryIsNothingToSweep(tmp_path: Path) -> None:
    """A repository without objects/ (gone meanwhile) sweeps nothing and raises nothing."""
    assert sweepStaleQuarantines(tmp_path / "gone", now=NOW) == []
