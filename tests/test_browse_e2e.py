"""
The pages in a real browser: the daemon as users start it, and headless
Chromium (Debian's C{chromium}, installed by C{.ci/run}) loading the index, a
repository page, a file and a commit; the rendered DOM is checked and
screenshots are saved under the test's tmp directory. A repository full of
HTML and JavaScript payloads must render them as text, with no element
injected and no script run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient

# If a payload ever ran, it would leave one of these marks in the DOM.
MARK = "PWNED"
PAYLOADS = (
    f"<img src=x onerror=\"document.title='{MARK}'\">",
    f"<script>document.title='{MARK}'</script>",
    f'<div id="injected-{MARK}">x</div>',
)


def chromium() -> str:
    """The browser; its absence is a failure, since CI installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "chromium is not installed: apt-get install chromium (as .ci/run does)"
    return found


def browse(url: str, profile: Path, screenshot: Path | None = None) -> str:
    """The DOM of C{url} after load (scripts run), or a screenshot of it."""
    args = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    if screenshot is not None:
        args += [f"--screenshot={screenshot}", "--window-size=1200,900", "--hide-scrollbars"]
    else:
        args += ["--dump-dom"]
    result = subprocess.run(
        [*args, url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(profile)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture
def site(git: GitClient, root: Path, tmp_path: Path, serve) -> Daemon:
    """A root with a real project, a nested one, an empty one and a hostile one."""
    work = tmp_path / "work"
    git.run("init", "-q", "-b", "main", str(work))
    (work / "README.md").write_text(
        "# Demo project\n\nA *small* project served by **gitserve**.\n\n"
        "```sh\ngit clone http://example/demo.git\n```\n"
    )
    (work / "src").mkdir()
    (work / "src" / "app.py").write_text(
        'def greet(name: str) -> str:\n    """Say hello."""\n    return f"Hello, {name}!"\n'
    )
    git.run("add", "-A", cwd=work)
    git.run("commit", "-q", "-m", "Start the demo", cwd=work)
    git.commit(
        work, "src/app.py", 'def greet(name):\n    return "Hi " + name\n', "Shorter greeting"
    )
    git.run("clone", "-q", "--bare", str(work), str(root / "demo.git"))
    (root / "demo.git" / "description").write_text("A demonstration repository\n")
    git.bare(root / "team" / "empty.git")

    evil = tmp_path / "evil"
    git.run("init", "-q", "-b", "main", str(evil))
    readme = "\n\n".join(
        [f"# Title {PAYLOADS[0]}", PAYLOADS[1], PAYLOADS[2], "[click](javascript:alert(1))"]
    )
    (evil / "README.md").write_text(readme + "\n")
    (evil / f"{PAYLOADS[0]}.txt").write_text("".join(PAYLOADS) + "\n")
    git.run("add", "-A", cwd=evil)
    git.run(
        "-c",
        f"user.name={PAYLOADS[0]}",
        "commit",
        "-q",
        "-m",
        f"{PAYLOADS[1]} {PAYLOADS[2]}",
        cwd=evil,
    )
    git.run("branch", "evil<script>x", cwd=evil, check=False)
    git.run("branch", f"b{MARK}<img>", cwd=evil, check=False)
    git.run("clone", "-q", "--bare", str(evil), str(root / "evil.git"))
    (root / "evil.git" / "description").write_text(PAYLOADS[0] + "\n")
    return serve(root)


def test_pagesRenderInChromium(site: Daemon, tmp_path: Path) -> None:
    """Index, repository page, file and commit render in Chromium, with screenshots."""
    profile = tmp_path / "chromium"
    index = browse(site.url("/"), profile)
    assert "<title>Repositories</title>" in index
    assert 'href="/demo.git"' in index and "A demonstration repository" in index
    assert 'href="/team/empty.git"' in index

    page = browse(site.url("/demo.git"), profile)
    assert "<title>demo.git</title>" in page
    assert "<h1>Demo project</h1>" in page and "<strong>gitserve</strong>" in page
    assert f'value="http://127.0.0.1:{site.port}/demo.git"' in page
    # The copy button is hidden in the markup; only the (allowed) script shows it.
    assert re.search(r'<button type="button" data-copy="clone-http">Copy</button>', page)

    file = browse(site.url("/demo.git/-/blob/main/src/app.py"), profile)
    assert '<span class="k">def</span>' in file and 'id="L2"' in file

    log = browse(site.url("/demo.git/-/log/main"), profile)
    newest = re.findall(r"/-/commit/([0-9a-f]{40})", log)[0]
    commit = browse(site.url(f"/demo.git/-/commit/{newest}"), profile)
    assert "<title>Shorter greeting · demo.git</title>" in commit
    assert 'class="add"' in commit and 'class="del"' in commit

    empty = browse(site.url("/team/empty.git"), profile)
    assert "This repository is empty" in empty

    for name, path in (
        ("index", "/"),
        ("repository", "/demo.git"),
        ("file", "/demo.git/-/blob/main/src/app.py"),
    ):
        shot = tmp_path / f"{name}.png"
        browse(site.url(path), profile, shot)
        assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 5000


def test_hostileRepositoryRendersAsText(site: Daemon, tmp_path: Path) -> None:
    """Payloads in README, names, refs, messages and authors stay text: nothing runs."""
    profile = tmp_path / "chromium"
    log = browse(site.url("/evil.git/-/log/main"), profile)
    commit = re.findall(r"/-/commit/([0-9a-f]{40})", log)[0]
    for path in (
        "/",
        "/evil.git",
        "/evil.git/-/refs",
        "/evil.git/-/log/main",
        f"/evil.git/-/commit/{commit}",
        "/evil.git/-/tree/main",
        "/evil.git/-/blob/main/" + PAYLOADS[0].replace("<", "%3C").replace(">", "%3E") + ".txt",
    ):
        dom = browse(site.url(path), profile)
        title = re.search(r"<title>(.*?)</title>", dom, re.S)
        # A payload that ran would have made the title exactly the mark.
        assert title is not None and title.group(1).strip() != MARK, (path, title)
        assert f'<div id="injected-{MARK}"' not in dom, path
        assert '<img src="x"' not in dom, path
        assert re.search(r"<script>(?!document\.querySelectorAll)", dom) is None, path
        assert 'href="javascript' not in dom, path
    page = browse(site.url("/evil.git"), profile)
    assert "&lt;img src=x onerror=" in page and "&lt;script&gt;" in page
