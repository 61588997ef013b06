"""
Build real git repositories for tests with the real git client, in an
isolated environment (no system or user config leaks in, no prompts).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def isolatedGitEnv(home: Path) -> dict[str, str]:
    """An environment in which git reads no config but what the test writes."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "gitconfig"
    config.touch()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(config),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test Author",
        "GIT_AUTHOR_EMAIL": "author@example.com",
        "GIT_COMMITTER_NAME": "Test Committer",
        "GIT_COMMITTER_EMAIL": "committer@example.com",
        "GIT_AUTHOR_DATE": "1700000000 +0000",
        "GIT_COMMITTER_DATE": "1700000000 +0000",
        "LANG": "C",
    }


class GitRunner:
    """Run git commands for a test, in its isolated environment."""

    def __init__(self, home: Path) -> None:
        self.env = isolatedGitEnv(home)

    def __call__(self, *args: str, cwd: Path | None = None, **extraEnv: str) -> str:
        """Run C{git args...}; fail the test with git's stderr if it fails."""
        env = dict(self.env, **extraEnv)
        result = subprocess.run(
            ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise AssertionError(
                f"git {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
            )
        return result.stdout

    def commit(self, workTree: Path, name: str, content: str) -> str:
        """Write one file, commit it, and return the new commit id."""
        (workTree / name).write_text(content)
        self("add", name, cwd=workTree)
        self("commit", "-q", "-m", f"add {name}", cwd=workTree)
        return self("rev-parse", "HEAD", cwd=workTree).strip()


def mixedRepository(git: GitRunner, base: Path) -> Path:
    """
    A bare repository in which update-server-info never ran, with packed and
    loose objects mixed, packed and loose refs (one loose ref overriding a
    stale packed value), annotated, nested and lightweight tags, and a
    symbolic ref under refs/: every shape info/refs has to get right.

    @return: the bare repository's path.
    """
    work = base / "work"
    git("init", "-q", "-b", "main", str(work))
    git.commit(work, "a.txt", "first\n")
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    git("-c", "advice.nestedTag=false", "tag", "-a", "v1-again", "-m", "nested", "v1", cwd=work)
    git("tag", "light", cwd=work)
    git("branch", "side", cwd=work)
    bare = base / "repo.git"
    git("clone", "-q", "--bare", str(work), str(bare))
    # Everything so far is packed (objects and refs) ...
    git("repack", "-a", "-d", "-q", cwd=bare)
    git("pack-refs", "--all", cwd=bare)
    # ... and what follows is loose: new objects, a moved branch whose packed
    # value is now stale, a new annotated tag, a symbolic ref.
    git("remote", "add", "origin", str(bare), cwd=work)
    git.commit(work, "b.txt", "second\n")
    git("tag", "-a", "v2", "-m", "version 2", cwd=work)
    git("push", "-q", "origin", "main", "v2", cwd=work)
    git("symbolic-ref", "refs/remotes/mirror/HEAD", "refs/heads/main", cwd=bare)
    # git may have written these as a courtesy during clone/push; the point
    # of this repository is that they do not exist.
    for stale in (bare / "info" / "refs", bare / "objects" / "info" / "packs"):
        stale.unlink(missing_ok=True)
    return bare
