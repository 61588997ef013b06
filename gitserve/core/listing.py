"""
The repositories under the served root, for a door that shows a user what
they can reach (the SSH greeting, as gitolite's C{info} command).
"""

from __future__ import annotations

import os
from pathlib import Path

# A greeting is a summary: past these, the walk stops.
MAX_REPOSITORIES = 500
MAX_DEPTH = 8


def _isGitDirectory(path: str) -> bool:
    return (
        os.path.isfile(os.path.join(path, "HEAD"))
        and os.path.isdir(os.path.join(path, "objects"))
        and os.path.isdir(os.path.join(path, "refs"))
    )


def listRepositoryPaths(root: Path) -> list[list[bytes]]:
    """
    The path segments of each git repository under C{root}, as a client
    would name it (C{team/app.git}; C{proj} for a work tree's C{proj/.git}),
    sorted, at most L{MAX_REPOSITORIES}. Blocking: run it off the reactor.

    Only names are gathered here; the caller resolves each one through
    L{gitserve.core.repository.resolveRepository} and asks the policy,
    exactly as for a request, before showing it.
    """
    found: list[list[bytes]] = []
    base = str(root)
    # followlinks=False: a symlinked repository is still found (it is listed
    # as a directory entry below), but the walk never leaves the root.
    for directory, subdirectories, _ in os.walk(base):
        relative = os.path.relpath(directory, base)
        parts = [] if relative == "." else relative.split(os.sep)
        subdirectories.sort()
        kept = []
        for name in subdirectories:
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            if _isGitDirectory(path):
                found.append([part.encode() for part in [*parts, name]])
            elif _isGitDirectory(os.path.join(path, ".git")):
                found.append([part.encode() for part in [*parts, name]])
            elif len(parts) + 1 < MAX_DEPTH:
                kept.append(name)
            if len(found) >= MAX_REPOSITORIES:
                return found
        subdirectories[:] = kept
    return found
