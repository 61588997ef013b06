"""
The git child's environment: a daemon started with a poisoned environment
passes none of it on, and a C{Git-Protocol} header (which becomes
C{GIT_PROTOCOL}) that is not the plain list git sends is refused.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, startDaemon
from tests.rawhttp import (
    RECEIVE_PACK_REQUEST,
    UPLOAD_PACK_REQUEST,
    connect,
    exchange,
    readAll,
    request,
    wantRequest,
)


def poisonedEnvironment(outside: Path) -> dict[str, str]:
    """
    Variables that would each change what git does if they reached it: serve
    another repository, hide every ref, break git's own helpers, preload a
    library, borrow objects from outside the root.
    """
    return {
        "GIT_DIR": str(outside),
        "GIT_CONFIG_PARAMETERS": "'transfer.hiderefs'='refs'",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "transfer.hiderefs",
        "GIT_CONFIG_VALUE_0": "refs",
        "GIT_EXEC_PATH": "/nonexistent/git-core",
        "LD_PRELOAD": "/nonexistent/poison.so",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(outside / "objects"),
        "GIT_TRACE": str(outside / "trace.log"),
        "GIT_TRACE_PACKET": str(outside / "trace-packet.log"),
    }


POISON_NAMES = [
    "GIT_DIR",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_VALUE_0",
    "GIT_EXEC_PATH",
    "LD_PRELOAD",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_TRACE",
    "GIT_TRACE_PACKET",
]


@dataclass
class Poisoned:
    """A daemon started with every poison in its environment."""

    daemon: Daemon
    git: GitClient
    base: Path
    outside: Path
    work: Path

    @property
    def repo(self) -> Path:
        return self.base / "srv" / "project.git"

    @property
    def poison(self) -> dict[str, str]:
        return poisonedEnvironment(self.outside)


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Poisoned]:
    """project.git open to anonymous pushes, a hook that records its environment."""
    base = tmp_path_factory.mktemp("env")
    git = GitClient(base / "home")
    outside = git.bare(base / "outside.git")
    work = base / "work"
    repo = base / "srv" / "project.git"
    git.seed(work, repo, http__receivepack="true")
    hook = repo / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\nenv > {base / 'hook-env.txt'}\ncat >/dev/null\n")
    hook.chmod(0o755)
    daemon = startDaemon(base / "srv", env=poisonedEnvironment(outside))
    try:
        yield Poisoned(daemon, git, base, outside, work)
    finally:
        daemon.stop()


def execedEnvironOf(pid: int, timeout: float = 10.0) -> dict[str, str]:
    """
    A child's environment once it runs git: between fork and exec, /proc
    still shows the daemon's own environment, which is not what git gets.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if Path(command[0].decode()).name.startswith("git"):
            break
        time.sleep(0.01)
    else:
        raise AssertionError(f"child {pid} never ran git: {command!r}")
    return environOf(pid)


def environOf(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_poisonedDaemonStillServesClonesAndPushes(poisoned: Poisoned) -> None:
    """Clone and push work and see every ref: hiderefs, GIT_DIR and exec path never reached git."""
    git = poisoned.git
    clone = poisoned.base / "clone"
    git.run("clone", "-q", poisoned.daemon.url("project.git"), str(clone))
    assert git.output("rev-parse", "HEAD", cwd=clone) == git.output(
        "rev-parse", "HEAD", cwd=poisoned.work
    )
    new = git.commit(clone, "new.txt", "new\n")
    git.run("push", "-q", "origin", "main", cwd=clone)
    assert git.output("rev-parse", "main", cwd=poisoned.repo) == new
    assert git.output("for-each-ref", cwd=poisoned.outside) == ""
    assert not (poisoned.outside / "trace.log").exists()
    assert not (poisoned.outside / "trace-packet.log").exists()


def test_hookSeesNoPoison(poisoned: Poisoned) -> None:
    """The environment a pre-receive hook gets holds none of the daemon's poison."""
    git = poisoned.git
    git.run("fetch", "-q", poisoned.daemon.url("project.git"), "main", cwd=poisoned.work)
    git.run("reset", "-q", "--hard", "FETCH_HEAD", cwd=poisoned.work)
    git.run("commit", "-q", "--allow-empty", "-m", "hook", cwd=poisoned.work)
    git.run("push", "-q", poisoned.daemon.url("project.git"), "HEAD:main", cwd=poisoned.work)
    env = dict(
        line.split("=", 1)
        for line in (poisoned.base / "hook-env.txt").read_text().splitlines()
        if "=" in line
    )
    # git sets GIT_DIR, GIT_EXEC_PATH and (for the quarantine)
    # GIT_ALTERNATE_OBJECT_DIRECTORIES for its hooks itself: each must be
    # git's own value, never the daemon's.
    for name, value in poisoned.poison.items():
        assert env.get(name) != value, name
    for name in ("GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT", "LD_PRELOAD", "GIT_TRACE"):
        assert name not in env, name
    assert env["GIT_COMMITTER_NAME"] == "anonymous"
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_childEnvironmentIsTheAllowlist(poisoned: Poisoned) -> None:
    """A live receive-pack child's /proc environ is exactly the allowlist, nothing inherited."""
    daemon = poisoned.daemon
    with connect(daemon.host, daemon.port) as sock:
        sock.sendall(
            request(
                "POST",
                "/project.git/git-receive-pack",
                headers={
                    "Content-Type": RECEIVE_PACK_REQUEST,
                    "Transfer-Encoding": "chunked",
                    "Git-Protocol": "version=0",
                },
            )
        )
        deadline = time.monotonic() + 10
        while not daemon.children() and time.monotonic() < deadline:
            time.sleep(0.05)
        children = daemon.children()
        assert children, "no git child started for the push"
        env = execedEnvironOf(children[0])
    assert not daemon.settledChildren(), "the push's child outlived its client"
    for name in POISON_NAMES:
        assert name not in env, name
    assert set(env) <= {
        "PATH",
        "HOME",
        "REMOTE_ADDR",
        "REMOTE_USER",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_HTTP_USER_AGENT",
        "GIT_PROTOCOL",
    }
    assert env["GIT_PROTOCOL"] == "version=0"


BAD_GIT_PROTOCOL = [
    "version=2;id",
    "version=2 object-format=sha1",
    "version=2:",
    ":version=2",
    "=2",
    "version==2",
    "version=2\x01",
    "version=$(id)",
    "version=2`id`",
    "v" * 300,
    "version=2:" + ":".join(f"k{i}=v" for i in range(60)),
]


@pytest.mark.parametrize("value", BAD_GIT_PROTOCOL)
def test_badGitProtocolIsRefused(poisoned: Poisoned, value: str) -> None:
    """A malformed or oversized Git-Protocol header is a 400 on every route."""
    daemon = poisoned.daemon
    probes = [
        request("GET", "/project.git/info/refs?service=git-upload-pack", {"Git-Protocol": value}),
        request(
            "POST",
            "/project.git/git-upload-pack",
            {"Content-Type": UPLOAD_PACK_REQUEST, "Git-Protocol": value},
            body=wantRequest("0" * 40),
        ),
        request(
            "POST",
            "/project.git/git-receive-pack",
            {"Content-Type": RECEIVE_PACK_REQUEST, "Git-Protocol": value},
            body=b"0000",
        ),
    ]
    for probe in probes:
        response = exchange(daemon.host, daemon.port, probe)
        assert response.status == 400, (value, response.raw[:200])
    assert not daemon.settledChildren()


@pytest.mark.parametrize(
    "header",
    [b"Git-Protocol: version=2\x00:evil=1", b"Git-Protocol: version=2\rX: y"],
)
def test_gitProtocolWithControlBytesIsRefused(poisoned: Poisoned, header: bytes) -> None:
    """A Git-Protocol header carrying NUL or a bare CR never reaches git: 400."""
    daemon = poisoned.daemon
    raw = (
        b"GET /project.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
        b"Host: localhost\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    )
    with connect(daemon.host, daemon.port) as sock:
        sock.sendall(raw)
        answer = readAll(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_repeatedGitProtocolIsRefused(poisoned: Poisoned) -> None:
    """Two Git-Protocol headers are ambiguous, so 400 rather than a guess."""
    daemon = poisoned.daemon
    response = exchange(
        daemon.host,
        daemon.port,
        request(
            "GET",
            "/project.git/info/refs?service=git-upload-pack",
            [("Git-Protocol", "version=2"), ("Git-Protocol", "version=1")],
        ),
    )
    assert response.status == 400


# The harness itself: a developer's own git setup never reaches the daemon.


def developerHome(tmp_path: Path) -> Path:
    """A HOME whose .gitconfig hides every ref from every fetch, were git to read it."""
    home = tmp_path / "developer-home"
    (home / ".config" / "git").mkdir(parents=True)
    hiding = "[transfer]\n\thideRefs = refs\n"
    (home / ".gitconfig").write_text(hiding)
    (home / ".config" / "git" / "config").write_text(hiding)
    return home


def test_harnessDaemonNeverReadsTheDevelopersGitConfig(
    tmp_path: Path, git: GitClient, root: Path, populated: Path, serve, monkeypatch
) -> None:
    """A daemon the harness starts sees main although the developer's ~/.gitconfig hides it."""
    home = developerHome(tmp_path)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GITSERVE_DEVELOPER_ONLY", "leaked")
    daemon = serve(root)
    head = git.output("rev-parse", "HEAD", cwd=populated)
    for version in ("0", "2"):
        refs = git.output(
            "-c", f"protocol.version={version}", "ls-remote", daemon.url("project.git")
        )
        assert f"{head}\trefs/heads/main" in refs, version
    environ = environOf(daemon.pid)
    assert environ["HOME"] != str(home)
    assert environ["GIT_CONFIG_GLOBAL"] != str(home / ".gitconfig")
    assert environ["GIT_CONFIG_NOSYSTEM"] == "1"
    assert "XDG_CONFIG_HOME" not in environ
    assert "GITSERVE_DEVELOPER_ONLY" not in environ


def test_developersGitConfigWouldHideTheRefs(
    tmp_path: Path, git: GitClient, root: Path, populated: Path, serve
) -> None:
    """The control: with that HOME on purpose, the daemon's git hides main: the test above bites."""
    daemon = serve(root, home=developerHome(tmp_path))
    for version in ("0", "2"):
        refs = git.output(
            "-c", f"protocol.version={version}", "ls-remote", daemon.url("project.git")
        )
        assert "refs/heads/main" not in refs, version
