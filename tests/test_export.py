"""Tests for gitserve-export: a static dumb-clonable copy, updated incrementally and in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitserve.core.dumbfiles import generateInfoRefs, listPacks
from gitserve.export import LOCK_NAME, export, main, parseInfoRefs

from .conftest import GitClient
from .gitrepos import mixedRepository


@pytest.fixture
def repo(git: GitClient, tmp_path: Path) -> Path:
    return mixedRepository(git, tmp_path)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


def packObjectCount(git: GitClient, idx: Path) -> int:
    """How many objects a pack holds, as git itself counts them (verifying the pack)."""
    out = git.output("verify-pack", "-v", str(idx))
    return sum(1 for line in out.splitlines() if re.match(r"^[0-9a-f]{40} ", line))


def test_exportWritesDumbLayout(git: GitClient, repo: Path, tmp_path: Path) -> None:
    """DEST gets HEAD, info/refs, objects/info/packs and a valid pack holding every object."""
    dest = tmp_path / "dest"
    result = export(repo, dest)
    assert (dest / "HEAD").read_bytes() == b"ref: refs/heads/main\n"
    assert (dest / "info" / "refs").read_bytes() == generateInfoRefs(repo)
    (pack,) = listPacks(dest / "objects", dest)
    assert result.pack == pack
    assert (dest / "objects" / "info" / "packs").read_bytes() == b"P %s\n\n" % pack.encode()
    allObjects = git.output(
        "cat-file", "--batch-all-objects", "--batch-check", cwd=repo
    ).splitlines()
    idx = dest / "objects" / "pack" / pack.replace(".pack", ".idx")
    assert packObjectCount(git, idx) == len(allObjects) == result.objects
    assert not (dest / LOCK_NAME).exists()


def test_exportLeavesSourceUntouched(repo: Path, tmp_path: Path) -> None:
    """Exporting writes nothing into SRC: no info/refs, no repack, no timestamps."""
    before = snapshot(repo)
    export(repo, tmp_path / "dest")
    assert snapshot(repo) == before


def test_exportIsIncremental(git: GitClient, repo: Path, tmp_path: Path) -> None:
    """A re-run packs only what new refs add and keeps old packs; a no-op run writes nothing."""
    dest = tmp_path / "dest"
    first = export(repo, dest)
    unchanged = snapshot(dest)
    again = export(repo, dest)
    assert (again.pack, again.objects) == (None, 0)
    assert snapshot(dest) == unchanged

    work = tmp_path / "work"
    git.commit(work, "c.txt", "third\n")
    git.run("push", "-q", "origin", "main", cwd=work)
    second = export(repo, dest)
    # One commit, its tree, one new blob.
    assert second.objects == 3
    assert set(listPacks(dest / "objects", dest)) == {first.pack, second.pack}
    idx = dest / "objects" / "pack" / second.pack.replace(".pack", ".idx")
    assert packObjectCount(git, idx) == 3
    newMain = git.output("rev-parse", "refs/heads/main", cwd=repo).strip().encode()
    assert parseInfoRefs((dest / "info" / "refs").read_bytes())[b"refs/heads/main"] == newMain


def test_exportOrderKeepsReadersConsistent(git: GitClient, repo: Path, tmp_path: Path) -> None:
    """Files land pack, idx, objects/info/packs, info/refs, HEAD; each pack before it is named."""
    dest = tmp_path / "dest"
    landed: list[Path] = []

    def check(path: Path) -> None:
        # At every moment a reader could look, whatever DEST's info/packs
        # names exists in full, and info/refs names only objects in DEST's packs.
        landed.append(path)
        packsFile = dest / "objects" / "info" / "packs"
        if packsFile.exists():
            for line in packsFile.read_text().split():
                if line.startswith("pack-"):
                    assert (dest / "objects" / "pack" / line).exists()
                    assert (dest / "objects" / "pack" / line.replace(".pack", ".idx")).exists()

    export(repo, dest, check)
    names = [str(p) for p in landed]
    assert names[0].endswith(".pack") and names[1].endswith(".idx")
    assert names[2:] == ["objects/info/packs", "info/refs", "HEAD"]


def test_interruptedExportLeavesOldRefs(git: GitClient, repo: Path, tmp_path: Path) -> None:
    """A crash after the new pack, before info/refs, leaves the old refs; a re-run finishes."""
    dest = tmp_path / "dest"
    export(repo, dest)
    oldRefs = (dest / "info" / "refs").read_bytes()
    work = tmp_path / "work"
    git.commit(work, "c.txt", "third\n")
    git.run("push", "-q", "origin", "main", cwd=work)

    def crashBeforeRefs(path: Path) -> None:
        if path == Path("objects", "info", "packs"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(repo, dest, crashBeforeRefs)
    assert (dest / "info" / "refs").read_bytes() == oldRefs
    assert len(listPacks(dest / "objects", dest)) == 2
    assert not (dest / LOCK_NAME).exists()
    # The re-run trusts only what info/refs promised, so it repacks the new
    # objects (a redundant pack, never a missing object).
    result = export(repo, dest)
    assert result.objects == 3
    assert (dest / "info" / "refs").read_bytes() == generateInfoRefs(repo)


def test_exportLeavesOutHiddenRefs(git: GitClient, repo: Path, tmp_path: Path) -> None:
    """Refs SRC hides from fetches (transfer.hideRefs) are not published."""
    git.run("update-ref", "refs/hidden/secret", "refs/heads/side", cwd=repo)
    git.run("config", "transfer.hideRefs", "refs/hidden", cwd=repo)
    export(repo, tmp_path / "dest")
    assert b"refs/hidden" not in (tmp_path / "dest" / "info" / "refs").read_bytes()


def test_exportRefusesConcurrentRun(repo: Path, tmp_path: Path, capsys) -> None:
    """A second export into a locked DEST fails with a message and touches nothing."""
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / LOCK_NAME).write_text("123\n")
    assert main([str(repo), str(dest)]) == 1
    assert "another export is running" in capsys.readouterr().err
    assert sorted(os.listdir(dest)) == [LOCK_NAME]


def test_exportRefusesNonRepository(tmp_path: Path, capsys) -> None:
    """SRC that is not a repository is a one-line error, not a traceback."""
    (tmp_path / "plain").mkdir()
    assert main([str(tmp_path / "plain"), str(tmp_path / "dest")]) == 1
    assert "is not a git repository" in capsys.readouterr().err


def test_exportRefusesShallowSource(git: GitClient, repo: Path, tmp_path: Path, capsys) -> None:
    """A shallow SRC is refused: dumb readers would miss the cut-off ancestors."""
    shallow = tmp_path / "shallow.git"
    git.run("clone", "-q", "--bare", "--depth=1", f"file://{repo}", str(shallow))
    assert main([str(shallow), str(tmp_path / "dest")]) == 1
    assert "shallow" in capsys.readouterr().err
    assert not (tmp_path / "dest" / "info" / "refs").exists()


def test_mainPrintsSummary(repo: Path, tmp_path: Path, capsys) -> None:
    """The console script reports refs and objects; --verbose names each file in order."""
    assert main(["-v", str(repo), str(tmp_path / "dest")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-4:-1] == ["objects/info/packs", "info/refs", "HEAD"]
    assert re.fullmatch(r".*: 7 refs, \d+ new objects in pack-[0-9a-f]{40}\.pack", out[-1])


# Round trip through a plain static file server and the real git client


@pytest.fixture
def staticServer(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """C{python -m http.server} on a free loopback port, serving a fresh directory."""
    served = tmp_path / "www"
    served.mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "--directory",
            str(served),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"port (\d+)", line)
        assert match, f"http.server said: {line!r}"
        yield f"http://127.0.0.1:{match.group(1)}", served
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("smart", ["0", "1"])
def test_exportRoundTripsThroughStaticServer(
    git: GitClient, repo: Path, tmp_path: Path, staticServer: tuple[str, Path], smart: str
) -> None:
    """An export on a plain static server clones and fetches with real git; fsck is clean."""
    url, served = staticServer
    export(repo, served / "mirror.git")
    clone = tmp_path / "clone"
    # With GIT_SMART_HTTP=1 git asks for smart first and falls back to dumb
    # on the static server's plain answer, as it would in the field.
    git.run("clone", "-q", f"{url}/mirror.git", str(clone), env={"GIT_SMART_HTTP": smart})
    git.run("fsck", "--strict", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == git.output(
        "rev-parse", "main", cwd=repo
    )
    assert git.output("tag", cwd=clone).split() == ["light", "v1", "v1-again", "v2"]

    work = tmp_path / "work"
    newHead = git.commit(work, "c.txt", "third\n")
    git.run("push", "-q", "origin", "main", cwd=work)
    export(repo, served / "mirror.git")
    git.run("fetch", "-q", "origin", cwd=clone, env={"GIT_SMART_HTTP": smart})
    git.run("fsck", "--strict", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone).strip() == newHead
    assert (clone / "c.txt").exists() is False  # fetched, not merged
    assert git.output("show", "origin/main:c.txt", cwd=clone) == "third"
