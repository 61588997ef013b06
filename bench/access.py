"""
The cost of --access: one decision against a 10,000-line conf, and the
latency of C{git ls-remote} (protocol v2) from gitserve with that conf and
without any.

    python bench/access.py               # ~1 minute
    python bench/access.py --reps 60

Both servers run side by side from this checkout on loopback ports and are
asked in turn, so machine noise falls on both alike.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.servers import GitserveServer
from gitserve.core.access import loadRules


def writeConf(path: Path, lines: int = 10_000) -> int:
    """
    A conf the size of a large site's: groups of users, then blocks for
    named repositories, wild patterns and group rules, until C{lines}.
    """
    out = [f"@team{g} = " + " ".join(f"user{g}x{u}" for u in range(8)) for g in range(200)]
    out += ["@admins = root ops", "repo @all", "    R = admins @admins"]
    block = 0
    while len(out) < lines - 6:
        out += [
            f"repo project{block} project{block}-docs",
            f"    RW+ = @team{block % 200}",
            f"    RW dev/ = @team{(block + 1) % 200}",
            f"    - refs/tags/v[0-9] = @team{(block + 2) % 200}",
            f"    R = @team{(block + 3) % 200}",
        ]
        if block % 50 == 0:
            out += [f"repo users/CREATOR/p{block}-[a-z0-9]+", "    C = @all", "    RW+ = CREATOR"]
        block += 1
    out += ["repo tiny", "    R = @all", "    RW+ = root"]
    path.write_text("\n".join(out) + "\n")
    return len(out)


def decisionCost(conf: Path, reps: int = 2000) -> tuple[float, float]:
    """Median microseconds of one decision: a name seen before, and a new name each time."""
    rules = loadRules(str(conf))
    timings = []
    for _ in range(reps):
        started = time.perf_counter()
        rules.access("project4321", "user21x3", "W", "refs/heads/dev/x")
        timings.append(time.perf_counter() - started)
    fresh = []
    for i in range(200):
        started = time.perf_counter()
        rules.access(f"users/user1x1/p50-n{i}", "user1x1", "R")
        fresh.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6, statistics.median(fresh) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=40)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="gitserve-bench-access-"))
    try:
        conf = work / "access.conf"
        count = writeConf(conf)
        started = time.perf_counter()
        loadRules(str(conf))
        compile = time.perf_counter() - started
        known, fresh = decisionCost(conf)
        root = work / "srv"
        env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(work)}
        seed = work / "seed"
        for command in (
            ["git", "init", "-q", "--bare", str(root / "tiny.git")],
            ["git", "init", "-q", str(seed)],
            [
                "git",
                "-C",
                str(seed),
                "-c",
                "user.name=b",
                "-c",
                "user.email=b@b",
                "commit",
                "-q",
                "--allow-empty",
                "-m",
                "one",
            ],
            ["git", "-C", str(seed), "push", "-q", str(root / "tiny.git"), "HEAD:main"],
        ):
            subprocess.run(command, check=True, env=env)
        plain = GitserveServer(root, work / "plain", extraArgs=[])
        ruled = GitserveServer(root, work / "ruled", extraArgs=["--access", str(conf)])
        samples: dict[str, list[float]] = {"none": [], "access": []}
        for server in (plain, ruled):
            server.start()
        try:
            for _ in range(args.reps):
                for name, server in (("none", plain), ("access", ruled)):
                    began = time.perf_counter()
                    subprocess.run(
                        ["git", "-c", "protocol.version=2", "ls-remote", server.url("tiny.git")],
                        check=True,
                        env=env,
                        stdout=subprocess.DEVNULL,
                    )
                    samples[name].append((time.perf_counter() - began) * 1000)
        finally:
            for server in (plain, ruled):
                server.stop()
        none, ruled_ms = statistics.median(samples["none"]), statistics.median(samples["access"])
        print("| workload | value | target |")
        print("|---|---|---|")
        print(f"| compile the {count}-line conf | {compile * 1000:.0f} ms | once per change |")
        print(
            f"| one decision, {count}-line conf (repository seen before) | "
            f"{known:.1f} µs | < 1 ms |"
        )
        print(
            f"| one decision, {count}-line conf (new repository name) | {fresh:.1f} µs | < 1 ms |"
        )
        print(f"| ls-remote tiny.git (v2), no --access | {none:.1f} ms | |")
        print(
            f"| ls-remote tiny.git (v2), --access {count} lines | {ruled_ms:.1f} ms "
            f"({(ruled_ms / none - 1) * 100:+.1f} %) | within 5 % |"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
