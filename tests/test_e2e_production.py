"""
End to end, as an admin runs it: passwords, private mode, TLS, socket
activation, sd_notify, SIGTERM during a push, load shedding and deadlines,
with the real daemon and the real git client.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.certs import makeSelfSigned
from tests.conftest import (
    Daemon,
    GitClient,
    bigRepository,
    daemonCommand,
    daemonEnvironment,
    freePort,
    startUploadPack,
)

pytestmark = pytest.mark.skipif(
    shutil.which("htpasswd") is None, reason="htpasswd (Debian: apache2-utils) is not installed"
)


def htpasswd(path: Path, user: str, password: str) -> None:
    """Add or change a user with Apache's own tool, bcrypt at the cheapest cost."""
    create = [] if path.exists() else ["-c"]
    subprocess.run(
        ["htpasswd", *create, "-b", "-B", "-C", "4", str(path), user, password],
        check=True,
        capture_output=True,
    )


def withCredentials(url: str, user: str, password: str) -> str:
    return url.replace("://", f"://{user}:{password}@", 1)


def pushAs(git: GitClient, daemon: Daemon, user: str, password: str, worktree: Path) -> None:
    """Push main to project.git with credentials in the URL."""
    url = withCredentials(daemon.url("project.git"), user, password)
    git.run("push", "-q", url, "main", cwd=worktree)


def get(
    daemon: Daemon, path: str, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    """One plain HTTP GET; the response is read whole."""
    connection = http.client.HTTPConnection(daemon.host, daemon.port, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


def waitFor(condition, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def lockFiles(repository: Path) -> list[Path]:
    """Lock files a killed push could leave behind (refs, packed-refs, config, index)."""
    return [p for p in repository.rglob("*.lock")]


def slowHook(repository: Path, marker: Path, seconds: float) -> Path:
    """
    A pre-receive hook that says it started (C{marker}), records its pid and
    sleeps: a push held in flight for as long as a test needs.
    """
    pidFile = marker.with_suffix(".pid")
    hook = repository / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"echo $$ > {pidFile}\n"
        f"touch {marker}\n"
        # Detached from git's pipes, so that a killed receive-pack is not kept
        # alive by its hook holding them.
        f"exec sleep {seconds} >/dev/null 2>&1 </dev/null\n"
    )
    hook.chmod(0o755)
    return pidFile


@pytest.fixture
def users(tmp_path: Path) -> Path:
    """An htpasswd file with alice (password secret), made by `htpasswd -B`."""
    path = tmp_path / "users.htpasswd"
    htpasswd(path, "alice", "secret")
    return path


@pytest.fixture
def heldPush(git: GitClient, root: Path, populated: Path, tmp_path: Path):
    """
    Commit a file and push it to a daemon, returning once the push is held
    in its pre-receive hook (for the given seconds): a transfer in flight.
    The sleeping hooks are killed after the test.
    """
    pidFiles: list[Path] = []

    def hold(daemon: Daemon, hookSeconds: float, name: str) -> tuple[subprocess.Popen[str], str]:
        marker = tmp_path / f"hook-{name}"
        pidFiles.append(slowHook(root / "project.git", marker, hookSeconds))
        commit = git.commit(populated, f"{name}.txt", f"{name}\n")
        push = subprocess.Popen(
            ["git", "push", daemon.url("project.git"), "main"],
            cwd=populated,
            env=git.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        waitFor(marker.exists, what="the push to reach its hook")
        return push, commit

    yield hold
    for pidFile in pidFiles:
        try:
            os.kill(int(pidFile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


# Authentication ---------------------------------------------------------------


def test_anonymousCloneAuthenticatedPush(
    git: GitClient, serve, root: Path, populated: Path, users: Path, tmp_path: Path
) -> None:
    """Fetch needs no password; push with alice's password lands, and hooks see alice."""
    envFile = tmp_path / "hook-env"
    hook = root / "project.git" / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\n"
        f"env | grep -E '^(REMOTE_USER|GIT_COMMITTER_NAME|GIT_COMMITTER_EMAIL)=' > {envFile}\n"
    )
    hook.chmod(0o755)
    daemon = serve(root, "--auth", f"htpasswd:{users}")
    clone = tmp_path / "clone"
    git.run("clone", "-q", daemon.url("project.git"), str(clone))
    new = git.commit(clone, "alice.txt", "from alice\n")
    pushAs(git, daemon, "alice", "secret", clone)
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new
    seen = dict(line.split("=", 1) for line in envFile.read_text().splitlines())
    assert seen == {
        "REMOTE_USER": "alice",
        "GIT_COMMITTER_NAME": "alice",
        "GIT_COMMITTER_EMAIL": "alice@http.127.0.0.1",
    }
    git.run("fsck", "--strict", cwd=root / "project.git")


def test_anonymousPushIsAskedForCredentials(
    git: GitClient, serve, root: Path, populated: Path, users: Path, tmp_path: Path
) -> None:
    """receive-pack's advertisement answers 401 with a challenge: git prompts before any pack."""
    daemon = serve(root, "--auth", f"htpasswd:{users}", "--realm", "team repos")
    response = get(daemon, "/project.git/info/refs?service=git-receive-pack")
    assert response.status == 401
    assert response.getheader("WWW-Authenticate") == 'Basic realm="team repos", charset="UTF-8"'

    # Larger than http.postBuffer: git streams it chunked and could not
    # replay it after a late 401, so the 401 must come at info/refs.
    (populated / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    git.run("add", "large.bin", cwd=populated)
    new = git.commit(populated, "prompted.txt", "x\n")
    # Prompts disabled: git says it wanted to ask, and nothing was pushed.
    refused = git.run("push", daemon.url("project.git"), "main", cwd=populated, check=False)
    assert refused.returncode != 0
    assert "could not read Username" in refused.stderr
    # An askpass program answers the prompts git now shows.
    askpass = tmp_path / "askpass"
    prompts = tmp_path / "prompts"
    askpass.write_text(
        f'#!/bin/sh\necho "$1" >> {prompts}\n'
        'case "$1" in Username*) echo alice;; *) echo secret;; esac\n'
    )
    askpass.chmod(0o755)
    git.run(
        "push",
        "-q",
        daemon.url("project.git"),
        "main",
        cwd=populated,
        env={"GIT_ASKPASS": str(askpass)},
    )
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new
    asked = prompts.read_text()
    assert "Username for 'http://127.0.0.1:" in asked and "Password for 'http://alice@" in asked
    assert asked.count("Username") == 1
    git.run("fsck", "--strict", cwd=root / "project.git")


def test_wrongPasswordFails(
    git: GitClient, serve, root: Path, populated: Path, users: Path
) -> None:
    """A wrong password is refused and nothing changes."""
    daemon = serve(root, "--auth", f"htpasswd:{users}")
    before = git.output("rev-parse", "main", cwd=root / "project.git")
    git.commit(populated, "nope.txt", "x\n")
    result = git.run(
        "push",
        withCredentials(daemon.url("project.git"), "alice", "wrong"),
        "main",
        cwd=populated,
        check=False,
    )
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr
    assert git.output("rev-parse", "main", cwd=root / "project.git") == before
    waitFor(lambda: "authentication failed for 'alice'" in daemon.log, what="the failure log")


def test_htpasswdChangesWithoutRestart(
    git: GitClient, serve, root: Path, populated: Path, users: Path
) -> None:
    """A user added with htpasswd while the daemon runs can push at once."""
    daemon = serve(root, "--auth", f"htpasswd:{users}")
    time.sleep(0.01)
    htpasswd(users, "bob", "hunter2")
    new = git.commit(populated, "bob.txt", "bob\n")
    pushAs(git, daemon, "bob", "hunter2", populated)
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new


def test_unsupportedHtpasswdEntryStopsStartUp(root: Path, users: Path, tmp_path: Path) -> None:
    """An MD5 entry stops the daemon at start-up, naming the file and line."""
    subprocess.run(
        ["htpasswd", "-b", "-m", str(users), "carol", "pw"], check=True, capture_output=True
    )
    env = daemonEnvironment(tmp_path / "daemon-home")
    result = subprocess.run(
        daemonCommand(
            "--root",
            str(root),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--auth",
            f"htpasswd:{users}",
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode != 0
    assert (
        f"{users}:2: password scheme MD5 ($apr1$) is not supported" in result.stdout + result.stderr
    )


def test_privateMode(
    git: GitClient, serve, root: Path, populated: Path, users: Path, tmp_path: Path
) -> None:
    """--private: nothing without a user, missing looks like private, alice clones."""
    daemon = serve(root, "--auth", f"htpasswd:{users}", "--private")
    refused = git.run("clone", daemon.url("project.git"), str(tmp_path / "anon"), check=False)
    assert refused.returncode != 0 and "could not read Username" in refused.stderr

    answers = []
    for path in (
        "/project.git/info/refs?service=git-upload-pack",
        "/missing.git/info/refs?service=git-upload-pack",
    ):
        for headers in ({}, {"Authorization": "Basic YWxpY2U6d3Jvbmc="}):  # alice:wrong
            response = get(daemon, path, headers)
            answers.append((response.status, response.getheader("WWW-Authenticate"), response.body))
    assert answers[0][0] == 401
    assert all(answer == answers[0] for answer in answers), answers

    clone = tmp_path / "clone"
    git.run(
        "clone", "-q", withCredentials(daemon.url("project.git"), "alice", "secret"), str(clone)
    )
    assert (clone / "file0.txt").read_text() == "content 0\n"
    missing = get(
        daemon,
        "/missing.git/info/refs?service=git-upload-pack",
        {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    )
    assert missing.status == 404


def test_strcredMemoryChecker(git: GitClient, serve, root: Path, populated: Path) -> None:
    """Twisted's own memory: checker works through --auth too."""
    daemon = serve(root, "--auth", "memory:dave:pw")
    new = git.commit(populated, "dave.txt", "d\n")
    pushAs(git, daemon, "dave", "pw", populated)
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new


# Logs -------------------------------------------------------------------------


def test_accessLogAndOperationLog(
    git: GitClient, serve, root: Path, populated: Path, users: Path, tmp_path: Path
) -> None:
    """One combined-format line per request with the verified user; one line per git operation."""
    accessLog = tmp_path / "access.log"
    daemon = serve(root, "--auth", f"htpasswd:{users}", "--access-log", str(accessLog))
    git.commit(populated, "log.txt", "x\n")
    pushAs(git, daemon, "alice", "secret", populated)
    git.run("-c", "protocol.version=2", "ls-remote", daemon.url("project.git"))
    # Lines are written as responses finish, maybe after the client is done.
    waitFor(
        lambda: accessLog.exists() and "service=git-upload-pack" in accessLog.read_text(),
        what="the access log",
    )
    combined = re.compile(
        r'^127\.0\.0\.1 - (\S+) \[[^\]]+\] "(GET|POST) (\S+) HTTP/1\.1" '
        r'(\d{3}) (\d+|-) "[^"]*" "git/[^"]+"$'
    )
    lines = accessLog.read_text().splitlines()
    parsed = [combined.match(line) for line in lines]
    assert all(parsed), lines
    requests = [(m.group(1), m.group(2), m.group(3), m.group(4)) for m in parsed if m]
    assert ("alice", "POST", "/project.git/git-receive-pack", "200") in requests
    assert ("-", "GET", "/project.git/info/refs?service=git-upload-pack", "200") in requests
    pattern = (
        r"git git-receive-pack repo=project\.git user=alice protocol=v0 remote=127\.0\.0\.1 exit=0 "
        r"bytes_in=(\d+) bytes_out=(\d+) duration=[0-9.]+s"
    )
    waitFor(lambda: re.search(pattern, daemon.log) is not None, what="the operation log")
    operation = re.search(pattern, daemon.log)
    assert operation and int(operation.group(1)) > 0 and int(operation.group(2)) > 0, daemon.log
    advertised = (
        r"git git-upload-pack advertise repo=project\.git user=- protocol=v2 "
        r"remote=127\.0\.0\.1 exit=0"
    )
    waitFor(lambda: re.search(advertised, daemon.log) is not None, what="the v2 advertisement")


# TLS --------------------------------------------------------------------------


def servedCommonName(port: int, ca: Path) -> tuple[str, str]:
    """The CN of the certificate a new TLS connection gets, and the TLS version."""
    context = ssl.create_default_context(cafile=None)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        version = tls.version()
    certificate = x509.load_der_x509_certificate(der)
    return certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value, version or ""


def test_cloneOverHttpsAndCertificateReload(
    git: GitClient, serve, root: Path, populated: Path, tmp_path: Path
) -> None:
    """git clones over https with a self-signed CA; SIGHUP swaps the certificate, links stay."""
    key, cert = makeSelfSigned(tmp_path, commonName="first")
    daemon = serve(root, listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    url = f"https://127.0.0.1:{daemon.port}/project.git"
    untrusted = git.run("ls-remote", url, check=False)
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()
    clone = tmp_path / "clone"
    git.run("clone", "-q", url, str(clone), env={"GIT_SSL_CAINFO": str(cert)})
    git.run("fsck", cwd=clone)
    assert servedCommonName(daemon.port, cert) == ("first", servedCommonName(daemon.port, cert)[1])
    assert servedCommonName(daemon.port, cert)[1] in ("TLSv1.2", "TLSv1.3")

    # A connection opened before the renewal keeps working after it.
    context = ssl.create_default_context(cafile=str(cert))
    established = http.client.HTTPSConnection("127.0.0.1", daemon.port, context=context, timeout=30)
    established.request("GET", "/project.git/info/refs?service=git-upload-pack")
    established.getresponse().read()

    makeSelfSigned(tmp_path, commonName="renewed")
    daemon.process.send_signal(signal.SIGHUP)
    waitFor(lambda: "1 of 1 TLS certificates reloaded" in daemon.log, what="reload")
    assert servedCommonName(daemon.port, cert)[0] == "renewed"
    established.request("GET", "/project.git/info/refs?service=git-upload-pack")
    assert established.getresponse().status == 200
    established.close()
    assert daemon.process.poll() is None
    git.run("ls-remote", url, env={"GIT_SSL_CAINFO": str(cert)})


# systemd ------------------------------------------------------------------------


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="needs systemd-socket-activate (Debian: systemd)",
)
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_socketActivationAndSdNotify(
    git: GitClient, root: Path, populated: Path, tmp_path: Path, scheme: str
) -> None:
    """Socket-activated (plain or TLS), gitserve serves the passed socket, READY=1, STOPPING=1."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notifyPath = tmp_path / "notify"
    notify.bind(str(notifyPath))
    notify.settimeout(30)
    port = freePort()
    listen = "systemd:domain=INET:index=0"
    env = {}
    if scheme == "https":
        key, cert = makeSelfSigned(tmp_path)
        listen += f":privateKey={key}:certKey={cert}"
        env["GIT_SSL_CAINFO"] = str(cert)
    command = [
        "systemd-socket-activate",
        f"--listen=127.0.0.1:{port}",
        "--fdname=http",
        f"--setenv=NOTIFY_SOCKET={notifyPath}",
        *(
            f"--setenv={name}={value}"
            for name, value in daemonEnvironment(tmp_path / "daemon-home").items()
        ),
        *daemonCommand("--root", str(root), "--listen", listen),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # systemd-socket-activate starts the daemon on the first connection
        # (this clone, which waits in the inherited socket's backlog) and
        # execs it, so LISTEN_PID is the daemon's own pid.
        clone = tmp_path / "clone"
        git.run("clone", "-q", f"{scheme}://127.0.0.1:{port}/project.git", str(clone), env=env)
        assert (clone / "file1.txt").exists()
        assert notify.recv(4096).decode().startswith("READY=1\nSTATUS=serving")
        process.send_signal(signal.SIGTERM)
        assert notify.recv(4096).decode().startswith("STOPPING=1")
        # twistd ends by re-raising the signal it stopped for, as systemd expects.
        assert process.wait(timeout=30) == -signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        notify.close()
    output = process.stdout.read() if process.stdout else ""
    assert f"gitserve listening on 127.0.0.1:{port} ({listen})" in output


# Graceful shutdown ------------------------------------------------------------


def test_sigtermLetsPushInFlightFinish(git: GitClient, serve, root: Path, heldPush) -> None:
    """SIGTERM during a push: no new connections, the push completes, the daemon exits cleanly."""
    daemon = serve(root, "--anonymous-push", "--shutdown-grace", "30")
    push, new = heldPush(daemon, 2, "during")
    daemon.process.send_signal(signal.SIGTERM)
    waitFor(lambda: "letting 1 git operations finish" in daemon.log, what="drain to start")
    with pytest.raises(OSError):
        socket.create_connection((daemon.host, daemon.port), timeout=5).close()
    output, _ = push.communicate(timeout=60)
    assert push.returncode == 0, output
    assert daemon.process.wait(timeout=30) == -signal.SIGTERM
    # The log reader thread may still be behind the exit.
    waitFor(lambda: "Server Shut Down." in daemon.log, timeout=10, what="the last log line")
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new
    git.run("fsck", "--strict", cwd=root / "project.git")
    assert lockFiles(root / "project.git") == []


def test_sigtermPastGraceAppliesNothing(git: GitClient, serve, root: Path, heldPush) -> None:
    """A push still running after the grace is ended: nothing applied, fsck clean, no locks."""
    daemon = serve(root, "--anonymous-push", "--shutdown-grace", "1")
    before = git.output("rev-parse", "main", cwd=root / "project.git")
    push, cut = heldPush(daemon, 60, "cut")
    started = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    assert daemon.process.wait(timeout=30) == -signal.SIGTERM
    # The log reader thread may still be behind the exit.
    waitFor(lambda: "Server Shut Down." in daemon.log, timeout=10, what="the last log line")
    # The grace, then SIGTERM to git (which ends at once): well before the hook's minute.
    assert time.monotonic() - started < 15
    output, _ = push.communicate(timeout=60)
    assert push.returncode != 0, output
    assert "ending 1 git operations" in daemon.log
    assert git.output("rev-parse", "main", cwd=root / "project.git") == before
    # The cut push's objects never reached the object store: git keeps them
    # in its quarantine directory, which a SIGTERMed receive-pack (git 2.39)
    # leaves behind for a later push to sweep.
    assert git.run("cat-file", "-e", cut, cwd=root / "project.git", check=False).returncode != 0
    git.run("fsck", "--strict", cwd=root / "project.git")
    assert lockFiles(root / "project.git") == []


# Limits -----------------------------------------------------------------------


def test_busyServerAnswers503ThenQueues(git: GitClient, serve, root: Path, heldPush) -> None:
    """Past --max-jobs and a full queue git shows a 503 and its message; with room, it waits."""
    daemon = serve(root, "--anonymous-push", "--max-jobs", "1", "--max-queue", "0")
    push, _ = heldPush(daemon, 3, "busy")
    refused = git.run("ls-remote", daemon.url("project.git"), check=False)
    assert refused.returncode != 0
    assert "remote: The server is busy" in refused.stderr
    assert "503" in refused.stderr
    raw = get(daemon, "/project.git/info/refs?service=git-upload-pack")
    assert raw.status == 503 and raw.getheader("Retry-After") == "10"
    assert push.wait(timeout=60) == 0
    git.run("ls-remote", daemon.url("project.git"))

    # The same load with a queue: the second request waits its turn instead.
    queued = serve(root, "--anonymous-push", "--max-jobs", "1", "--max-queue", "4")
    push, _ = heldPush(queued, 3, "queued")
    waited = git.run("ls-remote", queued.url("project.git"))
    assert "refs/heads/main" in waited.stdout
    assert push.wait(timeout=60) == 0


def test_slowHeadersAreDropped(serve, root: Path, populated: Path) -> None:
    """A client that trickles its headers is dropped at the header deadline."""
    daemon = serve(root, "--header-timeout", "1", "--idle-timeout", "30")
    with socket.create_connection((daemon.host, daemon.port), timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /project.git/info/refs?service=git-upload-pack HTTP/1.1\r\n")
        for header in (b"Host: x\r\n", b"X-A: 1\r\n", b"X-B: 2\r\n"):
            time.sleep(0.4)
            try:
                sock.sendall(header)
            except OSError:
                break
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 5


def test_stalledReaderIsDroppedAndGitEnded(
    git: GitClient, serve, root: Path, tmp_path: Path
) -> None:
    """A client that stops reading a pack is dropped after --idle-timeout and its git child ends."""
    from tests.test_e2e_smart import uploadPackRequest

    head = bigRepository(git, root, tmp_path / "big", 24)
    daemon = serve(root, "--idle-timeout", "2")
    body = uploadPackRequest([head])
    sock = startUploadPack(daemon, body)
    sock.recv(65536)
    waitFor(lambda: daemon.children() != [], what="git to start")
    # Read nothing: the daemon drops the connection and ends git.
    waitFor(
        lambda: "client read nothing for 2.0s" in daemon.log, timeout=20, what="the stall timeout"
    )
    waitFor(lambda: daemon.children() == [], timeout=15, what="git to end")
    sock.settimeout(10)
    with pytest.raises(OSError):
        while sock.recv(1024 * 1024):
            pass
        raise ConnectionResetError("closed")
    sock.close()
