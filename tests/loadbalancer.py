"""
The real HAProxy in front of gitserve replicas, for the end-to-end tests and
the soak: a generated configuration on loopback ports, HAProxy in the
foreground (C{haproxy -f cfg -db}), replicas started on fixed ports so that a
restarted one comes back where HAProxy expects it.

The configuration is the README's, plus two things only tests need: a
frontend per replica (to reach one of them on purpose) and
C{http-request set-src} from an C{X-Test-Client} header, so a test can make
HAProxy claim a client address (C{203.0.113.7}, C{2001:db8::7}) that could
not come from anywhere but the PROXY header.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import Daemon, freePort, startDaemon

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
METRICS_READY = re.compile(r"gitserve listening on ([0-9.]+):(\d+) \(--metrics ")
CLIENT_HEADER = "X-Test-Client"

# How HAProxy checks a replica: often, and two failed checks take it out, so
# a replica's drain announcement (--drain-delay) needs only about a second.
# A check may take longer than its interval on a loaded machine: without
# "timeout check" HAProxy would time it out after the interval and take a
# healthy replica out (every replica, under load: 503 for everyone).
CHECK_INTERVAL_MS = 200
CHECK_FALL = 2
DRAIN_DELAY = 1.5


def haproxyAvailable() -> bool:
    """Whether the haproxy binary is installed (Debian package haproxy)."""
    return shutil.which("haproxy") is not None or Path(HAPROXY).exists()


def haproxyConfig(front: int, replicas: list[int], pinned: list[int], proxyVersion: int) -> str:
    """
    A configuration balancing C{front} over C{replicas}, with one more
    frontend per replica (C{pinned[i]} reaches only C{replicas[i]}).
    """
    sendProxy = "send-proxy-v2" if proxyVersion == 2 else "send-proxy"
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{port} check inter {CHECK_INTERVAL_MS}ms "
        f"fall {CHECK_FALL} rise 1 {sendProxy}"
        for i, port in enumerate(replicas)
    )
    text = f"""
global
    maxconn 512
    log stderr format raw local0

defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 10s
    timeout queue 30s
    timeout check 5s
    # A connection refused by a replica that just stopped listening, or a
    # request that met a kept-alive connection as the replica closed it:
    # try again, on another replica.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response

frontend git
    bind 127.0.0.1:{front}
    http-request set-src hdr({CLIENT_HEADER}) if {{ hdr({CLIENT_HEADER}) -m found }}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /-/health
    http-check expect status 200
{servers}
"""
    for i, (port, replica) in enumerate(zip(pinned, replicas, strict=True)):
        text += f"""
frontend pinned{i}
    bind 127.0.0.1:{port}
    http-request set-src hdr({CLIENT_HEADER}) if {{ hdr({CLIENT_HEADER}) -m found }}
    default_backend only{i}

backend only{i}
    option httpchk GET /-/health
    server r{i} 127.0.0.1:{replica} check inter {CHECK_INTERVAL_MS}ms fall {CHECK_FALL} rise 1 \
{sendProxy}
"""
    return text


@dataclass
class Replica:
    """One gitserve behind the load balancer, on a fixed port."""

    root: Path
    port: int
    args: tuple[str, ...]
    daemon: Daemon | None = None
    logs: list[str] = field(default_factory=list)
    metricsPort: int | None = None
    # Python run in the daemon's process before twistd, e.g. a soak's memory
    # tracer, and the variables it reads.
    prelude: str = ""
    env: dict[str, str] = field(default_factory=dict)

    def start(self) -> Daemon:
        self.daemon = startDaemon(
            self.root,
            "--drain-delay",
            str(DRAIN_DELAY),
            "--metrics",
            "tcp:0:interface=127.0.0.1",
            *self.args,
            listen=f"haproxy:tcp:{self.port}:interface=127.0.0.1",
            prelude=self.prelude,
            env=self.env,
        )
        self.metricsPort = None
        return self.daemon

    @property
    def log(self) -> str:
        """Everything this replica logged, over all its runs."""
        return "".join(self.logs) + (self.daemon.log if self.daemon else "")

    def metricsURL(self) -> str:
        """Where this run of the replica serves /metrics."""
        assert self.daemon is not None
        deadline = time.monotonic() + 10
        while self.metricsPort is None and time.monotonic() < deadline:
            match = METRICS_READY.search(self.daemon.log)
            if match:
                self.metricsPort = int(match.group(2))
            else:
                time.sleep(0.05)
        assert self.metricsPort is not None, self.daemon.log
        return f"http://127.0.0.1:{self.metricsPort}/metrics"

    def scrape(self) -> str:
        """The text of /metrics now."""
        with urllib.request.urlopen(self.metricsURL(), timeout=10) as response:
            return response.read().decode()

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for the exit; return the exit status."""
        if self.daemon is None:
            return None
        daemon, self.daemon = self.daemon, None
        daemon.process.send_signal(signal.SIGTERM)
        try:
            code = daemon.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            daemon.process.kill()
            code = daemon.process.wait()
        time.sleep(0.1)  # the log pump's last lines
        self.logs.append(daemon.log)
        if daemon.scratch is not None:
            shutil.rmtree(daemon.scratch, ignore_errors=True)
        return code

    def restart(self) -> None:
        """A rolling restart's step: drain and stop, then start on the same port."""
        self.stop()
        self.start()


@dataclass
class LoadBalancer:
    """HAProxy in front of replicas; C{url()} goes through the balanced frontend."""

    replicas: list[Replica]
    proxyVersion: int = 2
    front: int = field(default_factory=freePort)
    pinned: list[int] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="haproxy-")))
    keepLog: bool = False

    def start(self) -> None:
        self.pinned = [freePort() for _ in self.replicas]
        config = self.directory / "haproxy.cfg"
        config.write_text(
            haproxyConfig(
                self.front, [r.port for r in self.replicas], self.pinned, self.proxyVersion
            )
        )
        self.process = subprocess.Popen(
            [HAPROXY, "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.directory / "haproxy.log", "w"),  # noqa: SIM115
            text=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.front), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise AssertionError("haproxy did not start: " + self.haproxyLog())
        self.waitHealthy()

    def haproxyLog(self) -> str:
        path = self.directory / "haproxy.log"
        return path.read_text() if path.exists() else ""

    def url(self, path: str, replica: int | None = None) -> str:
        port = self.front if replica is None else self.pinned[replica]
        return f"http://127.0.0.1:{port}/{path.lstrip('/')}"

    def waitHealthy(self, timeout: float = 20) -> None:
        """Until every replica answers /-/health through its own frontend."""
        deadline = time.monotonic() + timeout
        for index in range(len(self.replicas)):
            while True:
                try:
                    with urllib.request.urlopen(self.url("/-/health", index), timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"replica {index} never became healthy")
                time.sleep(0.05)
        # HAProxy's own check marks the server up on its next round.
        time.sleep(2 * CHECK_INTERVAL_MS / 1000)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.keepLog:
            shutil.rmtree(self.directory, ignore_errors=True)


def startCluster(
    root: Path, count: int, *args: str, proxyVersion: int = 2
) -> tuple[LoadBalancer, list[Replica]]:
    """C{count} replicas serving C{root}, and HAProxy in front of them, all started."""
    return balance([Replica(root, freePort(), args) for _ in range(count)], proxyVersion)


def balance(replicas: list[Replica], proxyVersion: int = 2) -> tuple[LoadBalancer, list[Replica]]:
    """Start C{replicas} and HAProxy in front of them."""
    for replica in replicas:
        replica.start()
    balancer = LoadBalancer(replicas, proxyVersion)
    balancer.start()
    return balancer, replicas
