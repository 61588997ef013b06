"""
The pack cache end to end: the real daemon with --pack-cache, the real git
client and raw sockets reading at different paces.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, bigRepository, startDaemon
from tests.rawhttp import wantRequest

NAK = b"0008NAK\n"


def settle(*paths: Path) -> None:
    """
    Date every file under C{paths} a minute back: the cache keeps no answer
    built from a file changed within its racy window (2 s), and these tests
    create their repositories just before fetching.
    """
    past = time.time() - 60
    for path in paths:
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.utime(os.path.join(folder, name), (past, past), follow_symlinks=False)
        os.utime(path, (past, past))


def daemonHome(tmp_path: Path, hook: str | None = None, name: str = "dhome") -> Path:
    """
    A daemon HOME. With C{hook} (a shell script's body), the git the daemon
    runs (which gets HOME, not GIT_CONFIG_GLOBAL) reads an
    uploadpack.packObjectsHook from C{HOME/.gitconfig} that runs it with
    pack-objects' command line as C{"$@"}.
    """
    home = tmp_path / name
    home.mkdir()
    if hook is not None:
        script = tmp_path / f"{name}-pack-objects-hook"
        script.write_text(f"#!/bin/sh\n{hook}\n")
        script.chmod(0o755)
        (home / ".gitconfig").write_text(f"[uploadpack]\n\tpackObjectsHook = {script}\n")
        settle(home)
    return home


def slowHook(seconds: float) -> str:
    """A pack-objects that starts C{seconds} late: a flight that stays open for others."""
    return f'sleep {seconds}\nexec "$@"'


def settleDaemon(home: Path) -> None:
    """The daemon's test-side global config is touched at start: date it back too."""
    settle(home.parent / f"{home.name}-global.gitconfig")


def post(daemon: Daemon, repository: str, body: bytes, receiveBuffer: int = 0) -> socket.socket:
    """Send a v0 upload-pack POST on a raw socket; the caller reads (or not)."""
    sock = socket.create_connection((daemon.host, daemon.port))
    if receiveBuffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receiveBuffer)
    sock.sendall(
        b"POST /%s/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        b"Content-Type: application/x-git-upload-pack-request\r\n"
        b"Content-Length: %d\r\n\r\n" % (repository.encode(), len(body)) + body
    )
    return sock


def readToEnd(sock: socket.socket, timeout: float = 120.0) -> bytes:
    """Everything the server sends until it closes."""
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    sock.close()
    return b"".join(chunks)


def readAllConcurrently(socks: list[socket.socket]) -> list[bytes]:
    """Read every socket to its end at once, each in its own thread."""
    results: list[bytes] = [b""] * len(socks)

    def read(index: int) -> None:
        results[index] = readToEnd(socks[index])

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(socks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def httpBody(raw: bytes) -> bytes:
    """The body of a 200 response, de-chunked when chunked."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    body = bytearray()
    while True:
        sizeLine, _, rest = rest.partition(b"\r\n")
        size = int(sizeLine, 16)
        if size == 0:
            return bytes(body)
        body += rest[:size]
        rest = rest[size + 2 :]


def assertValidPack(git: GitClient, body: bytes, scratch: Path) -> None:
    """A v0 answer without side-band is NAK then a pack git accepts whole."""
    assert body.startswith(NAK), body[:40]
    target = scratch / f"check-{time.monotonic_ns()}.git"
    git.run("init", "-q", "--bare", str(target))
    result = subprocess.run(
        ["git", "-C", str(target), "index-pack", "--stdin", "--strict"],
        input=body[len(NAK) :],
        env=git.env,
        capture_output=True,
    )
    assert result.returncode == 0, result.stderr


def cacheFields(daemon: Daemon, expected: int = 0, timeout: float = 10.0) -> list[str]:
    """
    The cache= field of every fetch line of the per-operation log, in order;
    waiting up to C{timeout} for C{expected} of them, since a line is logged
    once the child has ended, which may be after the client read the answer.
    """
    deadline = time.monotonic() + timeout
    while True:
        fields = [
            line.split(" cache=", 1)[1].split()[0]
            for line in daemon.lines
            if " cache=" in line and " git git-upload-pack " in line
        ]
        if len(fields) >= expected or time.monotonic() > deadline:
            return fields
        time.sleep(0.05)


def test_stormSharesOneGitAndAStalledReaderHoldsBackNobody(
    git: GitClient, root: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Five identical fetches, one stalled till the idle timeout: one git, four identical packs."""
    commit = bigRepository(git, root, tmp_path / "work", 8)
    settle(root)
    home = daemonHome(tmp_path, slowHook(2))
    cache = tmp_path / "cache"
    daemon = startDaemon(root, "--pack-cache", str(cache), "--idle-timeout", "3", home=home)
    daemons.append(daemon)
    settleDaemon(home)
    body = wantRequest(commit)
    stalled = post(daemon, "big.git", body, receiveBuffer=16 * 1024)
    readers = [post(daemon, "big.git", body) for _ in range(4)]
    answers = [httpBody(raw) for raw in readAllConcurrently(readers)]
    assert len(set(answers)) == 1
    assert len(answers[0]) > 8 * 1024 * 1024
    assertValidPack(git, answers[0], tmp_path)
    deadline = time.monotonic() + 30
    while "client read nothing" not in daemon.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "client read nothing" in daemon.log
    stalled.close()
    deadline = time.monotonic() + 10
    while len(cacheFields(daemon)) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(cacheFields(daemon)) == ["follow"] * 4 + ["lead"]
    assert sum(1 for line in daemon.lines if "cache=lead exit=0" in line) == 1
    # Followed, so kept: the next identical fetch is a hit, with no git.
    [raw] = readAllConcurrently([post(daemon, "big.git", body)])
    assert httpBody(raw) == answers[0]
    assert cacheFields(daemon)[-1] == "hit"
    # A stalled reader of a hit (sendfile) is dropped by the idle timeout too.
    stalledHit = post(daemon, "big.git", body, receiveBuffer=16 * 1024)
    deadline = time.monotonic() + 30
    while daemon.log.count("client read nothing") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert daemon.log.count("client read nothing") == 2
    stalledHit.close()
    assert daemon.rss() < 120 * 1024 * 1024


def test_leaderLeavingStillCompletesForFollowers(
    git: GitClient, root: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """The client that started git leaves; git goes on and the followers get valid packs."""
    commit = bigRepository(git, root, tmp_path / "work", 4)
    settle(root)
    home = daemonHome(tmp_path, slowHook(3))
    daemon = startDaemon(root, "--pack-cache", str(tmp_path / "cache"), home=home)
    daemons.append(daemon)
    body = wantRequest(commit)
    leader = post(daemon, "big.git", body)
    assert daemon.startedChildren()
    followers = [post(daemon, "big.git", body) for _ in range(2)]
    time.sleep(1)
    leader.close()
    answers = [httpBody(raw) for raw in readAllConcurrently(followers)]
    assert answers[0] == answers[1]
    assertValidPack(git, answers[0], tmp_path)
    assert any("cache=lead exit=0" in line for line in daemon.lines)


def clone(git: GitClient, daemon: Daemon, destination: Path, *options: str) -> None:
    git.run("-c", "protocol.version=2", "clone", "-q", "--bare", *options,
            daemon.url("project.git"), str(destination))  # fmt: skip
    git.run("-C", str(destination), "fsck", "--no-progress")


def test_pushThenFetchHasTheNewObjects(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A kept pack is never served after a push: the next clone has the new commit."""
    settle(root)
    home = daemonHome(tmp_path)
    daemon = startDaemon(
        root, "--pack-cache", str(tmp_path / "cache"), "--anonymous-push", home=home
    )
    daemons.append(daemon)
    settleDaemon(home)
    for i in range(3):
        clone(git, daemon, tmp_path / f"c{i}")
    assert cacheFields(daemon)[-3:] == ["lead", "lead", "hit"]
    new = git.commit(populated, "new.txt", "new\n")
    git.run("push", "-q", daemon.url("project.git"), "main", cwd=populated)
    clone(git, daemon, tmp_path / "after")
    assert git.output("-C", str(tmp_path / "after"), "rev-parse", "main") == new
    assert cacheFields(daemon)[-1] == "lead"


def test_shallowAndPartialFetchesGetTheirOwnPacks(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Full, shallow and blobless clones of one state: each gets the right objects."""
    git.run("config", "-f", str(root / "project.git" / "config"), "uploadpack.allowFilter", "1")
    settle(root)
    home = daemonHome(tmp_path)
    daemon = startDaemon(root, "--pack-cache", str(tmp_path / "cache"), home=home)
    daemons.append(daemon)
    settleDaemon(home)
    for i in range(2):
        clone(git, daemon, tmp_path / f"full{i}")
    shallow, blobless = tmp_path / "shallow", tmp_path / "blobless"
    clone(git, daemon, shallow, "--depth", "1")
    assert git.output("-C", str(shallow), "rev-list", "--count", "main") == "1"
    clone(git, daemon, blobless, "--filter=blob:none")
    missing = git.output(
        "-C", str(blobless), "rev-list", "--objects", "--missing=print", "main"
    ).splitlines()
    assert [line for line in missing if line.startswith("?")]
    assert git.output("-C", str(blobless), "rev-list", "--count", "main") == "3"
    clone(git, daemon, tmp_path / "full2")
    assert git.output("-C", str(tmp_path / "full2"), "rev-list", "--count", "main") == "3"
    assert "hit" not in cacheFields(daemon)[:-1]
    assert cacheFields(daemon)[-1] == "hit"


def test_corruptedEntryIsNeverServed(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A kept entry with a flipped byte is detected and removed; git answers instead."""
    settle(root)
    home = daemonHome(tmp_path)
    cache = tmp_path / "cache"
    daemon = startDaemon(root, "--pack-cache", str(cache), home=home)
    daemons.append(daemon)
    settleDaemon(home)
    for i in range(2):
        clone(git, daemon, tmp_path / f"c{i}")
    (entry,) = (cache / "entries").iterdir()
    data = bytearray(entry.read_bytes())
    data[-30] ^= 0x40
    entry.write_bytes(bytes(data))
    clone(git, daemon, tmp_path / "after")
    assert cacheFields(daemon)[-1] == "lead"
    assert "damaged" in daemon.log


def test_killedDuringAFlightThenRestartServesCorrectPacks(
    git: GitClient, root: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """SIGKILL with an answer half written: the restart removes it and serves valid packs."""
    commit = bigRepository(git, root, tmp_path / "work", 2)
    settle(root)
    # pack-objects' first 200 kB, then a stall: the daemon dies with a
    # half-written temporary file.
    home = daemonHome(tmp_path, '"$@" | { head -c 200000; sleep 30; }', name="stalling")
    cache = tmp_path / "cache"
    daemon = startDaemon(root, "--pack-cache", str(cache), home=home)
    daemons.append(daemon)
    body = wantRequest(commit)
    socks = [post(daemon, "big.git", body) for _ in range(2)]
    deadline = time.monotonic() + 30
    written = 0
    while written < 200000 and time.monotonic() < deadline:
        written = sum(f.stat().st_size for f in (cache / "tmp").iterdir())
        time.sleep(0.05)
    assert written >= 200000
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    for sock in socks:
        sock.close()
    again = startDaemon(root, "--pack-cache", str(cache), home=daemonHome(tmp_path))
    daemons.append(again)
    assert list((cache / "tmp").iterdir()) == []
    assert list((cache / "entries").iterdir()) == []
    answers = [httpBody(raw) for raw in readAllConcurrently([post(again, "big.git", body)])]
    assertValidPack(git, answers[0], tmp_path)


def test_unusableCacheDirectoryFetchesUncachedWithOneLogLine(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """A cache directory that cannot be created: clones work, and the log says so once."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    daemon = startDaemon(root, "--pack-cache", str(blocker / "cache"))
    daemons.append(daemon)
    for i in range(2):
        clone(git, daemon, tmp_path / f"c{i}")
    assert daemon.log.count("cannot be used") == 1
    assert cacheFields(daemon) == ["miss"] * 2


@pytest.mark.parametrize("size", ["0", "nonsense"])
def test_packCacheSizeMustBeASize(root: Path, size: str) -> None:
    """--pack-cache-size takes a size with k/m/g; anything else stops start-up."""
    from twisted.python import usage

    from gitserve.tap import Options

    options = Options()
    if size == "0":
        options.parseOptions(["--root", str(root), "--pack-cache-size", size])
        assert options["pack-cache-size"] == 0
    else:
        with pytest.raises(usage.UsageError):
            options.parseOptions(["--root", str(root), "--pack-cache-size", size])


def headOf(raw: bytes) -> bytes:
    return raw.partition(b"\r\n\r\n")[0].lower()


def test_hitOnPlainTcpGoesWithSendfileAndContentLength(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """On plain TCP a hit is sent whole with Content-Length (sendfile); misses are chunked."""
    commit = git.output("rev-parse", "HEAD", cwd=populated)
    settle(root)
    home = daemonHome(tmp_path)
    daemon = startDaemon(root, "--pack-cache", str(tmp_path / "cache"), home=home)
    daemons.append(daemon)
    settleDaemon(home)
    raws = [readToEnd(post(daemon, "project.git", wantRequest(commit))) for _ in range(3)]
    assert [b"transfer-encoding: chunked" in headOf(raw) for raw in raws] == [True, True, False]
    assert b"content-length: %d" % len(httpBody(raws[2])) in headOf(raws[2])
    assert cacheFields(daemon, expected=3) == ["lead", "lead", "hit"]
    accessLines = [line for line in daemon.lines if '"POST /project.git/git-upload-pack' in line]
    assert f"200 {len(httpBody(raws[2]))} " in accessLines[-1]
    for raw in raws:
        assertValidPack(git, httpBody(raw), tmp_path)


def test_hitOverTlsFallsBackToReadingTheFile(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Over TLS, sendfile cannot be used: the hit is read and written chunked, and is valid."""
    import ssl

    from tests.certs import makeSelfSigned

    key, cert = makeSelfSigned(tmp_path)
    commit = git.output("rev-parse", "HEAD", cwd=populated)
    settle(root)
    home = daemonHome(tmp_path)
    daemon = startDaemon(
        root,
        "--pack-cache",
        str(tmp_path / "cache"),
        home=home,
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )
    daemons.append(daemon)
    settleDaemon(home)
    context = ssl.create_default_context(cafile=str(cert))
    body = wantRequest(commit)
    raws = []
    for _ in range(3):
        sock = context.wrap_socket(
            socket.create_connection((daemon.host, daemon.port)), server_hostname="localhost"
        )
        sock.sendall(
            b"POST /project.git/git-upload-pack HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        raws.append(readToEnd(sock))
    assert cacheFields(daemon, expected=3) == ["lead", "lead", "hit"]
    assert b"transfer-encoding: chunked" in headOf(raws[2])
    assert httpBody(raws[2]) == httpBody(raws[1])
    assertValidPack(git, httpBody(raws[2]), tmp_path)


def test_leadWithoutAJobSlotIsRefusedAsWithoutTheCache(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """All job slots busy and no queue: a new lead is answered 503, as an uncached fetch is."""
    commit = git.output("rev-parse", "HEAD", cwd=populated)
    home = daemonHome(tmp_path, slowHook(3))
    daemon = startDaemon(
        root,
        "--pack-cache",
        str(tmp_path / "cache"),
        "--max-jobs",
        "1",
        "--max-queue",
        "0",
        home=home,
    )
    daemons.append(daemon)
    first = post(daemon, "project.git", wantRequest(commit))
    assert daemon.startedChildren()
    other = wantRequest(commit, "ofs-delta no-progress thin-pack")
    refused = readToEnd(post(daemon, "project.git", other))
    assert refused.startswith(b"HTTP/1.1 503"), refused[:100]
    assertValidPack(git, httpBody(readToEnd(first)), tmp_path)
