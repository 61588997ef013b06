"""
The dumb protocol's files, generated from a repository as it is now: C{HEAD},
C{info/refs} and C{objects/info/packs}, byte for byte what
C{git update-server-info} would have written, so a repository nobody ran
update-server-info in is dumb-clonable and the answer is never stale; and
repository files opened safely for a front door (or L{gitserve.export}) to
send.

Transport-neutral: the HTTP handlers in L{gitserve.http.dumb} and the static
export share it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dulwich.objects import ObjectID, Tag
from dulwich.refs import (
    PackedRefsException,
    Ref,
    read_packed_refs_with_peeled,
)
from dulwich.repo import Repo
from twisted.logger import Logger

log = Logger()

# A pack in objects/pack that git itself would list: the index is written
# last when git creates a pack (the .pack is renamed into place first), so an
# index with its pack beside it is a finished pack, while tmp_pack_*,
# tmp_idx_* and the incoming-*/ quarantine directories never match.
PACK_INDEX_NAME = re.compile(r"(pack-(?:[0-9a-f]{40}|[0-9a-f]{64}))\.idx")


# Refs


def isRefHidden(refname: bytes, patterns: Sequence[bytes]) -> bool:
    """
    Whether a hideRefs pattern list hides C{refname}, by git's
    C{ref_is_hidden()} rules: the last matching pattern wins, C{!} negates,
    a leading C{^} names the full (un-namespaced) ref, and a pattern matches
    the ref itself or any ref below it (C{refs/pull} hides
    C{refs/pull/1/head} but not C{refs/pulls}).
    """
    for pattern in reversed(patterns):
        negated = pattern.startswith(b"!")
        if negated:
            pattern = pattern[1:]
        if pattern.startswith(b"^"):
            # We serve no namespaces, so the full name is the name.
            pattern = pattern[1:]
        if refname == pattern or refname.startswith(pattern + b"/"):
            return not negated
    return False


# git's check_refname_format() rules as one search (dulwich's checker, run
# per ref, was most of the time info/refs took with thousands of refs):
# control characters, space and ~^:?*[\, "..", "@{", empty components, a
# component starting with "." or ending with ".lock", a trailing "/" or ".".
_BAD_REFNAME = re.compile(rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|(?:^|/)\.|\.lock(?:/|$)|[/.]$")


def isValidRefName(name: bytes) -> bool:
    """Whether git would accept C{name} (under C{refs/}) as a ref name."""
    return name.startswith(b"refs/") and _BAD_REFNAME.search(name) is None


class _Missing:
    """The ref's own object is absent: git skips such a ref entirely."""


_MISSING = _Missing()


def _peel(repo: Repo, sha: bytes) -> bytes | None | _Missing:
    """
    What a ref's object peels to, as git's C{deref_tag()} peels it: through
    every level of tag (a tag of a tag peels to the commit).

    @return: L{None} when the object is not a tag (no C{^{}} line),
        C{_MISSING} when the object itself is missing (no line at all), the
        peeled object id otherwise. A tag whose target is missing gives
        L{None}, as C{deref_tag()} failing does in git.
    """
    store = repo.object_store
    try:
        typeNum, raw = store.get_raw(ObjectID(sha))
    except KeyError:
        return _MISSING
    if typeNum != Tag.type_num:
        return None
    while typeNum == Tag.type_num:
        # A tag object's first header line is always "object <id>"; reading
        # just that avoids parsing (and validating) the whole tag.
        firstLine = raw.split(b"\n", 1)[0]
        if not firstLine.startswith(b"object "):
            return None
        sha = firstLine[len(b"object ") :]
        try:
            typeNum, raw = store.get_raw(ObjectID(sha))
        except KeyError:
            return None
    return sha


def _fullyPeeledPackedRefs(gitDir: Path) -> dict[bytes, tuple[bytes, bytes | None]]:
    """
    What C{packed-refs} already says about peeling, when git wrote it with
    the C{fully-peeled} trait: C{{name: (id, peeled id or None)}}, where
    L{None} means "not a tag". Without that trait (very old git) a ref
    without a C{^} line may still be a tag, so nothing is trusted.
    """
    try:
        with open(gitDir / "packed-refs", "rb") as f:
            header = f.readline()
            if not (header.startswith(b"# pack-refs with:") and b" fully-peeled" in header):
                return {}
            return {name: (sha, peeled) for sha, name, peeled in read_packed_refs_with_peeled(f)}
    except (OSError, PackedRefsException):
        return {}


def generateInfoRefs(gitDir: Path, hidden: Sequence[bytes] = ()) -> bytes:
    """
    The dumb protocol's ref list, identical to the C{info/refs} that
    C{git update-server-info} writes: every ref under C{refs/} in byte order
    (HEAD itself left out), C{<id> TAB <name> LF}, followed for an annotated
    tag by C{<peeled id> TAB <name>^{} LF}.

    Objects are read only where C{packed-refs} cannot say what a ref peels
    to (loose refs, or a packed ref a loose one now overrides), and each
    object at most once: a repository with thousands of tags answers in
    milliseconds, not one object read per ref.

    @param gitDir: the repository's git directory.
    @param hidden: hideRefs patterns (L{Policy.hiddenRefs}); refs they hide
        are left out, as upload-pack leaves them out of its advertisement.
    """
    lines = []
    with Repo(str(gitDir)) as repo:
        refs = repo.refs
        store = repo.object_store
        packed = _fullyPeeledPackedRefs(gitDir)
        peels: dict[bytes, bytes | None | _Missing] = {}
        for name in sorted(refs.allkeys()):
            # git's ref iteration skips names it would refuse to create
            # (foo.lock leftovers, "..", control characters).
            if not isValidRefName(name):
                continue
            if isRefHidden(name, hidden):
                continue
            try:
                sha = refs[name]
            except KeyError:
                # A symbolic ref whose target is gone: git skips broken refs.
                continue
            known = packed.get(name)
            if sha not in peels:
                if known is not None and known[0] == sha:
                    # http-backend still insists the object exists.
                    peels[sha] = known[1] if ObjectID(sha) in store else _MISSING
                else:
                    peels[sha] = _peel(repo, sha)
            peeled = peels[sha]
            if isinstance(peeled, _Missing):
                continue
            lines.append(b"%s\t%s\n" % (sha, name))
            if peeled is not None:
                lines.append(b"%s\t%s^{}\n" % (peeled, name))
    return b"".join(lines)


def generateHead(gitDir: Path) -> bytes:
    """
    C{HEAD} as http-backend's C{get_head()} sends it: C{ref: <target> LF}
    when HEAD is a symbolic ref (to the last ref of the chain), the object id
    when it is detached, and nothing at all while HEAD is unborn.
    """
    with Repo(str(gitDir)) as repo:
        try:
            chain, sha = repo.refs.follow(Ref(b"HEAD"))
        except (KeyError, ValueError):
            return b""
    if sha is None:
        return b""
    if len(chain) > 1:
        return b"ref: %s\n" % (chain[-1],)
    return sha + b"\n"


def listPacks(objectsDir: Path, root: Path) -> list[str]:
    """
    The finished local packs in C{objectsDir/pack}, newest first (git's own
    C{sort_pack()} order), as C{pack-<hex>.pack} names.

    Packs borrowed through alternates are left out, as git leaves them out:
    a dumb client cannot fetch them from here.

    @param root: the served root; a pack whose C{.pack} or C{.idx} really
        lies outside it is left out.
    """
    packDir = objectsDir / "pack"
    try:
        names = os.listdir(packDir)
    except OSError:
        return []
    realRoot = Path(os.path.realpath(root))
    found: list[tuple[int, str]] = []
    for name in names:
        match = PACK_INDEX_NAME.fullmatch(name)
        if match is None:
            continue
        packName = match.group(1) + ".pack"
        try:
            st = os.stat(packDir / packName)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        # A symlinked .pack or .idx leading out of the root would be refused
        # by openServedFile anyway; listing it would still tell a client that
        # the file exists and send every dumb clone after a 404 it cannot get
        # past. Whoever planted the link may be able to write in the root but
        # must not be able to make us name (or serve) what lies outside it.
        outside = [
            candidate
            for candidate in (name, packName)
            if not _inside(Path(os.path.realpath(packDir / candidate)), realRoot)
        ]
        if outside:
            log.warn(
                "Leaving {pack} out of objects/info/packs: {files} lead outside the served root",
                pack=str(packDir / packName),
                files=", ".join(outside),
            )
            continue
        found.append((-int(st.st_mtime), packName))
    found.sort()
    return [packName for _, packName in found]


def formatInfoPacks(packNames: Sequence[str]) -> bytes:
    """C{objects/info/packs} text for the given packs, as update-server-info writes it."""
    return b"".join(b"P %s\n" % name.encode("ascii") for name in packNames) + b"\n"


def generateInfoPacks(gitDir: Path, root: Path) -> bytes:
    """
    C{objects/info/packs} for a repository, built from the packs present now.

    @param root: the served root; packs leading outside it are not listed.
    """
    return formatInfoPacks(listPacks(gitDir / "objects", root))


# Files


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _realPath(fd: int, path: Path) -> Path:
    """
    Where an open descriptor really is. On Linux C{/proc/self/fd} names the
    file that was opened, so no rename or symlink swap between the check and
    the open can fool it; elsewhere, fall back to resolving the path.
    """
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return Path(os.path.realpath(path))


@dataclass
class ServedFile:
    """
    A file opened for serving, with the C{stat} taken from the open
    descriptor (so the headers describe exactly the bytes that will be sent).
    """

    fileObject: BinaryIO
    size: int
    mtime: float
    etag: bytes

    def close(self) -> None:
        """Release the descriptor."""
        self.fileObject.close()


def openServedFile(root: Path, path: Path) -> ServedFile | None:
    """
    Open a repository file for a dumb client, or refuse.

    @param root: the served root, resolved.
    @param path: the file, built from the resolved git directory and a route
        the route table matched (hex digits only, so no traversal in it).
    @return: the open file, or L{None} (answer 404) when it is missing, not a
        regular file, or really lives outside C{root}.
    """
    try:
        # O_NONBLOCK: opening a FIFO someone planted would otherwise block the
        # reactor forever; it is refused below as not a regular file.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        # Security: a symlink inside a repository (objects/pack/pack-x.pack
        # -> /etc/shadow, or objects -> /home/other/repo.git/objects) must not
        # let a client read a file outside the served root. Checked on the
        # opened descriptor, after the open, so it cannot race with a swap.
        if not _inside(_realPath(fd, path), root):
            log.warn("Refusing {path}: it leads outside the served root", path=str(path))
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    etag = b'"%x-%x-%x"' % (st.st_ino, st.st_size, st.st_mtime_ns)
    return ServedFile(os.fdopen(fd, "rb"), st.st_size, st.st_mtime, etag)
