"""
gitserve's SSH and git:// doors against what users run today, on the same
corpora in one run: C{python bench/run.py --only ssh}.

  - SSH: OpenSSH's C{sshd} (Debian's openssh-server) as a private instance on
    a loopback port, with its own C{sshd_config}, host key and
    C{authorized_keys} in a temporary directory. The key's line forces
    C{git-shell -c "$SSH_ORIGINAL_COMMAND"}, as gitolite and git-shell setups
    do, and C{AcceptEnv GIT_PROTOCOL} lets protocol v2 through, as git hosting
    setups configure it (without it sshd would quietly fall back to v0 and the
    comparison would not be like for like). sshd reads repositories by absolute
    path, gitserve by their path under C{--root}: the client URLs differ in
    their path only.
  - git://: C{git daemon --base-path=ROOT --export-all} on a loopback port.

Rows (the targets are issue 12's): a full clone of C{history.git} over SSH
(v2, wall); the server-side fetch cost over SSH, for the history and the
blobs (C{ssh host "git-upload-pack '<path>'"} sent, once its capabilities
arrived, the v2 fetch request that C{git clone} sends, its output read from a
pipe to the end, no index-pack);
a git:// clone (v2, wall); 16 concurrent SSH clones (all must succeed; the
daemon's peak memory); and the latency of one SSH connection: connect, key
exchange, key login, exec of C{git-upload-pack} on C{tiny.git} that is told
"nothing wanted" (a flush packet) after its advertisement, the same command on
both sides.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

from bench import procfs
from bench.corpus import Corpus
from bench.run import (
    Bench,
    WorkloadFailed,
    _cloneRunner,
    _peakKiB,
    _revParse,
    _samplerFor,
    cloneBurst,
    cloneRequestBody,
    machineDescription,
)
from bench.servers import GitserveServer, MissingDependency, Server
from tests.conftest import freePort
from tests.doors import makeKey, sshClientOptions

SSHD = Path("/usr/sbin/sshd")
GIT_SHELL = "/usr/bin/git-shell"
CLIENTS = 16
MiB = 1024 * 1024

# What a forced command looks like in gitolite- and git-shell-style setups:
# whatever the client asked for goes to git-shell, which runs git's own
# commands only, and nothing else of SSH's is allowed.
FORCED_COMMAND_OPTIONS = (
    'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",'
    "no-port-forwarding,no-X11-forwarding,no-agent-forwarding,no-pty"
)


def authorizedKeysLine(publicKey: str) -> str:
    """The C{authorized_keys} line that gives C{publicKey} git-shell and nothing else."""
    return f"{FORCED_COMMAND_OPTIONS} {publicKey.strip()}\n"


def nonLoopbackListeners(ports: set[int], tables: dict[str, str] | None = None) -> list[str]:
    """
    The listening sockets on C{ports} bound to anything but 127.0.0.1 or ::1.

    The benchmark starts an sshd that lets a key log in as root: it must not be
    reachable from the network even for a few minutes.

    @param tables: the text of C{/proc/net/tcp} and C{/proc/net/tcp6} by name
        (read from C{/proc} when not given).
    """
    loopback = {"0100007F", "00000000000000000000000001000000"}
    if tables is None:
        tables = {}
        for name in ("tcp", "tcp6"):
            try:
                tables[name] = Path(f"/proc/net/{name}").read_text()
            except OSError:
                tables[name] = ""
    found = []
    for name, text in tables.items():
        for line in text.splitlines()[1:]:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            if int(port, 16) in ports and address not in loopback:
                found.append(f"{name} {fields[1]}")
    return found


def _descendants(root: int, names: set[str]) -> list[int]:
    """
    C{root} and its descendants whose command name is in C{names}, reached
    through such processes only (one scan of C{/proc}: this runs every 20 ms
    while clients run, and must not steal their CPU).
    """
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        command = stat[stat.find("(") + 1 : stat.rfind(")")]
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        if command in names:
            children.setdefault(parent, []).append(int(entry.name))
    found, pending = [root], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


class SSHDReference(Server):
    """
    A private OpenSSH sshd on a loopback port: its own config, host key,
    C{authorized_keys} with a git-shell forced command, keys only.

    sshd insists on running as root for privilege separation (and on
    C{/run/sshd} existing); the login user is the one running the benchmark,
    root included, since C{PermitRootLogin prohibit-password} admits keys only.
    """

    name = "sshd"

    def __init__(self, root: Path, workDir: Path, publicKey: Path) -> None:
        self.root = root
        self.workDir = workDir / "sshd"
        self.publicKey = publicKey
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port = 0
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        if not SSHD.exists() or not Path(GIT_SHELL).exists():
            raise MissingDependency("sshd or git-shell is missing: apt-get install openssh-server")
        shutil.rmtree(self.workDir, ignore_errors=True)
        self.workDir.mkdir(parents=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.workDir / "host_key")],
            check=True,
        )
        (self.workDir / "authorized_keys").write_text(
            authorizedKeysLine(self.publicKey.read_text())
        )
        gitConfig = self.workDir / "gitconfig"
        gitConfig.write_text("[safe]\n\tdirectory = *\n")
        self.port = freePort()
        config = self.workDir / "sshd_config"
        config.write_text(f"""\
# Written by bench/doors.py: a private sshd for git over SSH, keys only.
ListenAddress 127.0.0.1
Port {self.port}
HostKey {self.workDir / "host_key"}
AuthorizedKeysFile {self.workDir / "authorized_keys"}
PidFile {self.workDir / "sshd.pid"}
StrictModes no
UsePAM no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowUsers {self.user}
AcceptEnv GIT_PROTOCOL
# git under sshd reads no one's configuration but this (as under gitserve).
SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL={gitConfig}
MaxStartups 64
MaxSessions 64
""")
        # sshd's privilege separation directory (a compile-time path);
        # the openssh-server package makes it at boot, a container may not have it.
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        subprocess.run([str(SSHD), "-t", "-f", str(config)], check=True)
        self._process = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workDir / "sshd.log", "wb"),
            start_new_session=True,
        )
        waitForPort(self.port, self._process, self.workDir / "sshd.log")

    def url(self, repository: str) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{self.root / repository}"

    def remotePath(self, repository: str) -> str:
        """The path as git puts it in the command line it sends (absolute here)."""
        return str(self.root / repository)

    def serverPids(self) -> list[int]:
        assert self._process is not None
        # The listener, each connection's privileged monitor and its
        # unprivileged child; not the shell, git-shell and git below them.
        return _descendants(self._process.pid, {"sshd"})

    def memoryKiB(self) -> int:
        return sum(procfs.proportionalSetKiB(pid) for pid in self.serverPids())


class GitDaemonReference(Server):
    """C{git daemon --export-all} over the same root on a loopback port."""

    name = "git daemon"

    def __init__(self, root: Path, workDir: Path, env: dict[str, str]) -> None:
        self.root = root
        self.workDir = workDir / "git-daemon"
        self.env = env
        self.port = 0
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)
        self.workDir.mkdir(parents=True)
        self.port = freePort()
        self._process = subprocess.Popen(
            [
                "git",
                "daemon",
                f"--base-path={self.root}",
                "--export-all",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                "--reuseaddr",
                str(self.root),
            ],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workDir / "stderr.log", "wb"),
            start_new_session=True,
        )
        waitForPort(self.port, self._process, self.workDir / "stderr.log")

    def url(self, repository: str) -> str:
        return f"git://127.0.0.1:{self.port}/{repository}"


class GitserveDoors(GitserveServer):
    """gitserve with its SSH and git:// doors open too, all on loopback ports."""

    def __init__(self, root: Path, workDir: Path, publicKey: Path) -> None:
        super().__init__(root, workDir, [])
        # Outside the directory GitserveServer.start empties.
        self.doorsDir = workDir / "gitserve-doors"
        self.publicKey = publicKey
        self.sshPort = 0
        self.gitPort = 0

    def start(self) -> None:
        shutil.rmtree(self.doorsDir, ignore_errors=True)
        keys = self.doorsDir / "keys"
        keys.mkdir(parents=True)
        shutil.copy(self.publicKey, keys / "bench.pub")
        self.sshPort, self.gitPort = freePort(), freePort()
        self.extraArgs = [
            "--listen-ssh",
            f"tcp:{self.sshPort}:interface=127.0.0.1",
            "--ssh-keys",
            str(keys),
            "--ssh-host-key",
            str(self.doorsDir / "host_key"),
            "--listen-git",
            f"tcp:{self.gitPort}:interface=127.0.0.1",
        ]
        super().start()
        assert self._process is not None
        waitForPort(self.sshPort, self._process, self.log)
        waitForPort(self.gitPort, self._process, self.log)

    def sshURL(self, repository: str) -> str:
        """The clone URL over SSH: the user name is ignored, the key says who it is."""
        return f"ssh://git@127.0.0.1:{self.sshPort}/{repository}"

    def gitURL(self, repository: str) -> str:
        """The clone URL over git://."""
        return f"git://127.0.0.1:{self.gitPort}/{repository}"


def waitForPort(port: int, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on C{port}, or fail with the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise RuntimeError(f"nothing accepts connections on port {port}; log:\n{tail}")


# -- the table -----------------------------------------------------------------------------------


@dataclass
class DoorRow:
    """
    One line of the table: gitserve against one reference.

    @ivar kind: C{"ratio<="} (gitserve / reference), C{"value<="} (gitserve's
        own figure), or C{"succeed"} (every sample of gitserve succeeded).
    """

    workload: str
    unit: str
    reference: str
    ours: list[float]
    theirs: list[float]
    kind: str = ""
    bound: float = 0.0
    peak: bool = False
    notes: list[str] = field(default_factory=list)

    def value(self, samples: list[float]) -> float | None:
        """The median (or, for peaks, the highest) of C{samples}."""
        if not samples:
            return None
        return max(samples) if self.peak else statistics.median(samples)

    def ratio(self) -> float | None:
        """gitserve / the reference."""
        ours, theirs = self.value(self.ours), self.value(self.theirs)
        return ours / theirs if ours is not None and theirs else None

    def target(self) -> str:
        """The target as the table shows it."""
        if self.kind == "ratio<=":
            return f"<= {self.bound:g}x {self.reference}"
        if self.kind == "value<=":
            return f"<= {self.bound:g} {self.unit} (gitserve)"
        return "all succeed" if self.kind == "succeed" else "—"

    def met(self) -> bool | None:
        """Whether gitserve met the target; None when it cannot be judged."""
        ours = self.value(self.ours)
        if self.kind and ours is None:
            return False  # gitserve failed the workload
        if self.kind == "succeed":
            return True
        if self.kind == "value<=":
            assert ours is not None
            return ours <= self.bound
        ratio = self.ratio()
        if self.kind == "ratio<=" and ratio is not None:
            return ratio <= self.bound
        return None


def _format(value: float | None, unit: str) -> str:
    if value is None:
        return "FAILED"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "MB":
        return f"{value:.1f} MB"
    return f"{value:.3f} s" if value < 10 else f"{value:.1f} s"


def formatDoorTable(rows: list[DoorRow], failures: list[str]) -> str:
    """The table in Markdown with its notes underneath."""
    lines = [
        "| workload | gitserve | reference | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for row in rows:
        ratio = row.ratio()
        lines.append(
            f"| {row.workload} | {_format(row.value(row.ours), row.unit)} | "
            f"{row.reference} {_format(row.value(row.theirs), row.unit)} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} | {row.target()} | "
            f"{ {True: 'yes', False: '**NO**', None: '—'}[row.met()] } |"
        )
        notes += [note for note in row.notes if note not in notes]
    notes += [f"FAILED {failure}" for failure in failures]
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines)


# -- the workloads -------------------------------------------------------------------------------


def gitSession(
    bench: Bench, args: list[str], extraEnv: dict[str, str], request: bytes, answered: bool = True
) -> float:
    """
    Run C{args} (ssh running git-upload-pack) as git's client does: read the
    advertisement to its flush packet, then send C{request} and end stdin,
    then read the answer from a pipe to the end; return the time from start to
    the last byte. With C{answered}, fail unless the answer ends with a flush
    packet (a pack cut short would otherwise time as a fast one); without, git
    must exit 0 with nothing more to say.

    The request is not sent before the advertisement was read: gitserve drops
    what a client sends before its git child has started (see the README).
    """
    started = time.perf_counter()
    process = subprocess.Popen(
        args,
        env=dict(bench.env, **extraEnv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    size, tail = 0, b""
    try:
        while (length := process.stdout.read(4)) not in (b"0000", b""):
            size += len(length) + len(process.stdout.read(int(length, 16) - 4))
        process.stdin.write(request)
        process.stdin.close()
        while chunk := process.stdout.read(MiB):
            size += len(chunk)
            tail = (tail + chunk)[-4:]
    except (ValueError, BrokenPipeError) as error:
        tail = repr(error).encode()
    elapsed = time.perf_counter() - started
    process.stdout.close()
    assert process.stderr is not None
    stderr = process.stderr.read()
    process.stderr.close()
    if process.wait() != 0 or size == 0 or tail != (b"0000" if answered else b""):
        raise WorkloadFailed(
            f"{' '.join(args)} exited {process.returncode} after {size} bytes "
            f"ending {tail!r}: {stderr.decode(errors='replace')[-500:]}"
        )
    return elapsed


def negotiatedCipher(bench: Bench, args: list[str]) -> str:
    """The cipher OpenSSH's client chose with a server (from C{ssh -v})."""
    completed = subprocess.run(
        ["ssh", *args[:-1], "-v", args[-1], "git-upload-pack '/nonexistent.git'"],
        env=bench.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    for line in completed.stderr.splitlines():
        if "kex: server->client cipher:" in line:
            return line.split("cipher:", 1)[1].split()[0]
    return "?"


def runDoors(
    corpus: Corpus, bench: Bench, workDir: Path, log: Callable[[str], None]
) -> tuple[str, dict]:
    """
    Start gitserve (SSH and git:// doors), a private sshd and git daemon, run
    the workloads, stop them all, and return the table with the raw results.
    """
    for program in ("ssh", "ssh-keygen"):
        if shutil.which(program) is None:
            raise MissingDependency(f"{program} is missing: apt-get install openssh-client")
    keyDir = workDir / "client-key"
    shutil.rmtree(keyDir, ignore_errors=True)
    keyDir.mkdir(parents=True)
    key = makeKey(keyDir / "id_ed25519")
    publicKey = key.with_suffix(".pub")
    options = sshClientOptions(key)
    # git adds -p PORT and, for v2, -o SendEnv=GIT_PROTOCOL itself.
    bench.env["GIT_SSH_COMMAND"] = "ssh " + " ".join(options)
    gitserve = GitserveDoors(corpus.root, workDir, publicKey)
    sshd = SSHDReference(corpus.root, workDir, publicKey)
    daemon = GitDaemonReference(corpus.root, workDir, bench.env)
    started: list[Server] = []
    rows: list[DoorRow] = []
    try:
        for starting in (gitserve, sshd, daemon):
            log(f"starting {starting.name} ...")
            starting.start()
            started.append(starting)
        ports = {gitserve.port, gitserve.sshPort, gitserve.gitPort, sshd.port, daemon.port}
        exposed = nonLoopbackListeners(ports)
        if exposed:
            raise RuntimeError(f"a server listens beyond loopback: {exposed}")

        # Each side's ssh command, for the rows that run ssh itself.
        def sshArgs(name: str) -> list[str]:
            if name == "gitserve":
                return [*options, "-p", str(gitserve.sshPort), "git@127.0.0.1"]
            return [*options, "-p", str(sshd.port), f"{sshd.user}@127.0.0.1"]

        def remotePath(name: str, repository: str) -> str:
            return f"/{repository}" if name == "gitserve" else sshd.remotePath(repository)

        sshURL: dict[str, Callable[[str], str]] = {"gitserve": gitserve.sshURL, "sshd": sshd.url}
        ciphers = {name: negotiatedCipher(bench, sshArgs(name)) for name in sshURL}
        cipherNote = "SSH cipher chosen by OpenSSH's client: " + ", ".join(
            f"{name} {cipher}" for name, cipher in ciphers.items()
        )
        history = corpus.history.name

        log("ssh clone ...")
        samples = bench.repeat(
            "ssh clone v2",
            {name: _cloneRunner(bench, url(history), "2") for name, url in sshURL.items()},
            bench.reps,
        )
        rows.append(
            DoorRow(
                f"full clone {history} over SSH (v2), wall",
                "s",
                "sshd",
                samples["gitserve"],
                samples["sshd"],
                "ratio<=",
                1.0,
                notes=[cipherNote],
            )
        )

        for repository, reps in ((corpus.history, bench.reps), (corpus.blobs, bench.heavyReps)):
            body = cloneRequestBody(bench, repository)
            log(f"ssh fetch cost {repository.name} ...")

            def fetchCost(name: str, repository: Path = repository, body: Path = body) -> float:
                command = f"git-upload-pack '{remotePath(name, repository.name)}'"
                return gitSession(
                    bench,
                    ["ssh", "-o", "SendEnv=GIT_PROTOCOL", *sshArgs(name), command],
                    {"GIT_PROTOCOL": "version=2"},
                    body.read_bytes(),
                )

            samples = bench.repeat(
                f"ssh fetch cost {repository.name}",
                {name: partial(fetchCost, name) for name in sshURL},
                reps,
            )
            rows.append(
                DoorRow(
                    f"server-side fetch cost over SSH, {repository.name} "
                    f"({_packMB(repository)} MB pack; v2, to last byte)",
                    "s",
                    "sshd",
                    samples["gitserve"],
                    samples["sshd"],
                    "ratio<=",
                    1.2,
                    notes=[
                        "fetch cost: `ssh host \"git-upload-pack '<path>'\"` (GIT_PROTOCOL="
                        "version=2 via SendEnv) fed, once its capabilities arrived, the v2 "
                        "fetch request of `git clone`; "
                        "the pack read from a pipe to the closing flush; no index-pack"
                    ],
                )
            )

        log("git:// clone ...")
        samples = bench.repeat(
            "git:// clone v2",
            {
                "gitserve": _cloneRunner(bench, gitserve.gitURL(history), "2"),
                "git daemon": _cloneRunner(bench, daemon.url(history), "2"),
            },
            bench.reps,
        )
        rows.append(
            DoorRow(
                f"full clone {history} over git:// (v2), wall",
                "s",
                "git daemon",
                samples["gitserve"],
                samples["git daemon"],
                "ratio<=",
                1.0,
            )
        )

        log(f"{CLIENTS} concurrent ssh clones ...")
        rows += concurrentSSH(bench, corpus, {"gitserve": gitserve, "sshd": sshd}, sshURL)

        log("ssh connection latency ...")
        tiny = corpus.tiny.name

        def connect(name: str) -> float:
            command = f"git-upload-pack '{remotePath(name, tiny)}'"
            return gitSession(bench, ["ssh", *sshArgs(name), command], {}, b"0000", False) * 1000

        samples = bench.repeat(
            "ssh connection", {name: partial(connect, name) for name in sshURL}, bench.reps * 8
        )
        rows.append(
            DoorRow(
                f"one SSH connection: handshake, key login, upload-pack of {tiny} "
                "told nothing is wanted (v0), latency",
                "ms",
                "sshd",
                samples["gitserve"],
                samples["sshd"],
                "ratio<=",
                1.0,
            )
        )
    finally:
        for server in reversed(started):
            server.stop()
        if sshd.port and _listening(sshd.port):
            log(f"warning: something still listens on sshd's port {sshd.port}")
    table = formatDoorTable(rows, bench.failures)
    raw = {"rows": [asdict(row) | {"ratio": row.ratio(), "met": row.met()} for row in rows]}
    return table, raw


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _packMB(repository: Path) -> int:
    size = sum(path.stat().st_size for path in (repository / "objects" / "pack").glob("*.pack"))
    return round(size / 1e6)


def concurrentSSH(
    bench: Bench,
    corpus: Corpus,
    servers: dict[str, Server],
    urls: dict[str, Callable[[str], str]],
) -> list[DoorRow]:
    """
    C{CLIENTS} SSH clones of the history started at once on each side: the
    wall time until the last one ends, every clone checked for the right
    branch tip, and the server's peak memory over the burst.
    """
    repository = corpus.history
    expected = _revParse(bench, repository, "refs/heads/main")
    peaks: dict[str, list[float]] = {name: [] for name in servers}

    def burst(name: str) -> float:
        server = servers[name]
        sampler = _samplerFor(server)
        elapsed = cloneBurst(bench, urls[name](repository.name), CLIENTS, expected, sampler)
        peaks[name].append(_peakKiB(server, sampler) / 1024)
        return elapsed

    samples = bench.repeat(
        f"{CLIENTS} concurrent ssh clones",
        {name: partial(burst, name) for name in servers},
        bench.heavyReps,
    )
    for name, values in samples.items():
        if not values:
            peaks[name] = []
    return [
        DoorRow(
            f"{CLIENTS} concurrent SSH clones of {repository.name} (v2), wall",
            "s",
            "sshd",
            samples["gitserve"],
            samples["sshd"],
            "succeed",
        ),
        DoorRow(
            f"server peak memory, {CLIENTS} concurrent SSH clones",
            "MB",
            "sshd",
            peaks["gitserve"],
            peaks["sshd"],
            "value<=",
            80,
            peak=True,
            notes=[
                "memory: gitserve is the twistd process's RSS (peak from VmHWM and 20 ms "
                "polling), sshd the sum of its processes' PSS (listener and each "
                "connection's sshd pair, 20 ms polling); git, git-shell and the shell excluded"
            ],
        ),
    ]


def runDoorsBench(
    corpus: Corpus,
    workDir: Path,
    reps: int,
    heavyReps: int,
    log: Callable[[str], None],
    command: str,
) -> str:
    """C{--only ssh}: the table with its footer (load average, machine), raw figures saved."""
    bench = Bench(corpus, {}, False, reps, heavyReps, 0, log)
    loadBefore = os.getloadavg()[0]
    started = time.monotonic()
    table, raw = runDoors(corpus, bench, workDir, log)
    elapsed = time.monotonic() - started
    loadAfter = os.getloadavg()[0]
    versions = subprocess.run(
        [str(SSHD), "-V"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    ).stderr.strip()
    footer = (
        f"\n\n`{command}` on {machineDescription()}; {versions.splitlines()[0] if versions else ''}"
        f"; {elapsed:.0f} s of workloads, {reps} (light) / {heavyReps} (heavy) repetitions "
        f"({reps * 8} for the connection latency), medians; 1-minute load average "
        f"{loadBefore:.1f} before, {loadAfter:.1f} after (other work on the machine skews "
        f"every column)."
    )
    raw |= {"command": command, "load": [loadBefore, loadAfter], "failures": bench.failures}
    output = workDir / f"results-ssh-{time.strftime('%Y%m%dT%H%M%S')}.json"
    output.write_text(json.dumps(raw, indent=2))
    log(f"raw results: {output}")
    return table + footer


__all__ = ["runDoorsBench", "SSHDReference", "GitDaemonReference"]
