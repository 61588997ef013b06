"""
The protocol v2 capability advertisement, answered without spawning git when
git's own answer is already known.

A v2 C{info/refs?service=git-upload-pack} lists capabilities, not refs, so
git's answer is the same for every request to a repository as long as
nothing git reads to build it changes: the git binary (its version is the
C{agent=}), its environment, and its config (system, global, the
repository's, and every file they include), which decides C{ls-refs=unborn},
C{fetch=... filter ref-in-want sideband-all packfile-uris}, the
C{object-format} and whether the repository is served at all
(C{safe.directory}, C{core.repositoryformatversion}).

So the first answer of git itself is kept, keyed by a stamp of each of those
inputs, and served until one of them changes. Whatever cannot be keyed is
never cached: an answer carrying a per-process C{session-id}
(C{transfer.advertiseSID}), a config with C{includeIf} (its conditions read
more state than files), a linked worktree (C{commondir}), an environment
variable this module does not know, a file changed too recently for its stamp
to be trusted (git's "racy" problem), or a git that failed.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gitserve.core.filestamps import ConfigClosures, Stamp, UnkeyableConfig, stampOf
from gitserve.core.pktline import FLUSH_PKT, PktLineParser, ProtocolError
from gitserve.core.repository import Repository, parseGitBoolean

# The Git-Protocol value the fast path answers; anything else goes to git.
VERSION_2 = b"version=2"

# A file modified this recently may change again within its mtime's
# granularity without its stamp changing: answers depending on it are served
# but not kept.
RACY_SECONDS = 2.0

# Repositories whose advertisement is kept (least recently used dropped).
MAX_ENTRIES = 4096

# git's v2 advertisement is a few hundred bytes; an answer larger than this is
# not an advertisement to keep.
MAX_ADVERTISEMENT = 64 * 1024

# The child's environment as gitserve builds it: the entries that differ per
# request are not read by git for the advertisement; those that locate config
# files are followed; any other entry makes the answer unkeyable.
PER_REQUEST_ENVIRONMENT = frozenset(
    {
        "REMOTE_ADDR",
        "REMOTE_USER",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_HTTP_USER_AGENT",
        "GIT_PROTOCOL",
    }
)
KNOWN_ENVIRONMENT = PER_REQUEST_ENVIRONMENT | {
    "PATH",
    "HOME",
    "XDG_CONFIG_HOME",
    "GIT_CONFIG_GLOBAL",
    "GIT_CONFIG_SYSTEM",
    "GIT_CONFIG_NOSYSTEM",
}


def _isRacy(stamp: Stamp, now: float) -> bool:
    return stamp is not None and stamp[3] / 1e9 > now - RACY_SECONDS


@dataclass
class CapabilityCache:
    """
    git's own v2 capability advertisements, per repository, each kept with
    the key of every input it was built from.

    @ivar gitPath: the git binary the advertisements come from.
    @ivar environment: the environment git runs with (per-request entries
        are ignored).
    @ivar clock: seconds since the epoch, for the racy-stamp check.
    """

    gitPath: str
    environment: Mapping[str, str]
    clock: Callable[[], float] = time.time
    _entries: OrderedDict[str, tuple[tuple[object, ...], bytes]] = field(
        default_factory=OrderedDict
    )
    hits: int = 0
    misses: int = 0

    def __post_init__(self) -> None:
        # What depends on the daemon alone is worked out once: the
        # environment is fixed for the daemon's life.
        env = self.environment
        self._closures = ConfigClosures(env.get("HOME"))
        self._keyable = not (set(env) - KNOWN_ENVIRONMENT)
        self._environmentKey = tuple(
            sorted((k, v) for k, v in env.items() if k not in PER_REQUEST_ENVIRONMENT)
        )
        files = []
        if not _gitBoolean(env.get("GIT_CONFIG_NOSYSTEM")):
            if "GIT_CONFIG_SYSTEM" in env:
                files.append(env["GIT_CONFIG_SYSTEM"])
            else:
                files.extend(systemConfigCandidates(self.gitPath))
        if "GIT_CONFIG_GLOBAL" in env:
            files.append(env["GIT_CONFIG_GLOBAL"])
        elif env.get("HOME"):
            xdg = env.get("XDG_CONFIG_HOME") or os.path.join(env["HOME"], ".config")
            files.append(os.path.join(xdg, "git", "config"))
            files.append(os.path.join(env["HOME"], ".gitconfig"))
        self._daemonConfigs = [os.path.abspath(f) for f in files if f]

    def key(self, repository: Repository) -> tuple[object, ...] | None:
        """
        Everything git's advertisement for C{repository} depends on, or
        L{None} when something it depends on cannot be keyed.
        """
        gitStamp = stampOf(self.gitPath)
        if not self._keyable or gitStamp is None:
            return None
        gitDir = str(repository.gitDir)
        if os.path.exists(gitDir + "/commondir"):
            # A linked worktree: its config lives elsewhere, maybe in two files.
            return None
        try:
            st = os.stat(gitDir)
            stamps = [(self.gitPath, gitStamp), (gitDir + "/HEAD", stampOf(gitDir + "/HEAD"))]
            # The config files git reads, in its order: system, global, the
            # repository's, each with what it includes.
            for path in self._daemonConfigs:
                stamps.extend(self._closures.stamps(path))
            stamps.extend(self._closures.stamps(gitDir + "/config"))
        except (OSError, UnkeyableConfig):
            return None
        # The git directory's identity and owner (safe.directory), not its
        # mtime: that changes with every lock file git creates in it.
        identity = (st.st_dev, st.st_ino, st.st_uid, st.st_mode)
        return (self._environmentKey, identity, tuple(stamps))

    def get(self, repository: Repository, key: tuple[object, ...] | None) -> bytes | None:
        """The kept advertisement of C{repository}, if it was built from C{key}."""
        entry = self._entries.get(str(repository.gitDir)) if key is not None else None
        if entry is None or entry[0] != key:
            self.misses += 1
            return None
        self._entries.move_to_end(str(repository.gitDir))
        self.hits += 1
        return entry[1]

    def put(self, repository: Repository, key: tuple[object, ...] | None, answer: bytes) -> bool:
        """
        Keep git's C{answer}, built from C{key}, unless it must not be kept.

        @param key: what L{key} said before git ran; the inputs are stamped
            again now, so a change while git ran is never kept.
        @return: whether it was kept.
        """
        if key is None or key != self.key(repository) or not cacheable(answer):
            return False
        now = self.clock()
        files: tuple[tuple[str, Stamp], ...] = key[2]  # type: ignore[assignment]
        if any(_isRacy(stamp, now) for _, stamp in files):
            return False
        self._entries[str(repository.gitDir)] = (key, answer)
        self._entries.move_to_end(str(repository.gitDir))
        while len(self._entries) > MAX_ENTRIES:
            self._entries.popitem(last=False)
        return True


def systemConfigCandidates(gitPath: str) -> list[str]:
    """
    Where git may read its system config: C{/etc/gitconfig} (builds with
    prefix C{/usr}), or C{<prefix>/etc/gitconfig} for a git installed under
    another prefix. Both are stamped: a file that does not exist stamps as
    missing, so creating it changes the key.
    """
    candidates = ["/etc/gitconfig"]
    for binary in {gitPath, os.path.realpath(gitPath)}:
        prefix = os.path.dirname(os.path.dirname(binary))
        candidates.append(os.path.join(prefix, "etc", "gitconfig"))
    return list(dict.fromkeys(candidates))


def cacheable(answer: bytes) -> bool:
    """
    Whether a v2 advertisement may be served again: well formed, one flush at
    its end, and with no C{session-id} (a per-process value).
    """
    if not answer or len(answer) > MAX_ADVERTISEMENT:
        return False
    parser = PktLineParser()
    try:
        packets = list(parser.feed(answer))
        parser.close()
    except ProtocolError:
        return False
    if not packets or packets[0] != b"version 2\n" or packets[-1] is not FLUSH_PKT:
        return False
    if any(p is FLUSH_PKT for p in packets[:-1]):
        return False
    return not any(p.startswith(b"session-id") for p in packets)


def _gitBoolean(value: str | None) -> bool:
    return value is not None and parseGitBoolean(value.encode()) is True
