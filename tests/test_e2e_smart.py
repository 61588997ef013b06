"""End to end: the real `twistd -n gitserve` and the real git client over smart HTTP."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from gitserve.core.pktline import FLUSH, parsePktLines, pktLine
from tests.conftest import Daemon, GitClient, bigRepository, startUploadPack


def countObjects(git: GitClient, repository: Path) -> int:
    """Objects reachable in a repository, as rev-list counts them."""
    return int(git.output("rev-list", "--all", "--objects", "--count", cwd=repository) or 0)


@pytest.fixture
def daemon(serve, root: Path, populated: Path) -> Daemon:
    """gitserve on a root holding project.git, push allowed to anyone."""
    return serve(root, "--anonymous-push")


@pytest.mark.parametrize("version", ["0", "2"])
def test_lsRemote(git: GitClient, daemon: Daemon, populated: Path, version: str) -> None:
    """ls-remote lists the same refs the repository holds, in v0 and v2."""
    out = git.output("-c", f"protocol.version={version}", "ls-remote", daemon.url("project.git"))
    head = git.output("rev-parse", "HEAD", cwd=populated)
    assert f"{head}\trefs/heads/main" in out.splitlines()


@pytest.mark.parametrize("version", ["0", "1", "2"])
def test_clone(
    git: GitClient, daemon: Daemon, populated: Path, tmp_path: Path, version: str
) -> None:
    """A clone in each protocol version has every object, the files, and passes fsck."""
    clone = tmp_path / f"clone{version}"
    result = git.run(
        "-c",
        f"protocol.version={version}",
        "clone",
        daemon.url("project"),
        str(clone),
        env={"GIT_TRACE_PACKET": "1"},
    )
    # The client really spoke the version asked for.
    if version == "2":
        assert "git< version 2" in result.stderr
    elif version == "1":
        assert "git< version 1" in result.stderr
    else:
        assert "version 1" not in result.stderr and "version 2" not in result.stderr
    assert (clone / "file2.txt").read_text() == "content 2\n" * 3
    git.run("fsck", "--strict", cwd=clone)
    assert countObjects(git, clone) == countObjects(git, populated)


def test_fetchAfterNewCommits(
    git: GitClient, daemon: Daemon, populated: Path, tmp_path: Path
) -> None:
    """A fetch brings exactly the commits pushed since the clone."""
    clone = tmp_path / "clone"
    git.run("clone", "-q", daemon.url("project.git"), str(clone))
    new = git.commit(populated, "later.txt", "later\n")
    git.run("push", "-q", daemon.url("project.git"), "main", cwd=populated)
    git.run("fetch", "-q", "origin", cwd=clone)
    assert git.output("rev-parse", "origin/main", cwd=clone) == new
    git.run("fsck", cwd=clone)


def test_shallowThenDeepen(git: GitClient, daemon: Daemon, tmp_path: Path) -> None:
    """--depth 1 gets one commit; --deepen 1 gets one more."""
    clone = tmp_path / "shallow"
    git.run("clone", "-q", "--depth", "1", daemon.url("project.git"), str(clone))
    assert git.output("rev-list", "--count", "HEAD", cwd=clone) == "1"
    git.run("fetch", "-q", "--deepen", "1", cwd=clone)
    assert git.output("rev-list", "--count", "HEAD", cwd=clone) == "2"


def test_partialClone(git: GitClient, daemon: Daemon, root: Path, tmp_path: Path) -> None:
    """--filter=blob:none leaves blobs out until checkout asks for them."""
    git.run("config", "-f", str(root / "project.git" / "config"), "uploadpack.allowFilter", "true")
    clone = tmp_path / "partial"
    git.run(
        "clone", "-q", "--no-checkout", "--filter=blob:none", daemon.url("project.git"), str(clone)
    )
    missing = git.output("rev-list", "--objects", "--all", "--missing=print", cwd=clone)
    assert sum(line.startswith("?") for line in missing.splitlines()) == 3
    git.run("checkout", "-q", "main", cwd=clone)
    assert (clone / "file0.txt").read_text() == "content 0\n"


def test_pushLifecycle(git: GitClient, serve, root: Path, tmp_path: Path) -> None:
    """Push to an empty repository, then branch, fast-forward, non-ff, force, delete, tags."""
    git.bare(root / "empty.git")
    daemon = serve(root, "--anonymous-push")
    url = daemon.url("empty.git")
    server = root / "empty.git"
    work = tmp_path / "w"
    git.run("init", "-q", str(work))
    first = git.commit(work, "a", "a\n")
    git.run("push", "-q", url, "main", cwd=work)
    assert git.output("rev-parse", "main", cwd=server) == first

    git.run("push", "-q", url, "main:topic", cwd=work)
    assert git.output("rev-parse", "topic", cwd=server) == first

    second = git.commit(work, "b", "b\n")
    git.run("push", "-q", url, "main", cwd=work)
    assert git.output("rev-parse", "main", cwd=server) == second

    git.run("reset", "-q", "--hard", first, cwd=work)
    diverged = git.commit(work, "c", "c\n")
    rejected = git.run("push", url, "main", cwd=work, check=False)
    assert rejected.returncode != 0
    assert "non-fast-forward" in rejected.stderr or "fetch first" in rejected.stderr
    assert git.output("rev-parse", "main", cwd=server) == second

    git.run("push", "-q", "--force", url, "main", cwd=work)
    assert git.output("rev-parse", "main", cwd=server) == diverged

    git.run("push", "-q", url, ":topic", cwd=work)
    assert git.run("rev-parse", "--verify", "-q", "topic", cwd=server, check=False).returncode != 0

    git.run("tag", "-a", "-m", "release", "v1.0", cwd=work)
    git.run("push", "-q", url, "v1.0", cwd=work)
    assert git.output("rev-parse", "v1.0^{commit}", cwd=server) == diverged
    assert git.output("cat-file", "-t", "v1.0", cwd=server) == "tag"
    git.run("fsck", "--strict", cwd=server)


def test_pushersIdentityReachesReflog(git: GitClient, serve, root: Path, populated: Path) -> None:
    """The server's reflog names the pusher as http-backend would: anonymous@http.<addr>."""
    git.run("config", "-f", str(root / "project.git" / "config"), "core.logAllRefUpdates", "true")
    daemon = serve(root, "--anonymous-push")
    git.commit(populated, "x", "x\n")
    git.run("push", "-q", daemon.url("project.git"), "main", cwd=populated)
    log = (root / "project.git" / "logs" / "refs" / "heads" / "main").read_text()
    assert "anonymous <anonymous@http.127.0.0.1>" in log


def test_preReceiveRefusalIsShown(
    git: GitClient, daemon: Daemon, root: Path, populated: Path
) -> None:
    """A pre-receive hook's refusal reaches the pusher as `remote: ...` and changes nothing."""
    hook = root / "project.git" / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'policy: pushes to main are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    before = git.output("rev-parse", "main", cwd=root / "project.git")
    git.commit(populated, "frozen", "x\n")
    result = git.run("push", daemon.url("project.git"), "main", cwd=populated, check=False)
    assert result.returncode != 0
    assert "remote: policy: pushes to main are frozen" in result.stderr
    assert "pre-receive hook declined" in result.stderr
    assert git.output("rev-parse", "main", cwd=root / "project.git") == before


def test_missingRepositoryIs404(git: GitClient, daemon: Daemon, tmp_path: Path) -> None:
    """A clone of a repository that does not exist fails with 404, as git reports it."""
    result = git.run("clone", daemon.url("nope.git"), str(tmp_path / "x"), check=False)
    assert result.returncode != 0
    assert "not found" in result.stderr.lower() or "404" in result.stderr


def test_disabledUploadPackIs403(
    git: GitClient, daemon: Daemon, root: Path, tmp_path: Path
) -> None:
    """http.uploadpack=false refuses the fetch with 403 and git shows why."""
    git.run("config", "-f", str(root / "project.git" / "config"), "http.uploadpack", "false")
    result = git.run("clone", daemon.url("project.git"), str(tmp_path / "x"), check=False)
    assert result.returncode != 0
    assert "403" in result.stderr
    assert "Service not enabled: 'upload-pack'" in result.stderr


def test_anonymousPushRefusedByDefault(git: GitClient, serve, root: Path, populated: Path) -> None:
    """An anonymous push is refused with a reason; with http.receivepack=true it lands."""
    daemon = serve(root)
    git.commit(populated, "y", "y\n")
    refused = git.run("push", daemon.url("project.git"), "main", cwd=populated, check=False)
    assert refused.returncode != 0
    assert "Anonymous push is not allowed" in refused.stderr
    git.run("config", "-f", str(root / "project.git" / "config"), "http.receivepack", "true")
    git.run("push", "-q", daemon.url("project.git"), "main", cwd=populated)
    assert git.output("rev-parse", "main", cwd=root / "project.git") == git.output(
        "rev-parse", "HEAD", cwd=populated
    )


def test_nestedAndNonBare(git: GitClient, serve, root: Path, tmp_path: Path) -> None:
    """Repositories in groups and non-bare ones are found with git's suffix rules."""
    git.bare(root / "team" / "app.git")
    work = root / "plain"
    git.run("init", "-q", str(work))
    git.commit(work, "f", "f\n")
    daemon = serve(root)
    assert git.run("ls-remote", daemon.url("team/app")).returncode == 0
    out = git.output("ls-remote", daemon.url("plain"))
    assert "refs/heads/main" in out


def uploadPackRequest(wants: list[str]) -> bytes:
    """A v0 upload-pack request for C{wants}, with no haves."""
    lines = [pktLine(f"want {wants[0]} side-band-64k ofs-delta\n".encode())]
    lines += [pktLine(f"want {w}\n".encode()) for w in wants[1:]]
    return b"".join(lines) + FLUSH + pktLine(b"done\n")


def test_slowReaderKeepsServerMemoryFlat(git: GitClient, serve, root: Path, tmp_path: Path) -> None:
    """A client that stops reading pauses git: server RSS stays flat, the pack completes."""
    head = bigRepository(git, root, tmp_path / "big", 48)
    daemon = serve(root)
    baseline = daemon.rss()

    body = uploadPackRequest([head])
    sock = startUploadPack(daemon, body)
    received = sock.recv(1024 * 1024)
    # Stop reading long enough for git to have produced the whole pack many times over.
    peak = baseline
    for _ in range(20):
        time.sleep(0.25)
        peak = max(peak, daemon.rss())
    assert peak - baseline < 16 * 1024 * 1024, (baseline, peak)
    sock.settimeout(60)
    total = len(received)
    while chunk := sock.recv(1024 * 1024):
        total += len(chunk)
        if total > 48 * 1024 * 1024 and chunk.endswith(b"0\r\n\r\n"):
            break
    sock.close()
    # The whole (incompressible) blob came through once the client read again.
    assert total > 48 * 1024 * 1024


def test_gitErrorBeforeOutputReachesClient(git: GitClient, serve, root: Path) -> None:
    """When git fails before writing, the client gets an ERR packet with git's complaint."""
    git.bare(root / "broken.git")
    # A repository whose config git cannot parse: git fails at start-up.
    (root / "broken.git" / "config").write_text("[core\n")
    daemon = serve(root)
    connection = http.client.HTTPConnection(daemon.host, daemon.port, timeout=30)
    connection.request("GET", "/broken.git/info/refs?service=git-upload-pack")
    response = connection.getresponse()
    data = response.read()
    assert response.status == 200
    packets = parsePktLines(data)
    assert packets[0].startswith(b"ERR ")
    assert b"bad config" in packets[0]
