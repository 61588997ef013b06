"""
The access rules against gitolite itself: the same conf, the same
repositories on disk, the same questions; every answer must be gitolite's,
word for word (the refex that allowed, or the DENIED line).
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitserve.core.access import AccessRules
from tests import gitolite

pytestmark = pytest.mark.skipif(not gitolite.available(), reason="gitolite3 is not installed")

# How many questions were compared, for the report at the end of the module.
COMPARED = {"cases": 0}


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> gitolite.Gitolite:
    return gitolite.Gitolite.setUp(tmp_path_factory.mktemp("gitolite"))


def compare(
    oracle: gitolite.Gitolite,
    conf: str,
    wild: dict[str, str],
    repos: list[str],
    users: list[str],
    accesses: tuple[str, ...] = ("R", "W", "+", "C", "D", "^C"),
    refs: tuple[str, ...] = ("any", "refs/heads/master", "refs/heads/dev/alice/x", "refs/tags/v1"),
    named: tuple[str, ...] = (),
) -> list[str]:
    """Every question whose answer differs, as a line to read."""
    oracle.load(conf, wild, named)
    rules = AccessRules.fromText(conf)
    questions = list(itertools.product(repos, users, accesses, refs))
    answers = oracle.ask(questions)
    wrong = []
    onDisk = {repo: (oracle.exists(repo), oracle.creator(repo)) for repo in repos}
    for (repo, user, aa, ref), expected in zip(questions, answers, strict=True):
        exists, creator = onDisk[repo]
        creator = creator if exists else user
        decision = rules.access(
            repo, user, rules.adjustAccess(repo, aa, creator), ref, exists, creator
        )
        if expected.startswith("DIED"):
            # gitolite dies on a bad name: a refusal either way.
            same = not decision.allowed
        else:
            same = decision.text == expected
        if not same:
            wrong.append(f"{repo} {user} {aa} {ref}: gitolite {expected!r}, ours {decision.text!r}")
    COMPARED["cases"] += len(questions)
    return wrong


# Confs in the shape of gitolite's documentation (conf.html, rules.html,
# wild.html, refex.html), each exercising one of its stated behaviours.
DOCUMENTED = {
    "rule accumulation over blocks and @all": (
        """
        @staff = alice bob carol
        repo foo
            RW+ = alice
            RW = bob
            R = carol
        repo @all
            R = gitweb daemon
        repo foo
            RW+ dev/ = bob
        """,
        {},
    ),
    "deny rules for refs, and the first match decides": (
        """
        repo foo
            RW+ = alice
            - master = bob
            - refs/tags/v[0-9] = bob
            RW = bob
            RW master$ = carol
        """,
        {},
    ),
    "deny-rules for read": (
        """
        @secret = foo
        repo @secret
            option deny-rules = 1
            - = gitweb daemon
        repo @all
            R = gitweb daemon
            RW = alice
        """,
        {},
    ),
    "refexes, USER, tags and full ref names": (
        """
        @devs = alice bob
        repo foo
            RW+ dev/USER/ = @devs
            RW refs/tags/v[0-9] = alice
            RW refs/heads/m = bob
            R = @all
        """,
        {},
    ),
    "C and D inside RW: CREATE_IS_C, DELETE_IS_D": (
        """
        repo foo
            RW+C = u1
            RW+ = u2
            RW+CD dev/ = u3
        repo bar
            RWD = u1
            RW+ = u2
        """,
        {},
    ),
    "wild repositories with CREATOR and roles": (
        """
        @leads = u1 u2
        @devs = u1 u2 u3 u4
        repo foo/..*
            C = @leads
            RW+ = CREATOR
            RW = WRITERS
            R = READERS
        repo bar/CREATOR/..*
            C = @devs
            RW+ = CREATOR
            R = @all
        """,
        {"foo/p": "u1", "bar/u3/q": "u3", "bar/u4/u4": "u4"},
    ),
    "groups of patterns, nested groups, late members": (
        """
        @g1 = u1
        @g2 = @g1 u2
        @g1 = u3
        @wild = foo/.* bar
        repo @wild
            RW = @g2
            R = @g1
        repo baz
            RW+ = @g2 @g1
        """,
        {"foo/p": "u1"},
    ),
    "pattern surprises: alternation, dots, names as patterns": (
        """
        repo a|b foo.bar
            RW = u1
        repo f.*
            R = u2
        """,
        {},
    ),
    "comments, includes of none, options and desc ignored": (
        """
        # a comment
        repo foo   # trailing comment
            RW+    =   u1   # spaces
            desc = "the foo"
            config hooks.mailinglist = a@b.c
            option mirror.master = x
        """,
        {},
    ),
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documentedExamples(oracle: gitolite.Gitolite, name: str) -> None:
    """gitserve answers every question on gitolite's documented confs as gitolite does."""
    conf, wild = DOCUMENTED[name]
    conf = "\n".join(line.strip() for line in conf.splitlines())
    repos = ["foo", "bar", "baz", "a", "fooXbar", "foo/p", "foo/new", "bar/u3/q", "bar/u1/new"]
    users = ["alice", "bob", "daemon", "u1", "u2", "u3"]
    assert compare(oracle, conf, wild, repos, users) == []


USERS = ["u1", "u2", "u3", "u4"]
PERMS = ["R", "RW", "RW+", "-", "C", "RWC", "RW+C", "RW+CD", "RWD", "RW+D"]
REFEXES = ["", "master", "dev/", "refs/tags/v[0-9]", "master$", "dev/USER/", "refs/heads/o"]
REPO_NAMES = ["r1", "r2", "r3", "t/.*", "w/CREATOR/[a-z]+", "@r", "@all", "r[12]", "t/x"]


@st.composite
def confs(draw: st.DrawFn) -> str:
    """A small conf: groups, then blocks of rules over names, patterns and groups."""
    lines = []
    groups: list[str] = []
    for i in range(draw(st.integers(0, 3))):
        members = draw(st.lists(st.sampled_from(USERS + groups), min_size=1, max_size=3))
        lines.append(f"@g{i} = {' '.join(members)}")
        groups.append(f"@g{i}")
    if draw(st.booleans()):
        lines.append(
            f"@r = {' '.join(draw(st.lists(st.sampled_from(REPO_NAMES[:5]), min_size=1)))}"
        )
    principals = USERS + groups + ["@all", "CREATOR"]
    for _ in range(draw(st.integers(1, 4))):
        lines.append(
            "repo " + " ".join(draw(st.lists(st.sampled_from(REPO_NAMES), min_size=1, max_size=3)))
        )
        if draw(st.integers(0, 4)) == 0:
            lines.append("option deny-rules = 1")
        for _ in range(draw(st.integers(1, 5))):
            perm = draw(st.sampled_from(PERMS))
            refex = "" if perm == "C" else draw(st.sampled_from(REFEXES))
            who = " ".join(draw(st.lists(st.sampled_from(principals), min_size=1, max_size=2)))
            lines.append(f"    {perm} {refex} = {who}")
    return "\n".join(lines) + "\n"


@settings(
    # GITSERVE_GITOLITE_EXAMPLES=500 for a deeper run than CI's budget allows.
    max_examples=int(os.environ.get("GITSERVE_GITOLITE_EXAMPLES", "12")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(conf=confs())
def test_generatedConfs(oracle: gitolite.Gitolite, conf: str) -> None:
    """On generated confs, every (repository, user, access, ref) answer is gitolite's."""
    wild = {"w/u1/ab": "u1", "w/u2/cd": "u2", "t/y": "u3"}
    repos = ["r1", "r2", "t/x", "t/y", "t/new", "w/u1/ab", "w/u2/cd", "w/u1/zz"]
    refs = ("any", "refs/heads/master", "refs/heads/dev/u1/x", "refs/tags/v1")
    named = ("r1", "r2", "r3", "t/x")
    assert compare(oracle, conf, wild, repos, USERS + ["u5"], refs=refs, named=named) == []


def test_comparedEnough(oracle: gitolite.Gitolite) -> None:
    """The differential tests above compared thousands of answers (reported here)."""
    print(f"\ncompared {COMPARED['cases']} answers with gitolite access")
    assert COMPARED["cases"] >= 1000 or COMPARED["cases"] == 0
