"""
C{gitserve-export SRC DEST}: a static, dumb-clonable copy of a repository.

Where only a static file host exists (object storage, a plain nginx, a
firewalled mirror), a repository is clonable over the dumb protocol if the
host serves C{HEAD}, C{info/refs}, C{objects/info/packs} and the packs they
name. This command writes exactly that into DEST, from SRC, without touching
SRC (no update-server-info there, no repack).

Run again, it updates DEST incrementally: only the objects the new refs need
beyond what DEST's current C{info/refs} already promises go into one new
pack. The order of writes is what keeps a reader (or a half-finished upload
that mirrors the files in the same order) consistent: a pack is complete
(C{.pack}, then C{.idx}) before C{objects/info/packs} lists it, and that is
replaced before C{info/refs} names anything the new pack holds. Every file
is written to a temporary name, synced and renamed, so a reader sees the old
file or the new one, never half of one. Packs are never removed, so a reader
still walking the old refs finds every object it was promised.

The packs written are self-contained (never thin: a dumb client indexes each
pack on its own), reusing the deltas SRC already has between objects that go
into the same pack.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from dulwich.object_store import MissingObjectFinder
from dulwich.objects import ObjectID
from dulwich.pack import PackHint, write_pack_from_container, write_pack_index
from dulwich.refs import Ref
from dulwich.repo import Repo

from gitserve.core.dumbfiles import formatInfoPacks, generateInfoRefs, listPacks
from gitserve.core.policy import Policy
from gitserve.core.repository import ConfigCache, Repository

LOCK_NAME = "gitserve-export.lock"

T = TypeVar("T")


class ExportError(Exception):
    """Something the user must fix; the message says what."""


@dataclass(frozen=True)
class ExportResult:
    """
    What one export run did.

    @ivar refs: how many refs DEST now advertises.
    @ivar objects: how many objects went into the new pack (0: none written).
    @ivar pack: the new pack's file name, or L{None}.
    """

    refs: int
    objects: int
    pack: str | None


def parseInfoRefs(text: bytes) -> dict[bytes, bytes]:
    """
    The refs an C{info/refs} text names, C{{name: id}}; peeled C{^{}} lines
    are left out (they name objects the tag lines already reach).
    """
    refs = {}
    for line in text.splitlines():
        sha, _, name = line.partition(b"\t")
        if name and not name.endswith(b"^{}"):
            refs[name] = sha
    return refs


def _writeThenRename(
    directory: Path, prefix: str, write: Callable[[BinaryIO], T], finalName: Callable[[T], str]
) -> T:
    """
    Write a file under a temporary name in C{directory}, sync it, and rename
    it to C{finalName(result)}: a reader sees no file or the whole file,
    never part of one. The final name may depend on what was written (a
    pack is named after its checksum).

    @return: what C{write} returned.
    """
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        # Static hosts serve what the file mode lets them read.
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / finalName(result))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return result


def writeAtomically(path: Path, data: bytes) -> bool:
    """
    Replace C{path} with C{data} so a reader sees the old file or the new one,
    never a mixture.

    @return: whether the file changed (an identical file is left alone, so a
        re-run that changes nothing changes no timestamps either).
    """
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    _writeThenRename(path.parent, path.name + "_", lambda f: f.write(data), lambda _: path.name)
    return True


def _syncDirectory(path: Path) -> None:
    """Make renames into C{path} durable before anything that depends on them."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def exportLock(dest: Path) -> Iterator[None]:
    """
    One export into DEST at a time: two interleaved runs could each replace
    C{info/refs} with refs whose objects only the other one packed.
    """
    dest.mkdir(parents=True, exist_ok=True)
    lock = dest / LOCK_NAME
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise ExportError(
            f"{lock} exists: another export is running, or one crashed "
            "(then remove the file and run again)"
        ) from None
    try:
        os.write(fd, b"%d\n" % os.getpid())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


def _writePack(
    repo: Repo, objectIds: Sequence[tuple[ObjectID, PackHint | None]], packDir: Path
) -> str:
    """
    Write one self-contained pack (and its v2 index) of C{objectIds}.

    The C{.pack} is renamed into place before the C{.idx} is written: an
    index with its pack beside it is how git (and L{listPacks}) recognise a
    finished pack, so an interrupted run leaves nothing that looks like one.

    @return: the pack's file name, C{pack-<checksum>.pack} as git names packs.
    """
    packDir.mkdir(parents=True, exist_ok=True)
    # other_haves stays empty: only deltas whose base goes into this same
    # pack are reused, so the pack is never thin.
    entries, checksum = _writeThenRename(
        packDir,
        "tmp_pack_",
        lambda f: write_pack_from_container(
            f.write, repo.object_store, objectIds, object_format=repo.object_format
        ),
        lambda result: f"pack-{result[1].hex()}.pack",
    )
    base = "pack-" + checksum.hex()
    index = sorted((sha, offset, crc) for sha, (offset, crc) in entries.items())
    _writeThenRename(
        packDir,
        "tmp_idx_",
        lambda f: write_pack_index(f, index, checksum, version=2),
        lambda _: base + ".idx",
    )
    _syncDirectory(packDir)
    return base + ".pack"


def _headText(repo: Repo) -> bytes:
    """
    HEAD for a static host: the symbolic ref as it stands (even while its
    branch is unborn, so a clone still learns the default branch), or the
    detached object id.
    """
    raw = repo.refs.read_ref(Ref(b"HEAD"))
    if raw is None:
        raise ExportError("the repository has no HEAD")
    return raw.strip() + b"\n"


def export(
    src: Path, dest: Path, landed: Callable[[Path], None] = lambda path: None
) -> ExportResult:
    """
    Make DEST a static dumb-clonable copy of SRC, or bring it up to date.

    @param src: a git repository (bare, or a work tree with C{.git}).
    @param dest: the directory to write; created if missing.
    @param landed: told each file's path (relative to DEST) once it is in
        place, in order: the C{--verbose} listing, and the order uploads
        to a remote host must follow.
    @raise ExportError: SRC is not a repository or is shallow, or DEST is
        locked.
    """
    try:
        repo = Repo(str(src))
    except Exception as e:  # dulwich raises NotGitRepository and OSErrors
        raise ExportError(f"{src} is not a git repository: {e}") from None
    with repo:
        if repo.get_shallow():
            # The dumb protocol walks every parent; a shallow copy would
            # publish history whose ancestors no reader could ever fetch.
            raise ExportError(f"{src} is a shallow clone: export a complete repository")
        gitDir = Path(repo.controldir()).resolve()
        # Refs hidden from fetches in SRC are not published either.
        repository = Repository(gitDir=gitDir, name=str(src))
        hidden = Policy(configs=ConfigCache()).hiddenRefs(repository)
        with exportLock(dest):
            infoRefs = generateInfoRefs(gitDir, hidden)
            wanted = parseInfoRefs(infoRefs)
            try:
                already = parseInfoRefs((dest / "info" / "refs").read_bytes())
            except FileNotFoundError:
                already = {}
            # What DEST's current info/refs names is in DEST with all it
            # reaches (it was written last, after the packs). Refs SRC no
            # longer has the objects for are simply not used as a base.
            haves = {
                ObjectID(sha) for sha in already.values() if ObjectID(sha) in repo.object_store
            }
            wants = {ObjectID(sha) for sha in wanted.values()} - haves
            packName = None
            objectIds: list[tuple[ObjectID, PackHint | None]] = []
            if wants:
                finder = MissingObjectFinder(repo.object_store, haves=haves, wants=wants)
                objectIds = list(finder)
            if objectIds:
                packName = _writePack(repo, objectIds, dest / "objects" / "pack")
                landed(Path("objects", "pack", packName))
                landed(Path("objects", "pack", packName.replace(".pack", ".idx")))
            for path, data in (
                # DEST is what the static server serves: its packs must lie in it.
                (
                    Path("objects", "info", "packs"),
                    formatInfoPacks(listPacks(dest / "objects", dest)),
                ),
                (Path("info", "refs"), infoRefs),
                (Path("HEAD"), _headText(repo)),
            ):
                if writeAtomically(dest / path, data):
                    landed(path)
    return ExportResult(refs=len(wanted), objects=len(objectIds), pack=packName)


def main(argv: Sequence[str] | None = None) -> int:
    """The C{gitserve-export} console script."""
    parser = argparse.ArgumentParser(
        prog="gitserve-export",
        description=(
            "Write a static, dumb-clonable copy of a git repository into DEST "
            "(HEAD, info/refs, objects/info/packs and packs), ready for any "
            "static file host. Run again to update DEST incrementally."
        ),
    )
    parser.add_argument("src", metavar="SRC", type=Path, help="the repository to export")
    parser.add_argument("dest", metavar="DEST", type=Path, help="the directory to write")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="name each file as it lands, in the order an upload must follow",
    )
    args = parser.parse_args(argv)
    landed = (lambda path: print(path)) if args.verbose else (lambda path: None)
    try:
        result = export(args.src, args.dest, landed)
    except ExportError as e:
        print(f"gitserve-export: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        if result.pack is None:
            print(f"{args.dest}: {result.refs} refs, no new objects")
        else:
            print(f"{args.dest}: {result.refs} refs, {result.objects} new objects in {result.pack}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
