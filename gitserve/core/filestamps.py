"""
File stamps and config-file closures: the one way gitserve tells whether a
file it read before has changed since, without reading it again.

Used for git config files (the per-repository switches, and the inputs of
the cached v2 advertisement) and for the htpasswd file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from dulwich.config import ConfigFile

# What identifies a version of a file: a rewrite (git config writes a new file
# and renames it) changes the inode; an edit in place changes size or mtime;
# chown and chmod change ctime (and ownership is what safe.directory checks).
Stamp = tuple[int, int, int, int, int, int] | None


def stampOf(path: str) -> Stamp:
    """The stamp of C{path}, L{None} when there is nothing there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_uid)


class UnkeyableConfig(Exception):
    """A config file whose effect a stamp cannot stand for (includeIf, or unparsable)."""


@dataclass
class _Closure:
    """A config file and every file it includes, with their stamps when parsed."""

    stamps: tuple[tuple[str, Stamp], ...]


# Config files whose closure is kept (least recently used dropped).
MAX_CLOSURES = 16384

# git stops following includes this deep (config.c, MAX_INCLUDE_DEPTH).
MAX_INCLUDE_DEPTH = 10


def includeTarget(value: bytes, including: str, home: str | None) -> str | None:
    """
    The file an C{include.path} value names, resolved as git resolves it: a
    leading C{~/} is the child's C{HOME}, C{~user/} that user's home, and a
    relative path is relative to the including file's directory.
    """
    path = os.fsdecode(value)
    if path.startswith("~/") or path == "~":
        if not home:
            return None
        path = home + path[1:]
    elif path.startswith("~"):
        expanded = os.path.expanduser(path)
        if expanded == path:
            return None
        path = expanded
    return os.path.abspath(os.path.join(os.path.dirname(including), path))


class ConfigClosures:
    """
    The files each config file pulls in through C{include.path}, re-parsed
    only when one of them changes.

    @ivar home: the C{HOME} git runs with, for C{~/} in include paths.
    """

    def __init__(self, home: str | None, maxEntries: int = MAX_CLOSURES) -> None:
        self.home = home
        self.maxEntries = maxEntries
        self._closures: OrderedDict[str, _Closure] = OrderedDict()

    def stamps(self, path: str) -> tuple[tuple[str, Stamp], ...]:
        """
        The stamps of C{path} and of everything it includes (missing files
        included: creating one changes the config).

        @raise UnkeyableConfig: a file uses C{includeIf}, or cannot be parsed.
        """
        cached = self._closures.get(path)
        if cached is not None and all(stampOf(p) == s for p, s in cached.stamps):
            self._closures.move_to_end(path)
            return cached.stamps
        seen: dict[str, Stamp] = {}
        self._follow(path, 0, seen)
        closure = _Closure(tuple(seen.items()))
        self._closures[path] = closure
        self._closures.move_to_end(path)
        while len(self._closures) > self.maxEntries:
            self._closures.popitem(last=False)
        return closure.stamps

    def _follow(self, path: str, depth: int, seen: dict[str, Stamp]) -> None:
        # Stamped before parsing: a change during the parse shows next time.
        seen[path] = stampOf(path)
        if seen[path] is None or depth > MAX_INCLUDE_DEPTH:
            return
        try:
            config = ConfigFile.from_path(path, expand_includes=False)
        except (OSError, ValueError) as e:
            raise UnkeyableConfig(f"{path}: {e}") from e
        for section in config.sections():
            if section[0].lower() == b"includeif":
                # Its conditions read the branch, other config, the path...:
                # more than file stamps can stand for.
                raise UnkeyableConfig(f"{path} uses includeIf")
            if section[0].lower() != b"include":
                continue
            for value in config.get_multivar(section, b"path"):
                target = includeTarget(value, path, self.home)
                if target is not None and target not in seen:
                    self._follow(target, depth + 1, seen)
