"""URL → repository resolution: git's suffix rules, and a table of hostile paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gitserve.core.repository import ConfigCache, parseGitBoolean, resolveRepository
from tests.fakes import makeRepository


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A served root with bare, nested and non-bare repositories, and a secret next to it."""
    served = tmp_path / "srv"
    makeRepository(served / "bare.git")
    makeRepository(served / "team" / "app.git")
    makeRepository(served / "work" / ".git")
    makeRepository(served / "-option.git")
    makeRepository(tmp_path / "outside.git")
    (served / "escape.git").symlink_to(tmp_path / "outside.git")
    (served / "alias.git").symlink_to(served / "bare.git")
    gitfile = served / "sub"
    gitfile.mkdir()
    (gitfile / ".git").write_text(f"gitdir: {tmp_path / 'outside.git'}\n")
    linked = served / "linked"
    linked.mkdir()
    (linked / ".git").write_text("gitdir: ../bare.git\n")
    return served.resolve()


@pytest.mark.parametrize(
    "segments, gitDir",
    [
        ([b"bare.git"], "bare.git"),
        ([b"bare"], "bare.git"),
        ([b"team", b"app"], "team/app.git"),
        ([b"team", b"app.git"], "team/app.git"),
        ([b"work"], "work/.git"),
        ([b"work", b".git"], "work/.git"),
        ([b"alias.git"], "bare.git"),
        ([b"linked"], "bare.git"),
    ],
)
def test_gitSuffixRules(root: Path, segments: list[bytes], gitDir: str) -> None:
    """Names resolve as git's enter_repo() does: foo, foo.git, foo/.git, gitfiles, links inside."""
    repository = resolveRepository(root, segments)
    assert repository is not None
    assert repository.gitDir == root / gitDir


@pytest.mark.parametrize(
    "segments",
    [
        [],
        [b".."],
        [b"..", b"srv", b"bare.git"],
        [b"team", b"..", b"bare.git"],
        [b"."],
        [b".", b"bare.git"],
        [b""],
        [b"", b"bare.git"],
        [b"bare.git", b""],
        [b"team/app.git"],
        [b"team\\app.git"],
        [b"bare.git\x00"],
        [b"bare.git\n"],
        [b"bare.git\r"],
        [b"-option.git"],
        [b"-option"],
        [b"escape.git"],
        [b"escape"],
        [b"sub"],
        [b"/etc"],
        [b"team"],
        [b"missing.git"],
        [b"\xff.git"],
        [b"bare.git", b"objects"],
    ],
)
def test_hostilePathsResolveToNothing(root: Path, segments: list[bytes]) -> None:
    """Traversal, smuggled separators, control chars, options and escapes find nothing."""
    assert resolveRepository(root, segments) is None


def test_symlinkedRootIsFollowed(tmp_path: Path) -> None:
    """A root that is itself a link works once resolved, as tap resolves it."""
    makeRepository(tmp_path / "real" / "r.git")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    repository = resolveRepository((tmp_path / "link").resolve(), [b"r"])
    assert repository is not None and repository.name == "r"


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, True),
        (b"true", True),
        (b"Yes", True),
        (b"on", True),
        (b"1", True),
        (b"42", True),
        (b"false", False),
        (b"no", False),
        (b"OFF", False),
        (b"0", False),
        (b"", False),
        (b"maybe", None),
    ],
)
def test_gitBooleans(value: bytes | None, expected: bool | None) -> None:
    """Config booleans follow git's spellings, which dulwich's parser does not all accept."""
    assert parseGitBoolean(value) == expected


def test_configIsRereadWhenItChanges(root: Path) -> None:
    """A changed config is seen on the next request without a restart."""
    repository = resolveRepository(root, [b"bare"])
    assert repository is not None
    configs = ConfigCache()
    assert configs.getBoolean(repository, "http", "receivepack") is None
    config = repository.gitDir / "config"
    config.write_text(config.read_text() + "[http]\n\treceivepack = yes\n")
    os.utime(config, ns=(1, 1))
    assert configs.getBoolean(repository, "http", "receivepack") is True


def test_includedConfigIsFollowedAndReread(root: Path) -> None:
    """A switch set through include.path counts, and editing only the included file is seen."""
    repository = resolveRepository(root, [b"bare"])
    assert repository is not None
    config = repository.gitDir / "config"
    config.write_text(config.read_text() + "[include]\n\tpath = switches.cfg\n")
    switches = repository.gitDir / "switches.cfg"
    switches.write_text("[http]\n\tuploadpack = false\n")
    configs = ConfigCache()
    assert configs.getBoolean(repository, "http", "uploadpack") is False
    switches.write_text("[http]\n\tuploadpack = true\n\treceivepack = true\n")
    os.utime(switches, ns=(1, 1))
    assert configs.getBoolean(repository, "http", "receivepack") is True
    assert configs.getBoolean(repository, "http", "uploadpack") is True
