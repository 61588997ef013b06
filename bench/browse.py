"""
The browser pages against cgit, the fastest web front end for git, on the same
repositories in one run: C{python bench/run.py --only browse}.

cgit is Debian's package run as a CGI under Apache 2 (mpm_prefork + mod_cgi),
as its documentation shows, with its cache off (C{cache-size=0}) and
C{scan-path} over the same root gitserve serves: the corpora plus a folder of
1,000 small repositories (C{many/}), so the index lists about a thousand
(cgit's C{max-repo-count} is raised so that it too lists them all on one page,
as gitserve does, rather than 50 per page).

Rows: the median latency (to the last byte, a new connection each time, as a
browser's first visit) of the index, the repository summary, a tree, a file
and a 50-commit log page of C{history.git}; requests/s of the summary page
under 16 connections (wrk); gitserve's RSS after browsing every page. Pages
are checked to answer 200 with HTML before anything is timed.
"""

from __future__ import annotations

import http.client
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from bench.corpus import Corpus, gitEnvironment
from bench.procfs import childPids, processName, proportionalSetKiB
from bench.servers import (
    ApacheReference,
    GitserveServer,
    MissingDependency,
    Server,
    freePort,
)

MANY = 1000
CGIT = Path("/usr/lib/cgit/cgit.cgi")
HTML = {"Accept": "text/html"}


def ensureManyRepositories(corpus: Corpus, env: dict[str, str], log: Callable[[str], None]) -> Path:
    """C{root/many/repo-NNNN.git}: copies of C{tiny.git}, each with its own description."""
    folder = corpus.root / "many"
    if (folder / f"repo-{MANY - 1:04d}.git").exists():
        return folder
    partial = corpus.root / "many.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    started = time.monotonic()
    for number in range(MANY):
        target = partial / f"repo-{number:04d}.git"
        shutil.copytree(corpus.tiny, target, symlinks=True)
        (target / "description").write_text(f"Small repository number {number}\n")
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    log(f"made {MANY} repositories under {folder} in {time.monotonic() - started:.1f}s")
    return folder


class CgitReference(ApacheReference):
    """cgit as a CGI under Apache 2, cache off, scanning the same root."""

    name = "cgit"

    def __init__(self, root: Path, workDir: Path) -> None:
        super().__init__(root, workDir)
        self.workDir = workDir / "cgit"
        self.config = self.workDir / "httpd.conf"
        self.errorLog = self.workDir / "error.log"

    def writeConfig(self, modules: Path) -> None:
        if not CGIT.exists():
            raise MissingDependency("cgit is missing: apt-get install cgit")
        super().writeConfig(modules)
        cgitrc = self.workDir / "cgitrc"
        # Order matters to cgit: settings that shape scanning come before scan-path.
        cgitrc.write_text(f"""\
cache-size=0
virtual-root=/cgit/
css=/cgit-css/cgit.css
logo=/cgit-css/cgit.png
enable-index-links=1
enable-commit-graph=0
max-commit-count=50
max-repo-count={MANY + 100}
section-from-path=1
remove-suffix=0
scan-path={self.root}
""")
        config = self.config.read_text()
        config = config.replace(
            "# Written by bench/servers.py: git http-backend", "# cgit; was: git http-backend"
        )
        config += f"""
SetEnv CGIT_CONFIG {cgitrc}
Alias /cgit-css /usr/share/cgit
ScriptAlias /cgit /usr/lib/cgit/cgit.cgi/
<Directory "/usr/lib/cgit">
    Options +ExecCGI
    Require all granted
</Directory>
<Directory "/usr/share/cgit">
    Require all granted
</Directory>
"""
        self.config.write_text(config)

    def _waitUntilServing(self, log: Path) -> None:
        assert self._process is not None
        from bench.servers import waitForHTTP

        waitForHTTP(f"http://127.0.0.1:{self.port}/cgit/tiny.git/", self._process, log)

    def page(self, path: str) -> str:
        return f"/cgit/{path}"


def _get(port: int, path: str, headers: dict[str, str]) -> tuple[float, int, bytes]:
    """One GET on a new connection: seconds to the last byte, status, body."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = response.read()
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed, response.status, body


def _wrk(port: int, path: str, seconds: int, headers: dict[str, str]) -> tuple[float, str]:
    args = ["wrk", "-t2", "-c16", f"-d{seconds}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    output = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    notes = " ".join(line.strip() for line in output.splitlines() if "Non-2xx" in line)
    (rate,) = [line.split()[1] for line in output.splitlines() if line.startswith("Requests/sec:")]
    return float(rate), notes


def _gitserveRSS(server: GitserveServer) -> float:
    return server.memoryKiB() / 1024


def _cgitPSS(server: CgitReference) -> float:
    assert server._process is not None
    master = server._process.pid
    pids = [master] + [pid for pid in childPids(master) if processName(pid) == "apache2"]
    return sum(proportionalSetKiB(pid) for pid in pids) / 1024


def _pickFile(repository: Path, env: dict[str, str]) -> str:
    """The median-sized file of the default branch: a typical file page."""
    listing = subprocess.run(
        ["git", "-C", str(repository), "ls-tree", "-r", "-l", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout.splitlines()
    sized = sorted((int(line.split()[3]), line.split("\t", 1)[1]) for line in listing)
    return sized[len(sized) // 2][1]


def runBrowse(
    corpus: Corpus, workDir: Path, reps: int, wrkSeconds: int, log: Callable[[str], None]
) -> str:
    """Run the browse workloads and return the table (Markdown) with its footer."""
    if shutil.which("wrk") is None:
        raise MissingDependency("wrk is missing: apt-get install wrk")
    env = gitEnvironment(workDir / "home")
    ensureManyRepositories(corpus, env, log)
    filePath = _pickFile(corpus.history, env)
    folder = filePath.rsplit("/", 1)[0]
    pages = [
        (f"index of {MANY + 4} repositories", "/", "/cgit/"),
        ("repository summary (history.git)", "/history.git", "/cgit/history.git/"),
        (
            f"tree ({folder}/)",
            f"/history.git/-/tree/main/{folder}",
            f"/cgit/history.git/tree/{folder}",
        ),
        (
            f"file ({filePath.rsplit('/', 1)[1]})",
            f"/history.git/-/blob/main/{filePath}",
            f"/cgit/history.git/tree/{filePath}",
        ),
        ("log, 50 commits (history.git)", "/history.git/-/log/main", "/cgit/history.git/log/"),
    ]
    ApacheReference.findApache()
    gitserve = GitserveServer(corpus.root, workDir, [])
    cgit = CgitReference(corpus.root, workDir)
    rows: list[tuple[str, float | None, float | None, str, bool | None]] = []
    notes: list[str] = []
    try:
        for server in (gitserve, cgit):
            log(f"starting {server.name} ...")
            server.start()
        # Each page must work on both sides before it is timed.
        cold: dict[str, float] = {}
        for label, ours, theirs in pages:
            for port, path, name in (
                (gitserve.port, ours, "gitserve"),
                (cgit.port, theirs, "cgit"),
            ):
                elapsed, status, body = _get(port, path, HTML)
                if status != 200 or b"<html" not in body[:2000].lower():
                    raise RuntimeError(f"{name} {path}: {status} {body[:300]!r}")
                if name == "gitserve":
                    cold[label] = elapsed
        for label, ours, theirs in pages:
            samples: dict[str, list[float]] = {"gitserve": [], "cgit": []}
            for rep in range(reps):
                order = [(gitserve.port, ours, "gitserve"), (cgit.port, theirs, "cgit")]
                for port, path, name in order if rep % 2 == 0 else order[::-1]:
                    samples[name].append(_get(port, path, HTML)[0] * 1000)
            ours_ms = statistics.median(samples["gitserve"])
            theirs_ms = statistics.median(samples["cgit"])
            log(f"  {label}: gitserve {ours_ms:.1f} ms, cgit {theirs_ms:.1f} ms")
            rows.append(
                (label + ", median latency", ours_ms, theirs_ms, "<= 1x cgit", ours_ms <= theirs_ms)
            )
        rates = {}
        for port, path, name in (
            (gitserve.port, pages[1][1], "gitserve"),
            (cgit.port, pages[1][2], "cgit"),
        ):
            rates[name], note = _wrk(port, path, wrkSeconds, HTML)
            if note:
                notes.append(f"{name}: {note}")
            log(f"  summary wrk: {name} {rates[name]:.0f} req/s")
        rows.append(
            (
                "summary page requests/s, 16 connections",
                rates["gitserve"],
                rates["cgit"],
                ">= 2x cgit",
                rates["gitserve"] >= 2 * rates["cgit"],
            )
        )
        rss = _gitserveRSS(gitserve)
        rows.append(
            (
                "server memory after browsing every page",
                rss,
                _cgitPSS(cgit),
                "<= 80 MB (gitserve RSS)",
                rss <= 80,
            )
        )
        notes.append(
            "gitserve's first (uncached) request for each page, just after start: "
            + ", ".join(
                f"{label.split(' (')[0]} {seconds * 1000:.0f} ms" for label, seconds in cold.items()
            )
        )
    finally:
        for server in (gitserve, cgit):
            server.stop()
    lines = [
        "| page | gitserve | cgit | ratio gs/cgit | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for label, ours, theirs, target, met in rows:
        unit = "req/s" if "requests/s" in label else "MB" if "memory" in label else "ms"
        fmt = (
            (lambda v: f"{v:,.0f} req/s")
            if unit == "req/s"
            else ((lambda v: f"{v:.1f} MB") if unit == "MB" else (lambda v: f"{v:.1f} ms"))
        )
        ratio = f"{ours / theirs:.2f}" if ours and theirs else "—"
        lines.append(
            f"| {label} | {fmt(ours)} | {fmt(theirs)} | {ratio} | {target} | "
            f"{'yes' if met else '**NO**'} |"
        )
    lines += ["", *(f"- {note}" for note in notes)]
    lines.append(
        f"- latency: median of {reps} GETs per page and server, a new connection each; "
        f"cgit memory is Apache's workers' PSS (cgit itself runs per request); "
        f"wrk -t2 -c16 -d{wrkSeconds}s"
    )
    return "\n".join(lines)


__all__ = ["runBrowse", "CgitReference", "ensureManyRepositories", "freePort", "Server"]
