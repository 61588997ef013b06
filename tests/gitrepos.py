"""
Repositories shaped for the dumb protocol's corner cases, built with the real
git client (the isolated L{GitClient} from conftest).
"""

from __future__ import annotations

from pathlib import Path

from .conftest import GitClient


def mixedRepository(git: GitClient, base: Path) -> Path:
    """
    A bare repository in which update-server-info never ran, with packed and
    loose objects mixed, packed and loose refs (one loose ref overriding a
    stale packed value), annotated, nested and lightweight tags, and a
    symbolic ref under refs/: every shape info/refs has to get right.

    @return: the bare repository's path.
    """
    work = base / "work"
    git.run("init", "-q", "-b", "main", str(work))
    git.commit(work, "a.txt", "first\n")
    git.run("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git.run("-c", "advice.nestedTag=false", "tag", "-a", "v1-again", "-m", "nested", "v1", cwd=work)
    git.run("tag", "light", cwd=work)
    git.run("branch", "side", cwd=work)
    bare = base / "repo.git"
    git.run("clone", "-q", "--bare", str(work), str(bare))
    # Everything so far is packed (objects and refs) ...
    git.run("repack", "-a", "-d", "-q", cwd=bare)
    git.run("pack-refs", "--all", cwd=bare)
    # ... and what follows is loose: new objects, a moved branch whose packed
    # value is now stale, a new annotated tag, a symbolic ref.
    git.run("remote", "add", "origin", str(bare), cwd=work)
    git.commit(work, "b.txt", "second\n")
    git.run("tag", "-a", "v2", "-m", "version 2", cwd=work)
    git.run("push", "-q", "origin", "main", "v2", cwd=work)
    git.run("symbolic-ref", "refs/remotes/mirror/HEAD", "refs/heads/main", cwd=bare)
    # git may have written these as a courtesy during clone/push; the point
    # of this repository is that they do not exist.
    for stale in (bare / "info" / "refs", bare / "objects" / "info" / "packs"):
        stale.unlink(missing_ok=True)
    return bare
