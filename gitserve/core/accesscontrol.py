"""
The access rules in the daemon: the conf file kept current, repository names
as the rules know them, creators, wild repositories created on demand, and
the hooks directory through which every ref of a push is checked.

The decisions themselves are L{gitserve.core.access}'s; L{Policy} asks them
through L{AccessControl}, and the update hook (L{gitserve.core.accesshook})
asks them for each ref.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from twisted.application.service import Service
from twisted.logger import Logger

import gitserve
from gitserve.core.access import (
    REPONAME_PATT,
    AccessConfError,
    AccessRules,
    Decision,
    loadRules,
    repoNameProblem,
)
from gitserve.core.filestamps import Stamp, stampOf
from gitserve.core.repository import Repository

# The file gitolite records a wild repository's creator in; gitserve reads
# and writes the same one, so repositories move between the two unchanged.
CREATOR_FILE = "gl-creator"

# Left by creation until the first branch lands: HEAD then points at it.
UNBORN_HEAD_FILE = "gitserve-unborn-head"

# The environment variables the hooks read: the push's rules snapshot, and
# the repository's own hooks directory (which core.hooksPath hides from git).
ACCESS_ENV = "GITSERVE_ACCESS"
REPO_HOOKS_ENV = "GITSERVE_REPO_HOOKS"

# Hooks receive-pack may run, other than update, that only pass through to
# the repository's own. (push-to-checkout is left out: its mere presence
# changes what git does for a non-bare repository; proc-receive runs only
# when configured.)
PASS_THROUGH_HOOKS = (
    "pre-receive",
    "post-receive",
    "post-update",
    "reference-transaction",
    "pre-auto-gc",
)

_PASS_THROUGH = """#!/bin/sh
# gitserve: the repository's own {name} hook still runs under --access.
hook="$GITSERVE_REPO_HOOKS/{name}"
if [ -n "$GITSERVE_REPO_HOOKS" ] && [ -f "$hook" ] && [ -x "$hook" ]; then
    exec "$hook" "$@"
fi
exit 0
"""

_UPDATE = """#!{python} -I
# gitserve: each ref of a push is checked against the access rules here,
# before git applies it; then the repository's own update hook runs.
import sys
sys.path.insert(0, {path!r})
from gitserve.core.accesshook import main
sys.exit(main(sys.argv))
"""


def installHooks(directory: str) -> None:
    """Write the hooks directory receive-pack runs with under C{--access}."""
    os.makedirs(directory, exist_ok=True)
    packageParent = str(Path(gitserve.__file__).resolve().parent.parent)
    scripts = {"update": _UPDATE.format(python=sys.executable, path=packageParent)}
    for name in PASS_THROUGH_HOOKS:
        scripts[name] = _PASS_THROUGH.format(name=name)
    for name, text in scripts.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o755)


def ruleName(root: Path, repository: Repository) -> str:
    """
    The repository's name in the rules: its path under the root without
    C{.git} (C{team/app.git} and C{team/app/.git} are C{team/app}).

    Taken from the resolved git directory, not from the URL: a symlink
    inside the root is one more spelling of the same repository, and must
    not be a way around the rules written for its real name.
    """
    try:
        relative = repository.gitDir.relative_to(root).as_posix()
    except ValueError:
        return ""
    if relative == ".git" or relative == ".":
        return ""
    return relative.removesuffix("/.git").removesuffix(".git")


def requestedName(segments: list[str]) -> str | None:
    """
    The rules name for a repository a URL names that does not exist yet
    (C{users/alice/new.git} is C{users/alice/new}), or L{None} when it
    could never be a gitolite repository name.
    """
    name = "/".join(segments).removesuffix("/.git").removesuffix(".git")
    if not name or not REPONAME_PATT.match(name) or name.startswith("@"):
        return None
    if repoNameProblem(name) is not None:
        return None
    return name


def creatorOf(repository: Repository) -> str:
    """The user who created the repository (gitolite's C{gl-creator}), or C{""}."""
    try:
        with open(repository.gitDir / CREATOR_FILE, encoding="utf-8") as f:
            return f.read(256).strip()
    except (OSError, UnicodeDecodeError):
        return ""


@dataclass
class AccessControl:
    """
    The conf at C{path}, re-read when it or a file it includes changes.

    At start-up a bad conf is an error (L{AccessConfError}, C{FILE:LINE});
    once serving, a bad edit is logged with its C{FILE:LINE} and the last
    good rules stay in force: locking every user out over one typo would be
    worse than serving the rules that were good a minute ago.
    """

    path: str
    log = Logger()
    _rules: AccessRules = field(init=False)
    _stamps: tuple[tuple[str, Stamp], ...] = field(init=False)
    _failedStamps: tuple[tuple[str, Stamp], ...] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._rules, self._stamps = self._load()
        self._report(self._rules)

    def _load(self) -> tuple[AccessRules, tuple[tuple[str, Stamp], ...]]:
        # Stamped before reading: an edit during the read shows next time.
        before = stampOf(self.path)
        rules = loadRules(self.path)
        stamps = tuple((p, stampOf(p)) for p in rules.files)
        if stamps and stamps[0][1] != before:
            stamps = ((self.path, None), *stamps[1:])
        return rules, stamps

    def _report(self, rules: AccessRules) -> None:
        for line in rules.ignored:
            self.log.info("access rules: ignored (not access control): {line}", line=line)

    @property
    def rules(self) -> AccessRules:
        """The current rules, re-read first if a file changed."""
        stamps = tuple((p, stampOf(p)) for p, _ in self._stamps)
        if stamps != self._stamps and stamps != self._failedStamps:
            try:
                rules, self._stamps = self._load()
            except AccessConfError as e:
                self._failedStamps = stamps
                self.log.error(
                    "access rules not reloaded, the last good ones stay in force: {error}",
                    error=str(e),
                )
            else:
                self._rules = rules
                self._failedStamps = None
                self._report(rules)
                self.log.info("access rules reloaded from {path}", path=self.path)
        return self._rules

    def decide(
        self, root: Path, repository: Repository, user: str, aa: str, ref: str = "any"
    ) -> Decision:
        """A decision for an existing repository."""
        return self.rules.access(
            ruleName(root, repository), user, aa, ref, True, creatorOf(repository)
        )

    def mayCreate(self, name: str, user: str) -> Decision:
        """Whether C{user} may create the wild repository C{name} (gitolite's C{^C})."""
        return self.rules.access(name, user, "^C", "any", repoExists=False, creator=user)

    def pushEnvironment(self, root: Path, repository: Repository, user: str) -> dict[str, str]:
        """
        What the hooks of one push need: the rules snapshot for (repository,
        user) and the repository's own hooks directory.
        """
        name = ruleName(root, repository)
        snapshot = self.rules.pushRules(name, user, creatorOf(repository))
        return {
            ACCESS_ENV: json.dumps(snapshot, separators=(",", ":")),
            REPO_HOOKS_ENV: str(repository.gitDir / "hooks"),
        }


def createRepository(root: Path, name: str, creator: str, gitPath: str = "git") -> Path | None:
    """
    Create the wild repository C{name} under C{root} for C{creator}, as
    gitolite's C{new_wild_repo} does: C{git init --bare}, then the creator
    recorded. Blocking: run it off the reactor thread.

    @return: the new git directory, or L{None} when something is already
        there (another request created it first: resolve it again) or the
        place is not inside the root.
    """
    target = root / f"{name}.git"
    # The directories on the way may exist already; any of them could be a
    # symlink leading out of the root, so the deepest existing one must
    # resolve inside it before anything is created below it.
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    resolvedRoot = root.resolve()
    resolved = existing.resolve()
    if resolved != resolvedRoot and not resolved.is_relative_to(resolvedRoot):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Exclusive: of two requests creating the same repository, one wins.
        target.mkdir()
    except FileExistsError:
        return None
    try:
        subprocess.run(
            [gitPath, "init", "--bare", "--quiet", str(target)],
            check=True,
            capture_output=True,
            env={name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ},
        )
        (target / CREATOR_FILE).write_text(creator + "\n", encoding="utf-8")
        (target / UNBORN_HEAD_FILE).write_text("", encoding="utf-8")
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target


class HooksDirectoryService(Service):
    """Removes the daemon's hooks directory when the daemon stops."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.directory, ignore_errors=True)


def makeHooksDirectory() -> str:
    """A fresh, private hooks directory for this daemon's pushes."""
    directory = tempfile.mkdtemp(prefix="gitserve-hooks-")
    installHooks(directory)
    return directory
