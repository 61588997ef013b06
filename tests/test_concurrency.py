"""
Pushes racing each other through the daemon: to different branches they all
land; to one branch exactly one of a set of rivals wins, the others are
refused cleanly, and pushers that retry lose nothing.
"""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient

PUSHERS = 20
# Pushers that retry until accepted: each round of rivalry costs a fetch and
# a rebase per loser, so fewer of them keep the suite quick.
RETRYING_PUSHERS = 8


@pytest.fixture
def shared(git: GitClient, root: Path, populated: Path, serve) -> Daemon:
    """project.git open to anonymous pushes, served."""
    git.run("config", "-f", str(root / "project.git" / "config"), "http.receivepack", "true")
    return serve(root)


def rivalCommits(git: GitClient, work: Path, count: int) -> list[str]:
    """C{count} commits, each alone on top of main, on local branches rN."""
    base = git.output("rev-parse", "main", cwd=work)
    commits = []
    for i in range(count):
        git.run("checkout", "-q", "-B", f"r{i}", base, cwd=work)
        commits.append(git.commit(work, f"rival{i}.txt", f"rival {i}\n"))
    git.run("checkout", "-q", "main", cwd=work)
    return commits


def pushAll(
    git: GitClient, work: Path, refspecs: list[str], url: str
) -> list[subprocess.CompletedProcess[str]]:
    """Run one `git push` per refspec, all at once."""

    def push(refspec: str) -> subprocess.CompletedProcess[str]:
        return git.run("push", url, refspec, cwd=work, check=False, timeout=120)

    with ThreadPoolExecutor(len(refspecs)) as pool:
        return list(pool.map(push, refspecs))


def assertHealthy(git: GitClient, repo: Path, daemon: Daemon) -> None:
    fsck = git.run("fsck", "--full", "--strict", cwd=repo, check=False)
    assert fsck.returncode == 0, fsck.stderr
    assert not [p for p in repo.rglob("*.lock")]
    assert not list((repo / "objects").glob("tmp_objdir-*"))
    assert not daemon.settledChildren()


def test_concurrentPushesToDistinctBranchesAllLand(
    git: GitClient, root: Path, populated: Path, shared: Daemon
) -> None:
    """20 pushes at once, each to its own new branch: every one lands with its commit."""
    commits = rivalCommits(git, populated, PUSHERS)
    results = pushAll(
        git,
        populated,
        [f"r{i}:refs/heads/branch{i}" for i in range(PUSHERS)],
        shared.url("project.git"),
    )
    assert [r.returncode for r in results] == [0] * PUSHERS, [r.stderr for r in results]
    repo = root / "project.git"
    for i, commit in enumerate(commits):
        assert git.output("rev-parse", f"branch{i}", cwd=repo) == commit
    assertHealthy(git, repo, shared)


def test_concurrentPushesToOneBranchHaveOneWinner(
    git: GitClient, root: Path, populated: Path, shared: Daemon
) -> None:
    """20 rival fast-forwards of main at once: one wins, the rest are refused, none is torn."""
    repo = root / "project.git"
    base = git.output("rev-parse", "main", cwd=repo)
    commits = rivalCommits(git, populated, PUSHERS)
    results = pushAll(
        git, populated, [f"r{i}:main" for i in range(PUSHERS)], shared.url("project.git")
    )
    winners = [c for c, r in zip(commits, results, strict=True) if r.returncode == 0]
    assert len(winners) == 1, [r.stderr for r in results]
    assert git.output("rev-parse", "main", cwd=repo) == winners[0]
    assert git.output("rev-parse", "main^", cwd=repo) == base
    for result in results:
        if result.returncode != 0:
            # Refused as git refuses a lost race: a rejected fast-forward or a
            # ref that moved under the lock, never a broken exchange.
            assert result.returncode == 1, result.stderr
            assert "rejected" in result.stderr or "failed to" in result.stderr, result.stderr
            assert "fatal" not in result.stderr, result.stderr
    assertHealthy(git, repo, shared)


def test_retryingPushersLoseNoUpdate(
    git: GitClient, root: Path, populated: Path, shared: Daemon, tmp_path: Path
) -> None:
    """Pushers racing on main, each rebasing and retrying until accepted: every one lands."""
    repo = root / "project.git"
    url = shared.url("project.git")
    clones = []
    for i in range(RETRYING_PUSHERS):
        clone = tmp_path / f"pusher{i}"
        git.run("clone", "-q", "--shared", str(repo), str(clone))
        git.run("remote", "set-url", "origin", url, cwd=clone)
        clones.append(clone)

    def pusher(i: int) -> tuple[str, int]:
        clone = clones[i]
        commit = git.commit(clone, f"pusher{i}.txt", f"pusher {i}\n")
        for attempt in range(1, 60):
            if git.run("push", "-q", "origin", "HEAD:main", cwd=clone, check=False).returncode == 0:
                return git.output("rev-parse", "HEAD", cwd=clone), attempt
            git.run("pull", "-q", "--rebase", "origin", "main", cwd=clone)
            commit = git.output("rev-parse", "HEAD", cwd=clone)
        raise AssertionError(f"pusher {i} never got {commit} in")

    with ThreadPoolExecutor(RETRYING_PUSHERS) as pool:
        accepted = list(pool.map(pusher, range(RETRYING_PUSHERS)))
    history = git.output("rev-list", "--first-parent", "main", cwd=repo).split()
    for commit, _ in accepted:
        assert commit in history, "an accepted push is missing from main"
    files = git.output("ls-tree", "--name-only", "main", cwd=repo).split()
    assert {f"pusher{i}.txt" for i in range(RETRYING_PUSHERS)} <= set(files)
    # Linear: every accepted push built on the one before.
    assert git.output("rev-list", "--merges", "main", cwd=repo) == ""
    assert max(attempts for _, attempts in accepted) > 1, "the pushers never actually raced"
    assertHealthy(git, repo, shared)
