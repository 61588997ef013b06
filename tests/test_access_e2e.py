"""
--access end to end: the real daemon, real git, several htpasswd users, one
conf of rules as a team would write it.
"""

from __future__ import annotations

import base64
import http.client
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.rawhttp import pushCommands
from tests.test_e2e_production import htpasswd, withCredentials

pytestmark = pytest.mark.skipif(
    shutil.which("htpasswd") is None, reason="htpasswd (Debian: apache2-utils) is not installed"
)

CONF = """\
@devs    = alice bob
@interns = carol

repo product
    RW+                 = alice
    RW   main$          = bob
    RW+  dev/           = @devs @interns
    -    refs/tags/v[0-9] = @interns
    RW   refs/tags/     = bob @interns
    R                   = @all

repo secret
    RW+ = alice

repo users/CREATOR/[a-z].*
    C   = @devs
    RW+ = CREATOR
    R   = @all
"""

PASSWORDS = {"alice": "a-pw", "bob": "b-pw", "carol": "c-pw"}
ZERO = "0" * 40


def basic(user: str) -> str:
    """An HTTP Basic Authorization value for one of the team."""
    return "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()


class Team:
    """The daemon, its conf and root, and a worktree per user."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "srv"
        self.root.mkdir()
        self.conf = base / "access.conf"
        self.conf.write_text(CONF)
        self.users = base / "users.htpasswd"
        for user, password in PASSWORDS.items():
            htpasswd(self.users, user, password)
        self.git = GitClient(base / "home")
        self.work = base / "work"
        self.git.run("init", "-q", str(self.work))
        self.first = self.git.commit(self.work, "a.txt", "a\n")
        for name in ("product", "secret"):
            self.git.bare(self.root / f"{name}.git")
            self.git.run("push", "-q", str(self.root / f"{name}.git"), "main", cwd=self.work)
        self.daemon: Daemon = startDaemon(
            self.root, "--auth", f"htpasswd:{self.users}", "--access", str(self.conf)
        )

    def url(self, user: str | None, repo: str) -> str:
        url = self.daemon.url(f"{repo}.git")
        return url if user is None else withCredentials(url, user, PASSWORDS[user])

    def push(self, user: str, repo: str, *refspecs: str, force: bool = False):
        args = ["push", "--porcelain", *(["--force"] if force else [])]
        return self.git.run(*args, self.url(user, repo), *refspecs, cwd=self.work, check=False)

    def ref(self, repo: str, ref: str) -> str | None:
        result = self.git.run(
            "--git-dir",
            str(self.root / f"{repo}.git"),
            "rev-parse",
            "-q",
            "--verify",
            ref,
            check=False,
        )
        return result.stdout.strip() or None

    def get(self, path: str, user: str | None = None) -> tuple[int, bytes, str | None]:
        headers = {}
        if user is not None:
            headers["Authorization"] = basic(user)
        connection = http.client.HTTPConnection(self.daemon.host, self.daemon.port, timeout=30)
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body, response.getheader("WWW-Authenticate")


@pytest.fixture
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """A fresh daemon and repositories per test: each test pushes, and none may see another's."""
    team = Team(tmp_path_factory.mktemp("team"))
    yield team
    team.daemon.stop()


def test_allowedRefsLandAndRefusedOnesChangeNothing(team: Team) -> None:
    """In one push, the refs the user may write land and the others stay as they were."""
    team.git.run("checkout", "-q", "-b", "topic", cwd=team.work)
    new = team.git.commit(team.work, "b.txt", "b\n")
    # Another test of the module may have moved main already: compare with
    # what it is now, not with the first commit.
    mainBefore = team.ref("product", "refs/heads/main")
    result = team.push("carol", "product", "topic:refs/heads/dev/carol", "topic:main")
    assert team.ref("product", "refs/heads/dev/carol") == new
    assert team.ref("product", "refs/heads/main") == mainBefore
    assert "gitserve: access denied: W refs/heads/main product carol DENIED by fallthru" in (
        result.stderr
    )
    assert "!\trefs/heads/topic:refs/heads/main\t[remote rejected] (hook declined)" in result.stdout


def test_rewindNeedsPlusEvenWithForce(team: Team) -> None:
    """A rewind is recognised on the server: bob's --force is refused, alice's RW+ is not."""
    team.git.run("checkout", "-q", "main", cwd=team.work)
    ahead = team.git.commit(team.work, "c.txt", "c\n")
    assert team.push("bob", "product", "main").returncode == 0
    assert team.ref("product", "main") == ahead
    team.git.run("reset", "-q", "--hard", team.first, cwd=team.work)
    rewound = team.git.commit(team.work, "d.txt", "d\n")
    result = team.push("bob", "product", "main", force=True)
    assert result.returncode != 0
    assert "+ refs/heads/main product bob DENIED by fallthru" in result.stderr
    assert team.ref("product", "main") == ahead
    assert team.push("alice", "product", "main", force=True).returncode == 0
    assert team.ref("product", "main") == rewound


def test_denyRuleOnTags(team: Team) -> None:
    """A deny rule stops an intern's v1 tag; other tags land."""
    team.git.run("tag", "-f", "v1", cwd=team.work)
    team.git.run("tag", "-f", "nightly", cwd=team.work)
    result = team.push("carol", "product", "refs/tags/v1", "refs/tags/nightly")
    assert "DENIED by refs/tags/v[0-9]" in result.stderr
    assert team.ref("product", "refs/tags/v1") is None
    assert team.ref("product", "refs/tags/nightly") is not None


def test_hostileRefNames(team: Team) -> None:
    """Odd case and refs git itself refuses never get past the rules (or git)."""
    head = team.ref("product", "main")
    # bob may write main$ only: Main is another ref, which he may not create.
    result = team.push("bob", "product", "main:refs/heads/Main")
    assert team.ref("product", "refs/heads/Main") is None
    assert "DENIED" in result.stderr
    for ref in ("refs/heads/../x", "refs/heads/a\x01b", "refs/heads/x\nrefs/heads/y"):
        body = pushCommands(ZERO, str(head), ref) + b"PACK\x00\x00\x00\x02\x00\x00\x00\x00"
        connection = http.client.HTTPConnection(team.daemon.host, team.daemon.port, timeout=30)
        connection.request(
            "POST",
            "/product.git/git-receive-pack",
            body=body,
            headers={
                "Content-Type": "application/x-git-receive-pack-request",
                "Authorization": basic("alice"),
            },
        )
        connection.getresponse().read()
        connection.close()
    refs = team.git.output("--git-dir", str(team.root / "product.git"), "for-each-ref")
    assert "/x" not in refs.replace("dev/carol", "") and "a\x01b" not in refs


def test_unreadableLooksMissing(team: Team) -> None:
    """secret (unreadable to bob) and a missing repository get the same status and body."""
    path = "/{}.git/info/refs?service=git-upload-pack"
    for user, status in (("bob", 404), (None, 401)):
        secret = team.get(path.format("secret"), user)
        missing = team.get(path.format("nothere"), user)
        assert secret == missing
        assert secret[0] == status
    # The dumb protocol too.
    assert team.get("/secret.git/HEAD", "bob")[:2] == team.get("/nothere.git/HEAD", "bob")[:2]
    assert team.get("/secret.git/info/refs", "alice")[0] == 200


def test_wildRepositoryCreatedOnPush(team: Team) -> None:
    """bob pushes to users/bob/scratch: created, bob recorded, HEAD at the branch he pushed."""
    team.git.run("checkout", "-q", "-B", "feature", cwd=team.work)
    result = team.push("bob", "users/bob/scratch", "feature")
    assert result.returncode == 0, result.stderr
    created = team.root / "users" / "bob" / "scratch.git"
    assert (created / "gl-creator").read_text() == "bob\n"
    assert (created / "HEAD").read_text() == "ref: refs/heads/feature\n"
    clone = team.base / "clone"
    team.git.run("clone", "-q", team.url("carol", "users/bob/scratch"), str(clone))
    assert team.git.output("rev-parse", "--abbrev-ref", "HEAD", cwd=clone) == "feature"
    # carol reads it (R = @all) but may not write it (RW+ = CREATOR).
    assert team.push("carol", "users/bob/scratch", "feature:other").returncode != 0
    # carol is not in @devs: no C, so nothing is created, and it looks missing.
    assert team.push("carol", "users/carol/scratch", "feature").returncode != 0
    assert not (team.root / "users" / "carol").exists()


def test_reloadAfterEdit(team: Team) -> None:
    """An edit takes effect without a restart; a bad edit keeps the last good rules."""
    status = team.get("/secret.git/info/refs?service=git-upload-pack", "carol")[0]
    assert status == 404
    team.conf.write_text(CONF.replace("repo secret\n", "repo secret\n    R = carol\n"))
    os.utime(team.conf, (time.time() + 5, time.time() + 5))
    assert team.get("/secret.git/info/refs?service=git-upload-pack", "carol")[0] == 200
    team.conf.write_text(CONF + "repo broken\n    RX = carol\n")
    os.utime(team.conf, (time.time() + 10, time.time() + 10))
    assert team.get("/secret.git/info/refs?service=git-upload-pack", "carol")[0] == 200
    line = len(CONF.splitlines()) + 2
    assert f"access.conf:{line}: syntax error: 'RX = carol'" in team.daemon.log


def test_badConfStopsStartup(tmp_path: Path) -> None:
    """At start-up a bad conf stops the daemon with FILE:LINE: what is wrong."""
    conf = tmp_path / "bad.conf"
    conf.write_text("repo foo\n    RW+ = @undefined\n@g = @nosuch\n")
    with pytest.raises(AssertionError) as failure:
        startDaemon(tmp_path, "--access", str(conf))
    assert f"{conf}:3: undefined group '@nosuch'" in str(failure.value)
