"""
git:// end to end, against `git daemon` on the same repositories: clone in
protocol v0 and v2, git archive --remote where the repository allows it, and
the refusals (push, a missing repository, one not exported under
--require-export-ok, an archive not allowed) answered in git daemon's words.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.doors import GIT_LISTEN, GitDaemon, doorPort, startGitDaemon


class Setup:
    """gitserve (plain and with --require-export-ok) and git daemon on one root."""

    def __init__(self, base: Path) -> None:
        self.root = base / "srv"
        self.root.mkdir()
        self.git = GitClient(base / "client-home")
        self.head = self.git.seed(base / "work", self.root / "app.git")
        self.git.seed(base / "work2", self.root / "team" / "exported.git")
        (self.root / "team" / "exported.git" / "git-daemon-export-ok").touch()
        self.daemons: list[Daemon] = []
        self.ours = self.start()
        self.oursExportOk = self.start("--require-export-ok")
        self.reference: GitDaemon = startGitDaemon(self.git, self.root, "--export-all")
        self.referenceExportOk: GitDaemon = startGitDaemon(self.git, self.root)

    def start(self, *args: str) -> str:
        """Start gitserve with a git:// listener; its URL base."""
        daemon = startDaemon(self.root, "--listen-git", GIT_LISTEN, *args)
        self.daemons.append(daemon)
        return f"git://127.0.0.1:{doorPort(daemon, GIT_LISTEN)}"

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        self.reference.stop()
        self.referenceExportOk.stop()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The module's servers, stopped after its last test."""
    built = Setup(tmp_path_factory.mktemp("gitd"))
    yield built
    built.stop()


def lastLine(text: str, base: str) -> str:
    """The last line git printed, with the server's address taken out."""
    return text.strip().splitlines()[-1].replace(base, "BASE")


@pytest.mark.parametrize("version", ["0", "2"])
def test_cloneMatchesGitDaemon(setup: Setup, tmp_path: Path, version: str) -> None:
    """A git:// clone in v0 and v2: the same refs as git daemon's, a sound repository."""
    config = ("-c", f"protocol.version={version}")
    ours = setup.git.run(*config, "ls-remote", f"{setup.ours}/app.git").stdout
    theirs = setup.git.run(*config, "ls-remote", setup.reference.url("app.git")).stdout
    assert ours == theirs and setup.head in ours
    setup.git.run(*config, "clone", "-q", f"{setup.ours}/app.git", str(tmp_path / "clone"))
    setup.git.run("fsck", "--strict", cwd=tmp_path / "clone")
    assert setup.git.output("rev-parse", "HEAD", cwd=tmp_path / "clone") == setup.head
    log = setup.daemons[0].log
    pattern = (
        rf"git-upload-pack repo=app\.git user=daemon protocol=v{version} "
        r"remote=127\.0\.0\.1 exit=0 .*transport=git"
    )
    assert re.search(pattern, log), log[-2000:]


def test_pushRefusedAsGitDaemon(setup: Setup, tmp_path: Path) -> None:
    """A push over git:// is refused with git daemon's message, and changes nothing."""
    work = tmp_path / "work"
    setup.git.run("clone", "-q", f"{setup.ours}/app.git", str(work))
    setup.git.commit(work, "x.txt", "x\n")
    answers = []
    for base in (setup.ours, setup.reference.url("")):
        base = base.rstrip("/")
        result = setup.git.run("push", f"{base}/app.git", "main", cwd=work, check=False)
        assert result.returncode != 0
        answers.append(lastLine(result.stderr, base))
    assert (
        answers[0]
        == answers[1]
        == ("fatal: remote error: access denied or repository not exported: /app.git")
    )
    assert setup.git.output("rev-parse", "main", cwd=setup.root / "app.git") == setup.head


def test_refusalsAsGitDaemon(setup: Setup) -> None:
    """Missing repositories and traversal get git daemon's one answer."""
    for path in ("missing.git", "team/../app.git", "team"):
        answers = []
        for base in (setup.ours, setup.reference.url("").rstrip("/")):
            result = setup.git.run("ls-remote", f"{base}/{path}", check=False)
            assert result.returncode != 0
            answers.append(lastLine(result.stderr, base))
        assert answers[0] == answers[1], path


def test_requireExportOk(setup: Setup) -> None:
    """--require-export-ok serves and refuses what git daemon without --export-all does."""
    for path in ("team/exported.git", "app.git"):
        ours = setup.git.run("ls-remote", f"{setup.oursExportOk}/{path}", check=False)
        base = setup.referenceExportOk.url("").rstrip("/")
        theirs = setup.git.run("ls-remote", f"{base}/{path}", check=False)
        assert ours.returncode == theirs.returncode, path
        assert ours.stdout == theirs.stdout, path
        if ours.returncode:
            assert lastLine(ours.stderr, setup.oursExportOk) == lastLine(theirs.stderr, base)


def archiveFiles(git: GitClient, remote: str, tar: Path) -> list[str]:
    """C{git archive --remote=<remote> --format=tar HEAD}, listed by C{tar t}."""
    git.run("archive", f"--remote={remote}", "--format=tar", "-o", str(tar), "HEAD")
    listing = subprocess.run(["tar", "tf", str(tar)], capture_output=True, text=True, check=True)
    return listing.stdout.split()


def test_archiveAsGitDaemon(setup: Setup, tmp_path: Path) -> None:
    """git archive --remote works where daemon.uploadarch is true, else is refused as git daemon."""
    setup.git.seed(tmp_path / "work", setup.root / "archived.git", daemon__uploadarch="true")
    reference = setup.reference.url("").rstrip("/")
    ours = archiveFiles(setup.git, f"{setup.ours}/archived.git", tmp_path / "ours.tar")
    assert ours == archiveFiles(setup.git, f"{reference}/archived.git", tmp_path / "theirs.tar")
    assert ours == ["a.txt"]
    assert setup.daemons[0].waitForLog("git-upload-archive repo=archived.git")
    assert re.search(
        r"git-upload-archive repo=archived\.git user=daemon .*exit=0 .*transport=git",
        setup.daemons[0].log,
    ), setup.daemons[0].log[-2000:]
    # Not allowed (app.git), or allowed but not exported under --require-export-ok.
    for base, path in (
        (setup.ours, "app.git"),
        (reference, "app.git"),
        (setup.oursExportOk, "archived.git"),
        (setup.referenceExportOk.url("").rstrip("/"), "archived.git"),
    ):
        result = setup.git.run("archive", f"--remote={base}/{path}", "HEAD", check=False)
        assert result.returncode != 0
        assert lastLine(result.stderr, base) == (
            f"fatal: remote error: access denied or repository not exported: /{path}"
        ), base
