"""The access-rules engine, its reloading, the update hook's decisions and the CLI."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from gitserve import accesscli
from gitserve.core import accesshook
from gitserve.core.access import AccessConfError, AccessRules, decideRef, loadRules
from gitserve.core.accesscontrol import AccessControl, requestedName, ruleName
from gitserve.core.errors import AuthenticationRequired, Forbidden, NotFound
from gitserve.core.policy import Policy, Service
from gitserve.core.repository import ConfigCache, Repository
from tests.fakes import makeRepository


def test_catastrophicPatternDoesNotStall() -> None:
    """A pattern that backtracks for ever is cut off in milliseconds and denies."""
    rules = AccessRules.fromText("repo x(a|aa)+$\n    R = u1\nrepo foo\n    R = u1\n")
    began = time.monotonic()
    decision = rules.access("x" + "a" * 60 + "b", "u1", "R")
    assert time.monotonic() - began < 1.0
    assert not decision.allowed and "slow pattern" in decision.text
    # Other repositories are still decided normally.
    assert rules.access("foo", "u1", "R").allowed


@pytest.mark.parametrize(
    "text, line, reason",
    [
        ("repo foo\n    RX = u1\n", 2, "syntax error: 'RX = u1'"),
        ("@g = @nosuch\n", 1, "undefined group '@nosuch'"),
        ("repo foo(\n    R = u1\n", 1, "bad regular expression 'foo('"),
        ("repo foo\n    RW ma[ster = u1\n", 2, "bad refex 'refs/heads/ma[ster'"),
        ("repo foo\n    R = bad!user\n", 2, "bad username 'bad!user'"),
        ('include "missing.conf"\n', 1, "included file not found: 'missing.conf'"),
    ],
)
def test_confErrorsNameFileAndLine(tmp_path: Path, text: str, line: int, reason: str) -> None:
    """A conf gitserve will not serve from is refused with FILE:LINE: what is wrong."""
    conf = tmp_path / "gitolite.conf"
    conf.write_text(text)
    with pytest.raises(AccessConfError) as error:
        loadRules(str(conf))
    assert str(error.value).startswith(f"{conf}:{line}: {reason}")


def test_includesRelativeToMainFile(tmp_path: Path) -> None:
    """include names a file next to the main conf, whatever the working directory."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "main.conf").write_text('include "sub/*.conf"\nrepo foo\n    RW = @team\n')
    (tmp_path / "sub" / "team.conf").write_text("@team = u1 u2\n")
    rules = loadRules(str(tmp_path / "main.conf"))
    assert rules.access("foo", "u2", "W").allowed
    assert str(tmp_path / "sub" / "team.conf") in rules.files


def test_ignoredLinesAreReportedNotGranted() -> None:
    """config, desc, other options and VREF rules are reported as ignored and grant nothing."""
    rules = AccessRules.fromText(
        "repo foo\n    config a.b = c\n    desc = x\n    option mirror.master = y\n"
        "    RW+ VREF/NAME/doc = u1\n    RW+ NAME/src = u1\n"
    )
    assert len(rules.ignored) == 5
    assert not rules.access("foo", "u1", "R").allowed


def test_snapshotDecidesAsTheRules() -> None:
    """The update hook's snapshot decides every ref exactly as the full rules do."""
    rules = AccessRules.fromText(
        "@devs = u1 u2\nrepo foo\n    RW+ dev/USER/ = @devs\n    - main = u2\n"
        "    RWC main$ = @devs\n    RW refs/tags/ = u1\n"
    )
    for user in ("u1", "u2", "u3"):
        snapshot = rules.pushRules("foo", user, "")
        for aa in ("W", "+", "C", "D"):
            for ref in ("refs/heads/main", "refs/heads/dev/u1/x", "refs/tags/v1", "refs/heads/o"):
                expected = rules.access("foo", user, rules.adjustAccess("foo", aa), ref)
                assert decideRef(snapshot, rules.adjustAccess("foo", aa), ref).text == expected.text


def test_hookNeedsWhatGitoliteNeeds() -> None:
    """Create, fast-forward, rewind, delete and tag moves need W, +, C or D as in gitolite."""
    old, new = "1" * 40, "2" * 40
    zero = "0" * 40
    ancestor = {"result": True}
    original = accesshook.isAncestor
    accesshook.isAncestor = lambda o, n, env: ancestor["result"]  # type: ignore[assignment]
    try:
        plain: dict[str, object] = {}
        assert accesshook.accessFor("refs/heads/m", zero, new, plain, {}) == "W"
        assert accesshook.accessFor("refs/heads/m", old, new, plain, {}) == "W"
        assert accesshook.accessFor("refs/heads/m", old, zero, plain, {}) == "+"
        assert accesshook.accessFor("refs/tags/v1", old, new, plain, {}) == "+"
        ancestor["result"] = False
        assert accesshook.accessFor("refs/heads/m", old, new, plain, {}) == "+"
        cd = {"createIsC": True, "deleteIsD": True}
        assert accesshook.accessFor("refs/heads/m", zero, new, cd, {}) == "C"
        assert accesshook.accessFor("refs/heads/m", old, zero, cd, {}) == "D"
    finally:
        accesshook.isAncestor = original  # type: ignore[assignment]


def test_hookRefusesWithoutSnapshot() -> None:
    """An update hook run without the daemon's rules refuses rather than allows."""
    assert accesshook.main(["update", "refs/heads/m", "0" * 40, "1" * 40], env={}) == 1


def test_reloadKeepsLastGoodRules(tmp_path: Path) -> None:
    """An edit is picked up; a bad edit keeps the rules that were good."""
    conf = tmp_path / "access.conf"
    conf.write_text("repo foo\n    R = u1\n")
    control = AccessControl(str(conf))
    assert control.rules.access("foo", "u1", "R").allowed
    conf.write_text("repo foo\n    R = u2\n")
    os.utime(conf, (time.time() + 5,) * 2)
    assert control.rules.access("foo", "u2", "R").allowed
    conf.write_text("repo foo\n    R = u3\n   oops\n")
    os.utime(conf, (time.time() + 10,) * 2)
    assert control.rules.access("foo", "u2", "R").allowed


def test_namesAsTheRulesSeeThem(tmp_path: Path) -> None:
    """A repository's rules name is its real path under the root, without .git."""
    makeRepository(tmp_path / "team" / "app.git")
    repository = Repository(gitDir=tmp_path / "team" / "app.git", name="alias.git")
    assert ruleName(tmp_path, repository) == "team/app"
    assert requestedName(["users", "alice", "new.git"]) == "users/alice/new"
    assert requestedName(["a..b"]) is None


def test_policyHidesUnreadableAsMissing(tmp_path: Path) -> None:
    """Under --access an unreadable repository is refused like a missing one; push needs W."""
    conf = tmp_path / "access.conf"
    conf.write_text("repo pub\n    R = @all\n    RW = u1\nrepo secret\n    R = u1\n")
    makeRepository(tmp_path / "pub.git")
    makeRepository(tmp_path / "secret.git")
    policy = Policy(
        configs=ConfigCache(), access=AccessControl(str(conf)), root=tmp_path, anonymousPush=True
    )
    secret = Repository(gitDir=tmp_path / "secret.git", name="secret")
    pub = Repository(gitDir=tmp_path / "pub.git", name="pub")
    with pytest.raises(NotFound):
        policy.checkVisible(secret, "u2")
    policy.checkVisible(secret, "u1")
    policy.canAuthenticate = True
    with pytest.raises(AuthenticationRequired):
        policy.checkVisible(secret, None)
    assert type(policy.hidden(None)) is AuthenticationRequired
    # --anonymous-push grants nothing under the rules.
    with pytest.raises(AuthenticationRequired):
        policy.checkService(pub, Service.RECEIVE_PACK, None)
    with pytest.raises(Forbidden):
        policy.checkService(pub, Service.RECEIVE_PACK, "u2")
    policy.checkService(pub, Service.RECEIVE_PACK, "u1")


def test_cliShowsTheRulesWalked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gitserve-access -s lists the rules it went through and the one that decided."""
    conf = tmp_path / "access.conf"
    conf.write_text("repo foo\n    RW main$ = u1\n    - dev/ = u1\n    RW+ = u2\n")
    makeRepository(tmp_path / "foo.git")
    status = accesscli.main(["--root", str(tmp_path), "-s", str(conf), "u1", "foo", "W", "dev/x"])
    out = capsys.readouterr().out
    assert status == 1
    assert f"r {conf}:2: RW main$ = u1" in out
    assert f"D {conf}:3: - dev/ = u1" in out
    assert out.rstrip().endswith("denied")
    assert accesscli.main(["--root", str(tmp_path), str(conf), "u1", "foo", "W", "main"]) == 0


def test_hookImportsNoTwisted() -> None:
    """The update hook runs once per ref: it imports the engine alone, not Twisted or dulwich."""
    import subprocess
    import sys

    code = (
        "import sys, gitserve.core.accesshook; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('twisted', 'dulwich')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
