"""The systemd units in contrib/: valid for systemd, and their command line valid for gitserve."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from gitserve.tap import Options

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def execStart() -> list[str]:
    """The service's ExecStart command, continuation lines joined."""
    text = (UNITS / "gitserve.service").read_text().replace("\\\n", " ")
    [line] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    return shlex.split(line[len("ExecStart=") :])


def test_execStartOptionsAreGitserveOptions() -> None:
    """Every option the unit passes to gitserve exists (a renamed option would break the unit)."""
    command = execStart()
    gitserveArgs = command[command.index("gitserve") + 1 :]
    known = {"--" + name for name in Options().synonyms}
    used = {arg.split("=", 1)[0] for arg in gitserveArgs if arg.startswith("--")}
    assert used and used <= known, used - known
    assert "systemd:domain=INET:index=0" in " ".join(gitserveArgs)


def test_serviceIsNotifyWithHardening() -> None:
    """Type=notify, its own user, and the sandbox the README promises."""
    text = (UNITS / "gitserve.service").read_text()
    for directive in (
        "Type=notify",
        "User=gitserve",
        "ProtectSystem=strict",
        "ReadWritePaths=/srv/git",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "KillMode=mixed",
        "Requires=gitserve.socket",
    ):
        assert directive + "\n" in text, directive


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemdAnalyzeVerify(tmp_path: Path) -> None:
    """systemd itself finds nothing wrong with the units (twistd pointed at a real one)."""
    twistd = shutil.which("twistd")
    assert twistd is not None
    for name in ("gitserve.service", "gitserve.socket"):
        text = (UNITS / name).read_text().replace("/opt/gitserve/bin/twistd", twistd)
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(tmp_path / "gitserve.socket"),
            str(tmp_path / "gitserve.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
