"""
Streamed push through the real daemon: large pushes keep the daemon small and
its temporary directory empty, and refusals come from the headers, before
the client sends a byte of the body.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from gitserve.core.pktline import FLUSH, pktLine
from tests.conftest import Daemon, GitClient

# The daemon's own resident memory may not pass this during a push (issue 5).
RSS_LIMIT = 60 * 1024 * 1024
# Nor may any temporary file written for the push.
TEMPFILE_LIMIT = 1024 * 1024
ZERO_ID = "0" * 40


class Watcher:
    """
    Samples the daemon while a push runs: its RSS from /proc, the largest
    file in its TMPDIR, and the largest regular file it holds open there
    (which catches temporary files unlinked right after creation).
    """

    def __init__(self, daemon: Daemon, tmpdir: Path) -> None:
        self.daemon = daemon
        self.tmpdir = tmpdir
        self.maxRss = 0
        self.maxTempFile = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.maxRss = max(self.maxRss, self.daemon.rss())
        for path in self.tmpdir.rglob("*"):
            try:
                self.maxTempFile = max(self.maxTempFile, path.stat().st_size)
            except OSError:
                pass
        fds = Path(f"/proc/{self.daemon.pid}/fd")
        for fd in fds.iterdir():
            try:
                target = os.readlink(fd)
                if target.startswith(str(self.tmpdir)) or "(deleted)" in target:
                    self.maxTempFile = max(self.maxTempFile, fd.stat().st_size)
            except OSError:
                pass
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.05)

    @contextmanager
    def watching(self) -> Iterator[Watcher]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self._sample()


@pytest.fixture
def pushTarget(git: GitClient, root: Path, tmp_path: Path, serve) -> tuple[Daemon, Path, Path]:
    """The daemon (anonymous push, TMPDIR an empty directory) and an empty bare repository."""
    tmpdir = tmp_path / "daemon-tmp"
    tmpdir.mkdir()
    git.bare(root / "big.git")
    daemon = serve(root, "--anonymous-push", env={**os.environ, "TMPDIR": str(tmpdir)})
    return daemon, root / "big.git", tmpdir


def randomCommit(git: GitClient, work: Path, megabytes: int) -> str:
    """A commit of C{megabytes} of incompressible data, stored uncompressed."""
    git.run("init", "-q", str(work))
    git.run("config", "core.compression", "0", cwd=work)
    git.run("config", "pack.compression", "0", cwd=work)
    # No delta search between big random blobs: the push is then bound by
    # the transfer, which is what is measured.
    git.run("config", "core.bigFileThreshold", "1m", cwd=work)
    for index in range(0, megabytes, 32):
        with open(work / f"blob{index}", "wb") as f:
            f.write(os.urandom(min(32, megabytes - index) * 1024 * 1024))
    git.run("add", ".", cwd=work)
    git.run("commit", "-q", "-m", "big", cwd=work)
    return git.output("rev-parse", "HEAD", cwd=work)


@pytest.mark.parametrize(
    ("megabytes", "postBuffer"),
    [
        # Larger than http.postBuffer: git sends it chunked.
        pytest.param(300, "1m", id="chunked-300MB"),
        # Fits http.postBuffer: git sends it with a Content-Length.
        pytest.param(48, "64m", id="content-length-48MB"),
    ],
)
def test_largePushStreams(
    git: GitClient,
    tmp_path: Path,
    pushTarget: tuple[Daemon, Path, Path],
    megabytes: int,
    postBuffer: str,
) -> None:
    """A large push lands intact while the daemon stays small and writes no temporary file."""
    daemon, bare, tmpdir = pushTarget
    work = tmp_path / "big-work"
    head = randomCommit(git, work, megabytes)
    watcher = Watcher(daemon, tmpdir)
    with watcher.watching():
        git.run(
            "-c",
            f"http.postBuffer={postBuffer}",
            "push",
            "-q",
            daemon.url("big.git"),
            "main",
            cwd=work,
            timeout=600,
        )
    assert git.output("--git-dir", str(bare), "rev-parse", "refs/heads/main") == head
    git.run("--git-dir", str(bare), "fsck", "--no-dangling", "--no-progress")
    assert watcher.samples > 3
    assert watcher.maxTempFile <= TEMPFILE_LIMIT, watcher.maxTempFile
    assert watcher.maxRss <= RSS_LIMIT, f"daemon RSS reached {watcher.maxRss / 2**20:.1f} MiB"


def receivePackRequest(git: GitClient, work: Path, ref: str) -> bytes:
    """A receive-pack request creating C{ref} at HEAD of C{work}: commands, flush, pack."""
    head = git.output("rev-parse", "HEAD", cwd=work)
    command = f"{ZERO_ID} {head} {ref}\0report-status\n".encode()
    packBytes = subprocess.run(
        ["git", "pack-objects", "--stdout", "--revs", "-q"],
        input=b"HEAD\n",
        cwd=work,
        env=git.env,
        capture_output=True,
        check=True,
    ).stdout
    return pktLine(command) + FLUSH + packBytes


def rawRequest(daemon: Daemon, head: bytes, body: bytes = b"", timeout: float = 10) -> bytes:
    """Send C{head} (and C{body}) on a socket and read the answer until the server closes."""
    with socket.create_connection((daemon.host, daemon.port), timeout=timeout) as sock:
        sock.sendall(head + body)
        chunks = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_gzipPushLands(
    git: GitClient, tmp_path: Path, pushTarget: tuple[Daemon, Path, Path]
) -> None:
    """A gzip-encoded, chunked push (as a proxy or another client sends it) is inflated into git."""
    daemon, bare, tmpdir = pushTarget
    work = tmp_path / "gz-work"
    head = randomCommit(git, work, 4)
    body = gzip.compress(receivePackRequest(git, work, "refs/heads/main"))
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 30000]), body[i : i + 30000])
        for i in range(0, len(body), 30000)
    )
    answer = rawRequest(
        daemon,
        b"POST /big.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        chunks + b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:300]
    assert b"unpack ok" in answer and b"ok refs/heads/main" in answer
    assert git.output("--git-dir", str(bare), "rev-parse", "refs/heads/main") == head
    git.run("--git-dir", str(bare), "fsck", "--no-dangling", "--no-progress")
    assert list(tmpdir.iterdir()) == []


def answerBeforeBody(daemon: Daemon, head: bytes) -> bytes:
    """
    Send only the headers of a request and read the status line: the server
    must answer without a byte of the body (the socket's timeout fails the
    test otherwise).
    """
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as sock:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
        return data


@pytest.mark.parametrize(
    ("config", "framing", "status"),
    [
        # A declared Content-Length above --max-push-size.
        ({}, b"Content-Length: %d" % (1024 * 1024 + 1), b"413"),
        # The service switched off in the repository.
        ({"http__receivepack": "false"}, b"Transfer-Encoding: chunked", b"403"),
    ],
    ids=["too-large", "disabled"],
)
def test_refusalAnsweredBeforeBody(
    git: GitClient, root: Path, serve, config: dict[str, str], framing: bytes, status: bytes
) -> None:
    """A push refused from its headers is answered while its body is still unsent."""
    git.bare(root / "target.git", **config)
    daemon = serve(root, "--anonymous-push", "--max-push-size", "1m")
    answer = answerBeforeBody(
        daemon,
        b"POST /target.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n" + framing + b"\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer


def test_expectContinueRefusalSendsNoContinue(git: GitClient, root: Path, serve) -> None:
    """With Expect: 100-continue, a refused push is answered with its status and no "100"."""
    git.bare(root / "off.git", http__receivepack="false")
    daemon = serve(root, "--anonymous-push")
    answer = rawRequest(
        daemon,
        b"POST /off.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Content-Length: 1000000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403 "), answer
