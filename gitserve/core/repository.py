"""
URL path → repository resolution, the traversal guard, and per-repository config.

Everything downstream of this module works with a resolved L{Repository}, never
with a string a client sent: this is the one place where user input becomes a
filesystem path, so every refusal lives here, each with its reason beside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dulwich.config import ConfigFile

from gitserve.core.filestamps import ConfigClosures, Stamp, UnkeyableConfig

# The suffixes git's own enter_repo() tries, in its order, so that /foo finds
# foo/.git, foo and foo.git exactly as `git clone host:foo` would.
GIT_SUFFIXES = ("/.git", "", ".git/.git", ".git")

# A gitfile is a few hundred bytes at most; a bigger one is not a gitfile.
MAX_GITFILE_SIZE = 4096

EXPORT_OK_FILE = "git-daemon-export-ok"


@dataclass(frozen=True)
class Repository:
    """
    A git directory that resolution proved to be inside the served root.

    @ivar gitDir: the real (symlink-free), absolute git directory; it starts
        with C{/}, so git can never read it as an option.
    @ivar name: the repository's path as the URL named it, for logs.
    """

    gitDir: Path
    name: str

    @property
    def exportOk(self) -> bool:
        """Whether the repository opts in to being served, as git-daemon's flag file says."""
        return (self.gitDir / EXPORT_OK_FILE).is_file()


def isSafeSegment(segment: str) -> bool:
    """
    Whether one decoded URL path segment may name a directory under the root.

    Twisted percent-decodes each segment after splitting the path on C{/}, so
    C{%2F}, C{%5C}, C{%00} and C{%2e%2e} arrive here inside a single segment.
    """
    if segment in ("", ".", ".."):
        # Empty segments come from "//" and a trailing "/"; "." and ".." are
        # traversal (resolution below would also catch "..", but refusing the
        # spelling means no lookup at all happens for it).
        return False
    if segment.startswith("-"):
        # A name git could read as an option if it ever reached a command line.
        return False
    # Separators smuggled inside a segment (%2F, %5C) and control characters
    # (NUL ends C strings, CR/LF split log lines and headers) never name a repo.
    return not any(ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in segment)


def _isGitDirectory(path: Path) -> bool:
    """The same test as git's is_git_directory(): HEAD, objects/ and refs/."""
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


def _readGitfile(path: Path) -> Path | None:
    """Follow a C{.git} file (`gitdir: <path>`), as worktrees and submodules use."""
    try:
        if path.stat().st_size > MAX_GITFILE_SIZE:
            return None
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.startswith("gitdir: "):
        return None
    target = Path(text[len("gitdir: ") :].strip())
    return target if target.is_absolute() else path.parent / target


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def resolveRepository(root: Path, segments: Sequence[bytes]) -> Repository | None:
    """
    Find the repository that URL path segments name under C{root}.

    @param root: the served root, already resolved (L{Path.resolve}).
    @param segments: the decoded URL segments naming the repository, without
        the route (C{info/refs}, C{git-upload-pack}, ...).
    @return: the repository, or L{None} for anything that is not a git
        directory inside the root. Callers answer L{None} with a plain 404:
        the reason is never told to the client.
    """
    if not segments:
        return None
    names = []
    for raw in segments:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not isSafeSegment(name):
            return None
        names.append(name)
    base = os.path.join(str(root), *names)
    for suffix in GIT_SUFFIXES:
        candidate = Path(base + suffix)
        if candidate.is_file() and candidate.name == ".git":
            target = _readGitfile(candidate)
            if target is None:
                continue
            candidate = target
        # Symlinks are allowed inside the root (admins link repositories
        # around), but the real path must stay inside it: a link to /etc or to
        # another user's repositories is refused. strict=True so that a
        # dangling link fails here rather than later.
        try:
            real = candidate.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if not _inside(real, root):
            continue
        if real.is_dir() and _isGitDirectory(real):
            return Repository(gitDir=real, name="/".join(names))
    return None


def parseGitBoolean(value: bytes | None) -> bool | None:
    """
    A config boolean as git reads it (dulwich's reader knows fewer spellings):
    a bare key is true, and so are yes/on/true and non-zero integers.
    """
    if value is None:
        return True
    text = value.strip().lower()
    if text in (b"true", b"yes", b"on"):
        return True
    if text in (b"false", b"no", b"off", b""):
        return False
    try:
        return int(text) != 0
    except ValueError:
        return None


_SIZE_SUFFIXES = {b"k": 1024, b"m": 1024**2, b"g": 1024**3}


def parseGitSize(value: bytes) -> int | None:
    """
    A byte count as git writes sizes (C{http.maxRequestBuffer}, and our
    C{--max-push-size}): digits with an optional binary k/m/g suffix.
    L{None} for anything else.
    """
    text = value.strip().lower()
    scale = _SIZE_SUFFIXES.get(text[-1:], 1)
    digits = text[:-1] if scale != 1 else text
    return int(digits) * scale if digits.isdigit() else None


@dataclass(frozen=True)
class _CachedConfig:
    stamps: tuple[tuple[str, Stamp], ...]
    config: ConfigFile


class ConfigCache:
    """
    Each repository's config file, parsed with dulwich and re-read only when
    it or a file it includes changes, so the per-request switches cost a few
    C{stat}s, not a parse.

    @param home: the C{HOME} git runs with, for C{~/} in C{include.path}.
    """

    def __init__(self, home: str | None = None) -> None:
        self._cache: dict[str, _CachedConfig] = {}
        self._closures = ConfigClosures(home)

    def configFor(self, repository: Repository) -> ConfigFile:
        """
        The repository's own config, includes followed (not the user's or
        the system's: those hold no per-repository switches, and git itself
        reads them anyway).
        """
        path = str(repository.gitDir / "config")
        try:
            stamps: tuple[tuple[str, Stamp], ...] | None = self._closures.stamps(path)
        except UnkeyableConfig:
            # includeIf (whose conditions no stamp covers) or a file dulwich
            # cannot parse: read it afresh every time rather than trust a copy.
            stamps = None
        if stamps is not None and stamps[0][1] is None:
            self._cache.pop(path, None)
            return ConfigFile()
        cached = self._cache.get(path)
        if cached is not None and cached.stamps == stamps:
            return cached.config
        try:
            config = ConfigFile.from_path(path)
        except (OSError, ValueError):
            # A config git cannot parse either; treat as empty, git will
            # complain in its own words when it runs.
            config = ConfigFile()
        if stamps is not None:
            self._cache[path] = _CachedConfig(stamps, config)
        return config

    def getBoolean(self, repository: Repository, section: str, name: str) -> bool | None:
        """A boolean setting such as C{http.uploadpack}, or L{None} when unset or invalid."""
        try:
            value = self.configFor(repository).get((section.encode(),), name.encode())
        except KeyError:
            return None
        return parseGitBoolean(value)

    def getAll(self, repository: Repository, section: str, name: str) -> list[bytes]:
        """Every value of a multi-valued setting such as C{transfer.hideRefs}."""
        config = self.configFor(repository)
        try:
            return list(config.get_multivar((section.encode(),), name.encode()))
        except KeyError:
            return []
