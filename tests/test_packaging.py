"""Packaging: a regular (non-editable) install exposes the twistd plugin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPOSITORY_ROOT, daemonEnvironment


def test_regularInstallListsThePlugin(tmp_path: Path) -> None:
    """`pip install .` puts the plugin where `twistd --help` finds it, and the console scripts."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPOSITORY_ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "twisted" / "plugins" / "gitserve_plugin.py").is_file()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    # Run from an empty directory, with only the installed copy on the path.
    env = {**daemonEnvironment(tmp_path / "home"), "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "gitserve" in result.stdout
    help = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "gitserve",
            "--help",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    for option in ("--root", "--listen", "--anonymous-push", "--require-export-ok"):
        assert option in help.stdout
    # The console scripts come with it.
    export = subprocess.run(
        [str(target / "bin" / "gitserve-export"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert export.returncode == 0, export.stderr
    assert "usage: gitserve-export" in export.stdout
    # --auth htpasswd: is a strcred plugin installed beside the twistd one.
    assert (target / "twisted" / "plugins" / "gitserve_htpasswd.py").is_file()
    auth = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "gitserve",
            "--help-auth",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "htpasswd" in auth.stdout
