"""
What the browser pages show, read from git objects with dulwich: the
repositories a visitor may read, refs, trees, files, logs and commits with
their diffs.

Transport-neutral (no twisted.web here): the HTTP pages in
L{gitserve.http.browse} render what this module returns. Everything is read
from the object store, never from a working tree, so a symlink in a tree is
its target text and is never followed. Every read is bounded (entries,
bytes, commits walked, time), because a repository is attacker-controlled
and a page must not cost more than a page.

Caches are keyed by file stamps (L{gitserve.core.filestamps.stampOf}) of
what a change to the repository's refs must touch: C{HEAD},
C{packed-refs}, the config, the description, and every directory under
C{refs/} (git updates a loose ref by renaming a lock file over it, which
changes its directory's mtime). Commits, trees and blobs are immutable, so
refs are all that can make a page stale.
"""

from __future__ import annotations

import difflib
import os
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dulwich.diff_tree import tree_changes
from dulwich.errors import NotCommitError
from dulwich.objects import Blob, Commit, ObjectID, Tag, Tree
from dulwich.refs import Ref
from dulwich.repo import Repo
from dulwich.walk import Walker

from gitserve.core.dumbfiles import isRefHidden, isValidRefName
from gitserve.core.errors import NotFound, Refusal
from gitserve.core.filestamps import Stamp, stampOf
from gitserve.core.policy import Policy, Service
from gitserve.core.repository import Repository, resolveRepository

# Bounds on the work one page may cause. A page that reaches one says so.
MAX_TREE_ENTRIES = 5000
MAX_BLOB_SHOWN = 1024 * 1024  # bytes of a file shown as text
MAX_HIGHLIGHTED = 256 * 1024  # bytes of a file that get syntax highlighting
MAX_RAW = 32 * 1024 * 1024  # bytes of a file served raw (whole in memory)
MAX_README = 256 * 1024
MAX_LOG_PAGE = 100
MAX_LOG_SKIP = 20000  # commits walked to reach a page of the log
LOG_DEADLINE = 5.0  # seconds of walking for one log page (a log of one path)
MAX_DIFF_FILES = 300
MAX_DIFF_LINES = 5000
MAX_DIFF_BLOB = 512 * 1024  # a side larger than this is not diffed
MAX_REFS_SHOWN = 2000
MAX_REPOSITORIES = 20000
MAX_DEPTH = 6  # folder levels searched for repositories under the root

# A file modified this recently may change again without its stamp changing
# (timestamps are coarser than the time between two writes): git's "racy"
# rule, as the advertisement cache applies it. Nothing keyed by it is kept.
RACY_SECONDS = 2.0

# git init's placeholder description, which says nothing about the repository.
PLACEHOLDER_DESCRIPTION = "Unnamed repository; edit this file 'description' to name the repository."

README_NAMES = ("README.md", "README.markdown", "README", "README.txt", "README.rst", "readme.md")

IMAGE_TYPES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def text(value: bytes) -> str:
    """Bytes from a repository as text for display: invalid UTF-8 replaced, never raised."""
    return value.decode("utf-8", "replace")


def imageType(data: bytes) -> str | None:
    """
    The image type of C{data} by its magic bytes (never by its name): only
    formats a browser cannot run script from (PNG, JPEG, GIF, WebP; never SVG).
    """
    for magic, kind in IMAGE_TYPES.items():
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def isBinary(data: bytes) -> bool:
    """git's own test: a NUL in the first 8000 bytes makes a file binary."""
    return b"\0" in data[:8000]


# -- what pages show ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Person:
    """An author or committer line."""

    name: str
    email: str
    time: int
    offset: int


@dataclass(frozen=True)
class CommitInfo:
    """One commit, decoded for display."""

    id: str
    parents: tuple[str, ...]
    author: Person
    committer: Person
    message: str

    @property
    def subject(self) -> str:
        """The first line of the message."""
        return self.message.split("\n", 1)[0]

    @property
    def body(self) -> str:
        """The message after its first line."""
        return self.message.partition("\n")[2].strip("\n")


@dataclass(frozen=True)
class RefInfo:
    """A branch or a tag, with the commit it names (L{None} if it names no commit)."""

    name: str
    kind: str  # "branch" or "tag"
    commit: CommitInfo | None


@dataclass(frozen=True)
class TreeEntry:
    """
    One entry of a tree. C{kind} is C{"tree"}, C{"blob"}, C{"link"} (a
    symlink: C{target} is its target text) or C{"submodule"}.
    """

    name: str
    path: str
    kind: str
    id: str
    mode: int
    target: str = ""


@dataclass(frozen=True)
class FileData:
    """
    A blob to show. C{data} is at most L{MAX_BLOB_SHOWN} bytes (C{truncated}
    says when the blob was longer); C{binary} and C{image} decide how.
    """

    path: str
    id: str
    size: int
    data: bytes
    binary: bool
    image: str | None
    truncated: bool
    link: bool = False


@dataclass(frozen=True)
class DiffLine:
    """One line of a unified diff: C{kind} is C{"+"}, C{"-"}, C{" "} or C{"@"} (a hunk header)."""

    kind: str
    text: str


@dataclass(frozen=True)
class FileDiff:
    """The change to one file in a commit, with its diff lines unless it is binary or too big."""

    oldPath: str | None
    newPath: str | None
    status: str  # added, deleted, modified
    lines: tuple[DiffLine, ...]
    note: str = ""


@dataclass(frozen=True)
class CommitPage:
    """A commit and what it changed (against its first parent)."""

    commit: CommitInfo
    files: tuple[FileDiff, ...]
    truncated: str = ""


@dataclass(frozen=True)
class LogPage:
    """A page of history: C{more} says whether an older page exists."""

    commits: tuple[CommitInfo, ...]
    more: bool
    stopped: str = ""


@dataclass(frozen=True)
class Summary:
    """What the index shows of one repository."""

    name: str
    folder: str
    description: str
    defaultBranch: str
    lastChange: CommitInfo | None


def _person(raw: bytes, when: int, offset: int) -> Person:
    name, _, rest = raw.partition(b" <")
    return Person(text(name.strip()), text(rest.rstrip(b">")), when, offset)


def commitInfo(commit: Commit) -> CommitInfo:
    """A dulwich commit as L{CommitInfo}."""
    return CommitInfo(
        id=text(commit.id),
        parents=tuple(text(p) for p in commit.parents),
        author=_person(commit.author, commit.author_time, commit.author_timezone),
        committer=_person(commit.committer, commit.commit_time, commit.commit_timezone),
        message=text(commit.message),
    )


# -- reading one repository ----------------------------------------------------------------------


def _isHex(value: str) -> bool:
    return len(value) in (40, 64) and all(c in "0123456789abcdef" for c in value)


class RepositoryReader:
    """
    Reads one repository for the pages. Blocking (file reads): run it in a
    thread, one reader per request (dulwich's C{Repo} is not shared).

    @param hidden: the hideRefs patterns of the fetch policy; hidden refs are
        neither listed nor resolvable.
    """

    def __init__(self, repository: Repository, hidden: Sequence[bytes] = ()) -> None:
        self.repository = repository
        self.hidden = list(hidden)
        self.repo = Repo(str(repository.gitDir))

    def close(self) -> None:
        """Release the object store's open packs."""
        self.repo.close()

    def __enter__(self) -> RepositoryReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # refs

    def _visible(self, name: bytes) -> bool:
        return isValidRefName(name) and not isRefHidden(name, self.hidden)

    def defaultBranch(self) -> str:
        """The branch C{HEAD} names (unborn or not), or "" when it is detached or hidden."""
        try:
            chain, _ = self.repo.refs.follow(Ref(b"HEAD"))
        except (KeyError, ValueError):
            return ""
        if len(chain) < 2 or not chain[-1].startswith(b"refs/heads/"):
            return ""
        if not self._visible(chain[-1]):
            return ""
        return text(chain[-1][len(b"refs/heads/") :])

    def headCommit(self) -> Commit | None:
        """The commit of the default branch (or a detached HEAD), L{None} when empty."""
        branch = self.defaultBranch()
        if branch:
            return self._peelToCommit(self._refValue(b"refs/heads/" + branch.encode()))
        try:
            chain, sha = self.repo.refs.follow(Ref(b"HEAD"))
        except (KeyError, ValueError):
            return None
        if len(chain) > 1:
            return None  # HEAD names a hidden ref
        return self._peelToCommit(sha)

    def _refValue(self, name: bytes) -> bytes | None:
        try:
            return self.repo.refs[Ref(name)]
        except (KeyError, ValueError):
            return None

    def _peelToCommit(self, sha: bytes | None, depth: int = 0) -> Commit | None:
        if sha is None or depth > 10:
            return None
        try:
            obj = self.repo.object_store[ObjectID(sha)]
        except (KeyError, ValueError, NotCommitError):
            return None
        if isinstance(obj, Tag):
            return self._peelToCommit(obj.object[1], depth + 1)
        return obj if isinstance(obj, Commit) else None

    def refs(self, withCommits: bool = True, limit: int = MAX_REFS_SHOWN) -> list[RefInfo]:
        """Branches then tags, by name, hidden and malformed ones left out, at most C{limit}."""
        found: list[RefInfo] = []
        for prefix, kind in ((b"refs/heads/", "branch"), (b"refs/tags/", "tag")):
            names = sorted(n for n in self.repo.refs.keys(Ref(prefix)))
            for short in names:
                full = prefix + short
                if not self._visible(full):
                    continue
                if len(found) >= limit:
                    return found
                commit = self._peelToCommit(self._refValue(full)) if withCommits else None
                found.append(RefInfo(text(short), kind, commitInfo(commit) if commit else None))
        return found

    def resolve(self, segments: Sequence[str]) -> tuple[str, Commit, list[str]]:
        """
        The ref (branch, tag or commit id) a URL's segments start with, the
        commit it names and the path after it. Ref names may hold slashes, so
        the longest prefix naming a visible ref wins.

        @raise NotFound: no prefix names a visible ref or a commit.
        """
        for end in range(min(len(segments), 20), 0, -1):
            name = "/".join(segments[:end]).encode("utf-8")
            for prefix in (b"refs/heads/", b"refs/tags/"):
                full = prefix + name
                if not self._visible(full):
                    continue
                commit = self._peelToCommit(self._refValue(full))
                if commit is not None:
                    return text(name), commit, list(segments[end:])
        if segments and _isHex(segments[0]):
            commit = self._peelToCommit(segments[0].encode("ascii"))
            if commit is not None:
                return segments[0], commit, list(segments[1:])
        raise NotFound()

    def commit(self, sha: str) -> Commit:
        """
        The commit C{sha} names.

        @raise NotFound: not a full commit id of this repository.
        """
        commit = self._peelToCommit(sha.encode("ascii")) if _isHex(sha) else None
        if commit is None:
            raise NotFound()
        return commit

    # trees and files

    def _lookup(self, commit: Commit, path: Sequence[str]) -> tuple[int, bytes]:
        """The mode and id at C{path} in C{commit}'s tree. @raise NotFound: no such path."""
        mode, sha = stat.S_IFDIR, commit.tree
        for name in path:
            if not name or name in (".", "..") or not stat.S_ISDIR(mode):
                raise NotFound()
            tree = self.repo.object_store[ObjectID(sha)]
            if not isinstance(tree, Tree):
                raise NotFound()
            try:
                mode, sha = tree[name.encode("utf-8")]
            except KeyError:
                raise NotFound() from None
        return mode, sha

    def kindAt(self, commit: Commit, path: Sequence[str]) -> str:
        """C{"tree"} or C{"blob"} (links count as blobs), for choosing a view."""
        mode, _ = self._lookup(commit, path)
        return "tree" if stat.S_ISDIR(mode) else "blob"

    def tree(self, commit: Commit, path: Sequence[str]) -> tuple[list[TreeEntry], bool]:
        """
        The entries of the tree at C{path}, folders first, and whether the
        list was cut at L{MAX_TREE_ENTRIES}.

        @raise NotFound: no tree there.
        """
        mode, sha = self._lookup(commit, path)
        if not stat.S_ISDIR(mode):
            raise NotFound()
        tree = self.repo.object_store[ObjectID(sha)]
        if not isinstance(tree, Tree):
            raise NotFound()
        entries: list[TreeEntry] = []
        base = "/".join(path)
        items = tree.items()
        for item in items[:MAX_TREE_ENTRIES]:
            name = text(item.path)
            full = f"{base}/{name}" if base else name
            if stat.S_ISDIR(item.mode):
                kind = "tree"
            elif stat.S_ISLNK(item.mode):
                kind = "link"
            elif item.mode == 0o160000:
                kind = "submodule"
            else:
                kind = "blob"
            target = ""
            if kind == "link":
                # The link's target is the blob's text; it is shown, never followed.
                blob = self.repo.object_store[item.sha]
                target = text(blob.as_raw_string()[:4096]) if isinstance(blob, Blob) else ""
            entries.append(TreeEntry(name, full, kind, text(item.sha), item.mode, target))
        entries.sort(key=lambda e: (e.kind != "tree", e.name))
        return entries, len(items) > MAX_TREE_ENTRIES

    def file(self, commit: Commit, path: Sequence[str], limit: int = MAX_BLOB_SHOWN) -> FileData:
        """
        The file at C{path}, its first C{limit} bytes.

        @raise NotFound: no file there (a folder, a submodule, nothing).
        """
        if not path:
            raise NotFound()
        mode, sha = self._lookup(commit, path)
        if stat.S_ISDIR(mode) or mode == 0o160000:
            raise NotFound()
        blob = self.repo.object_store[ObjectID(sha)]
        if not isinstance(blob, Blob):
            raise NotFound()
        data = blob.as_raw_string()
        size = len(data)
        return FileData(
            path="/".join(path),
            id=text(sha),
            size=size,
            data=data[:limit],
            binary=isBinary(data),
            image=imageType(data),
            truncated=size > limit,
            link=stat.S_ISLNK(mode),
        )

    def readme(self, commit: Commit) -> FileData | None:
        """The README at the top of C{commit}'s tree, if there is one."""
        tree = self.repo.object_store[commit.tree]
        if not isinstance(tree, Tree):
            return None
        present = {text(item.path): item for item in tree.items()}
        for name in README_NAMES:
            item = present.get(name)
            if item is not None and stat.S_ISREG(item.mode):
                found = self.file(commit, [name], MAX_README)
                return None if found.binary else found
        return None

    # history

    def log(self, commit: Commit, path: Sequence[str], skip: int, limit: int) -> LogPage:
        """
        C{limit} commits reachable from C{commit} after the first C{skip},
        newest first; with C{path}, only those that changed it. The walk is
        bounded by L{MAX_LOG_SKIP} and L{LOG_DEADLINE}.
        """
        limit = max(1, min(limit, MAX_LOG_PAGE))
        skip = max(0, min(skip, MAX_LOG_SKIP))
        paths = ["/".join(path).encode("utf-8")] if path else None
        walker = Walker(
            self.repo.object_store, [commit.id], paths=paths, max_entries=skip + limit + 1
        )
        deadline = time.monotonic() + LOG_DEADLINE
        found: list[CommitInfo] = []
        seen = 0
        stopped = ""
        for entry in walker:
            seen += 1
            if seen > skip:
                found.append(commitInfo(entry.commit))
            if time.monotonic() > deadline:
                stopped = f"The search for older commits stopped after {LOG_DEADLINE:g} seconds."
                break
        more = len(found) > limit
        return LogPage(tuple(found[:limit]), more or bool(stopped), stopped)

    def commitPage(self, commit: Commit) -> CommitPage:
        """C{commit} and its diff against its first parent, cut at the L{MAX_DIFF_FILES} and
        L{MAX_DIFF_LINES} bounds."""
        store = self.repo.object_store
        parentTree = None
        if commit.parents:
            parent = self._peelToCommit(commit.parents[0])
            parentTree = parent.tree if parent is not None else None
        files: list[FileDiff] = []
        budget = MAX_DIFF_LINES
        truncated = ""
        for change in tree_changes(store, parentTree, commit.tree):
            if len(files) >= MAX_DIFF_FILES:
                truncated = f"Only the first {MAX_DIFF_FILES} changed files are shown."
                break
            old, new = change.old, change.new
            oldPath = text(old.path) if old and old.path else None
            newPath = text(new.path) if new and new.path else None
            status = "added" if oldPath is None else "deleted" if newPath is None else "modified"
            if budget <= 0:
                files.append(FileDiff(oldPath, newPath, status, (), "Diff not shown: too long."))
                truncated = f"The diff was cut after {MAX_DIFF_LINES} lines."
                continue
            diff, note = self._fileDiff(
                old.sha if old and old.sha else None,
                new.sha if new and new.sha else None,
                (old.mode if old else None) == 0o160000 or (new.mode if new else None) == 0o160000,
                budget,
            )
            budget -= len(diff)
            files.append(FileDiff(oldPath, newPath, status, tuple(diff), note))
        return CommitPage(commitInfo(commit), tuple(files), truncated)

    def _blobData(self, sha: bytes | None) -> bytes | None:
        if sha is None:
            return b""
        obj = self.repo.object_store[ObjectID(sha)]
        if not isinstance(obj, Blob):
            return None
        raw = obj.as_raw_string()
        return None if len(raw) > MAX_DIFF_BLOB else raw

    def _fileDiff(
        self, old: bytes | None, new: bytes | None, submodule: bool, budget: int
    ) -> tuple[list[DiffLine], str]:
        if submodule:
            return [], "Submodule changed."
        before, after = self._blobData(old), self._blobData(new)
        if before is None or after is None:
            return [], "Diff not shown: file too large."
        if isBinary(before) or isBinary(after):
            return [], "Binary file changed."
        lines: list[DiffLine] = []
        diff = difflib.unified_diff(
            text(before).splitlines(), text(after).splitlines(), lineterm="", n=3
        )
        for number, line in enumerate(diff):
            if number < 2:
                continue  # the ---/+++ header: the page names the files itself
            if len(lines) >= budget:
                return lines, "Diff cut here: too long."
            kind = line[:1] if line[:1] in ("+", "-", " ") else "@"
            lines.append(DiffLine(kind, line if kind == "@" else line[1:]))
        return lines, ""

    def description(self) -> str:
        """The description file (unless git's placeholder), else C{gitweb.description}."""
        try:
            with open(self.repository.gitDir / "description", "rb") as f:
                value = text(f.read(1024)).strip()
        except OSError:
            value = ""
        if value and value != PLACEHOLDER_DESCRIPTION:
            return value
        try:
            configured = self.repo.get_config().get((b"gitweb",), b"description")
        except KeyError:
            return ""
        return text(configured[:1024]).strip()


# -- keys, caches, and the list of repositories --------------------------------------------------


def _recent(stamp: Stamp, now: float) -> bool:
    return stamp is not None and now - stamp[3] / 1e9 < RACY_SECONDS


def refsKey(gitDir: Path, now: float | None = None) -> tuple[Any, ...] | None:
    """
    A key that changes whenever a page of this repository may change: the
    stamps of C{HEAD}, C{packed-refs}, C{config}, C{description} and of every
    directory under C{refs/}. L{None} (do not cache) when one of them changed
    in the last L{RACY_SECONDS}.
    """
    now = time.time() if now is None else now
    parts: list[Any] = []
    for name in ("HEAD", "packed-refs", "config", "description"):
        stamp = stampOf(str(gitDir / name))
        if _recent(stamp, now):
            return None
        parts.append(stamp)
    pending = [str(gitDir / "refs")]
    while pending:
        folder = pending.pop()
        stamp = stampOf(folder)
        if _recent(stamp, now):
            return None
        parts.append((folder, stamp))
        try:
            with os.scandir(folder) as entries:
                pending.extend(e.path for e in entries if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    return tuple(parts)


def summaryKey(gitDir: Path, now: float) -> tuple[Any, ...] | None:
    """
    What the index row of a repository depends on: a few stamps, no
    directory walk, so checking a thousand repositories costs a few thousand
    C{stat}s. The loose ref C{HEAD} names is stamped too (its update renames
    a new file into place). L{None} when one of them is racy.

    Plain strings, not L{Path}: this runs for every repository on every
    index request, and path objects cost more than the C{stat}s.
    """
    base = os.fspath(gitDir)
    parts = [stampOf(base + name) for name in _SUMMARY_FILES]
    try:
        with open(base + "/HEAD", "rb") as f:
            head = f.read(512)
    except OSError:
        head = b""
    if head.startswith(b"ref: refs/") and b".." not in head:
        parts.append(stampOf(base + "/" + os.fsdecode(head[5:].strip())))
    for stamp in parts:
        if stamp is not None and now - stamp[3] / 1e9 < RACY_SECONDS:
            return None
    return tuple(parts)


_SUMMARY_FILES = ("/HEAD", "/packed-refs", "/config", "/description")


class BoundedCache:
    """
    A least-recently-used map whose values are bytes-like, bounded by their
    total size. Thread-safe: pages are built in the reactor's thread pool.
    """

    def __init__(self, maxBytes: int) -> None:
        self.maxBytes = maxBytes
        self.size = 0
        self._items: OrderedDict[Any, tuple[int, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        """The value under C{key}, or L{None}."""
        with self._lock:
            found = self._items.get(key)
            if found is None:
                return None
            self._items.move_to_end(key)
            return found[1]

    def put(self, key: Any, value: Any, size: int) -> None:
        """Keep C{value} (of C{size} bytes) unless it alone exceeds the bound."""
        if size > self.maxBytes // 4:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.size -= old[0]
            self._items[key] = (size, value)
            self.size += size
            while self.size > self.maxBytes:
                _, (dropped, _) = self._items.popitem(last=False)
                self.size -= dropped


@dataclass
class _Listing:
    """The repositories found under the root, and the stamps of the folders searched."""

    folders: tuple[tuple[str, Stamp], ...]
    repositories: tuple[Repository, ...]


def _searchRoot(root: Path) -> _Listing:
    folders: list[tuple[str, Stamp]] = []
    found: list[Repository] = []
    pending: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while pending and len(found) < MAX_REPOSITORIES:
        folder, names = pending.pop()
        folders.append((str(folder), stampOf(str(folder))))
        try:
            with os.scandir(folder) as scanned:
                entries = sorted(e.name for e in scanned if e.is_dir())
        except OSError:
            continue
        for name in entries:
            # Names resolution refuses (leading "-", dot folders) are never
            # repositories a URL could reach, so they are not listed either.
            if name.startswith((".", "-")):
                continue
            segments = (*names, name)
            repository = resolveRepository(root, [s.encode("utf-8") for s in segments])
            if repository is not None:
                found.append(repository)
            elif len(segments) < MAX_DEPTH:
                pending.append((folder / name, segments))
    found.sort(key=lambda r: r.name)
    return _Listing(tuple(folders), tuple(found))


@dataclass
class BrowseData:
    """
    The pages' shared state: the repository list, index rows and rendered
    pages, each kept under the stamps it depends on. One per daemon.

    @ivar pages: rendered pages by (repository, view, arguments, L{refsKey}).
    """

    root: Path
    policy: Policy
    pages: BoundedCache = field(default_factory=lambda: BoundedCache(8 * 1024 * 1024))
    _listing: _Listing | None = None
    _summaries: dict[Path, tuple[tuple[Any, ...], Summary]] = field(default_factory=dict)

    def repositories(self) -> tuple[Repository, ...]:
        """Every repository under the root; the search runs again only when a folder changed."""
        listing = self._listing
        if listing is not None and all(stampOf(p) == s for p, s in listing.folders):
            return listing.repositories
        now = time.time()
        listing = _searchRoot(self.root)
        if not any(_recent(s, now) for _, s in listing.folders):
            self._listing = listing
        return listing.repositories

    def readable(self, repository: Repository, user: str | None) -> bool:
        """Whether C{user} may read C{repository}: exactly the fetch policy."""
        try:
            self.policy.checkVisible(repository, user)
            self.policy.checkService(repository, Service.UPLOAD_PACK, user)
        except Refusal:
            return False
        return True

    def checkReadable(self, repository: Repository, user: str | None) -> None:
        """
        @raise NotFound: the user may not fetch it; the answer is the same as
            for a repository that does not exist.
        """
        if not self.readable(repository, user):
            raise NotFound()

    def summaries(self, user: str | None) -> list[Summary]:
        """The index rows of every repository C{user} may read."""
        now = time.time()
        rows = []
        for repository in self.repositories():
            if not self.readable(repository, user):
                continue
            rows.append(self.summary(repository, now))
        return rows

    def summary(self, repository: Repository, now: float) -> Summary:
        """One index row, read again only when its stamps changed."""
        key = summaryKey(repository.gitDir, now)
        cached = self._summaries.get(repository.gitDir)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        folder, _, _ = repository.name.rpartition("/")
        try:
            with RepositoryReader(repository, self.policy.hiddenRefs(repository)) as reader:
                head = reader.headCommit()
                row = Summary(
                    repository.name,
                    folder,
                    reader.description(),
                    reader.defaultBranch(),
                    commitInfo(head) if head is not None else None,
                )
        except Exception:
            # A repository dulwich cannot read still gets a row (git may
            # well serve it); its details are simply absent.
            row = Summary(repository.name, folder, "", "", None)
        if key is not None:
            self._summaries[repository.gitDir] = (key, row)
        return row

    def reader(self, repository: Repository) -> RepositoryReader:
        """A reader for one request, with the fetch policy's hidden refs."""
        return RepositoryReader(repository, self.policy.hiddenRefs(repository))


def sortSummaries(rows: Iterable[Summary], order: str) -> list[Summary]:
    """By name (folders together), or by last change, newest first."""
    if order == "age":
        return sorted(
            rows, key=lambda r: (-(r.lastChange.committer.time if r.lastChange else 0), r.name)
        )
    return sorted(rows, key=lambda r: r.name)
