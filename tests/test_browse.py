"""
The browser pages, driven through the real GitSite over a StringTransport:
which requests get pages, what they show, and that git's URLs are untouched.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from pathlib import Path

import pytest

from gitserve.core.accesscontrol import AccessControl
from gitserve.core.browse import BrowseData, imageType, refsKey
from gitserve.core.policy import Policy
from gitserve.core.repository import ConfigCache, Repository
from gitserve.http import pages
from gitserve.http.pages import Links, safeURL
from tests.conftest import GitClient
from tests.fakes import Response, SiteHarness, browsingHarness

HTML = {b"Accept": b"text/html,application/xhtml+xml,*/*;q=0.8"}


def textOf(body: bytes) -> str:
    """What a page says, without its markup."""
    return re.sub(r"<[^>]+>", "", body.decode())


def get(harness: SiteHarness, path: str, headers: dict[bytes, bytes] | None = None) -> Response:
    """One GET on a fresh connection, its response."""
    harness.connect()
    harness.request(b"GET", path.encode(), HTML if headers is None else headers)
    return harness.response()


@pytest.fixture
def sample(git: GitClient, root: Path, tmp_path: Path) -> Path:
    """root/project.git: a README, code, a symlink, an image, two commits, a tag, a branch."""
    work = tmp_path / "work"
    git.run("init", "-q", "-b", "main", str(work))
    (work / "README.md").write_text(
        "# Project\n\nSee [the docs](docs/guide.md), [home](https://example.com) and "
        "[evil](javascript:alert(1)).\n"
    )
    (work / "docs").mkdir()
    (work / "docs" / "guide.md").write_text("guide\n")
    (work / "main.py").write_text("def answer():\n    return 42\n")
    (work / "page.html").write_text("<script>alert(1)</script>\n")
    (work / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 32)
    (work / "tool.bin").write_bytes(b"\x7fELF\0\0\0binary")
    os.symlink("/etc/passwd", work / "passwd-link")
    git.run("add", "-A", cwd=work)
    git.run("commit", "-q", "-m", "First commit", cwd=work)
    git.commit(work, "main.py", "def answer():\n    return 43\n", "Change the answer")
    git.run("tag", "v1.0", cwd=work)
    git.run("branch", "feature/x", cwd=work)
    bare = root / "project.git"
    git.run("clone", "-q", "--bare", str(work), str(bare))
    (bare / "description").write_text("The sample project\n")
    return bare


def test_indexListsRepositoriesForBrowsers(sample: Path, git: GitClient, root: Path) -> None:
    """/ asked for HTML lists each repository with its description, branch and last change."""
    git.bare(root / "team" / "app.git")
    response = get(browsingHarness(root), "/")
    assert response.status == 200
    assert response.header(b"content-type") == b"text/html; charset=utf-8"
    body = response.body.decode()
    assert 'href="/project.git"' in body and "The sample project" in body
    assert "Change the answer" in body and ">main<" in body
    assert "<h2>team/</h2>" in body and 'href="/team/app.git"' in body
    # git init's placeholder description is not shown.
    assert "Unnamed repository" not in body


def test_indexFilterAndSort(sample: Path, git: GitClient, root: Path) -> None:
    """?q= keeps matching repositories only; ?sort=age orders by last change."""
    git.bare(root / "other.git")
    body = get(browsingHarness(root), "/?q=sample&sort=age").body.decode()
    assert 'href="/project.git"' in body and 'href="/other.git"' not in body
    assert "1 of 2 repositories" in body
    assert '<option value="age" selected="">' in body


def test_notForGitOrNonBrowsers(sample: Path, root: Path) -> None:
    """Without Accept: text/html, or from git, / and /<repo> stay 404 as before."""
    harness = browsingHarness(root)
    assert get(harness, "/", {}).status == 404
    assert get(harness, "/project.git", {b"Accept": b"*/*"}).status == 404
    assert get(harness, "/project.git", {**HTML, b"User-Agent": b"git/2.39.5"}).status == 404


def test_gitURLsUnchangedForBrowsers(sample: Path, root: Path) -> None:
    """A git URL asked for as HTML answers exactly as it does without pages."""

    def answer(harness: SiteHarness, path: str) -> tuple[object, ...]:
        # Everything but the Date header, which may cross a second between two requests.
        response = get(harness, path)
        headers = {k: v for k, v in response.headers.items() if k != b"date"}
        return response.status, response.body, headers

    for path in ("/project.git/HEAD", "/project.git/info/refs"):
        assert answer(browsingHarness(root), path) == answer(SiteHarness(root), path), path
    assert answer(browsingHarness(root), "/project.git/HEAD")[:2] == (
        200,
        b"ref: refs/heads/main\n",
    )


def test_noBrowseAnswers404(sample: Path, root: Path) -> None:
    """With the pages off (--no-browse), every page URL is the plain 404 of before."""
    harness = SiteHarness(root)
    for path in ("/", "/project.git", "/project.git/-/tree/main", "/-/static/style.css"):
        response = get(harness, path)
        assert (response.status, response.body) == (404, b"Not Found\n"), path


def test_repositoryPage(sample: Path, root: Path) -> None:
    """/<repo> shows the clone URL from Host, the README, files, commits and refs."""
    for name in ("/project", "/project.git", "/project.git/"):
        body = get(browsingHarness(root), name).body.decode()
        spelled = name.rstrip("/")
        assert f'value="http://example{spelled}"' in body, name
        assert "<h1>Project</h1>" in body
        assert f'href="{spelled}/-/blob/main/docs/guide.md"' in body
        assert 'href="https://example.com"' in body and 'href="javascript' not in body
        assert "Change the answer" in body and "First commit" in body
        assert "feature/x" in body and "v1.0" in body
        assert "→ <code>/etc/passwd</code>" in body


def test_repositoryPageShowsEveryDoorThatListens(sample: Path, root: Path) -> None:
    """With SSH and git:// listening, the page offers their clone URLs beside HTTP's."""
    harness = browsingHarness(root)
    assert "ssh://" not in get(harness, "/project.git").body.decode()
    harness.context.browse.sshPort = lambda: 2222
    harness.context.browse.gitPort = lambda: 9418
    body = get(harness, "/project.git").body.decode()
    assert 'value="http://example/project.git"' in body
    assert 'value="ssh://git@example:2222/project.git"' in body
    assert 'value="git://example:9418/project.git"' in body
    assert body.count('data-copy="clone-') == 3


def test_securityHeadersAndScriptHash(sample: Path, root: Path) -> None:
    """Pages carry a strict CSP whose hash is exactly the page's one script."""
    response = get(browsingHarness(root), "/project.git")
    csp = response.header(b"content-security-policy").decode()
    assert "default-src 'none'" in csp and "'unsafe-inline'" not in csp
    assert response.header(b"x-content-type-options") == b"nosniff"
    assert response.header(b"referrer-policy") == b"no-referrer"
    scripts = re.findall(r"<script>(.*?)</script>", response.body.decode(), re.S)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_fileViewHighlightsAndNumbers(sample: Path, root: Path) -> None:
    """A file page numbers its lines and highlights them from Pygments' tokens."""
    body = get(browsingHarness(root), "/project.git/-/blob/main/main.py").body.decode()
    assert '<a href="#L2" id="L2">2</a>' in body
    assert '<span class="k">def</span>' in body and "43" in body
    assert 'href="/project.git/-/raw/main/main.py"' in body


def test_olderRefsAndTags(sample: Path, root: Path) -> None:
    """A ref with a slash, a tag and a commit id all name a tree."""
    harness = browsingHarness(root)
    assert "return 43" in textOf(get(harness, "/project.git/-/blob/feature/x/main.py").body)
    assert get(harness, "/project.git/-/tree/v1.0").status == 200
    first = get(harness, "/project.git/-/log/main").body.decode()
    oldest = re.findall(r"/-/commit/([0-9a-f]{40})", first)[-1]
    assert "return 42" in textOf(get(harness, f"/project.git/-/blob/{oldest}/main.py").body)
    assert get(harness, "/project.git/-/tree/nope").status == 404
    assert get(harness, "/project.git/-/tree/main/../../etc").status == 404


def test_rawFilesNeverRunInTheBrowser(sample: Path, root: Path) -> None:
    """HTML is served as text/plain, binaries as attachments, images by their magic."""
    harness = browsingHarness(root)
    page = get(harness, "/project.git/-/raw/main/page.html")
    assert page.header(b"content-type") == b"text/plain; charset=utf-8"
    assert page.header(b"x-content-type-options") == b"nosniff"
    assert b"sandbox" in page.header(b"content-security-policy")
    binary = get(harness, "/project.git/-/raw/main/tool.bin")
    assert binary.header(b"content-type") == b"application/octet-stream"
    assert binary.header(b"content-disposition").startswith(b"attachment")
    assert get(harness, "/project.git/-/raw/main/logo.png").header(b"content-type") == (
        b"image/png"
    )
    body = get(harness, "/project.git/-/blob/main/logo.png").body.decode()
    assert '<img src="/project.git/-/raw/main/logo.png"' in body


def test_symlinkIsItsTargetText(sample: Path, root: Path) -> None:
    """A symlink's blob is its target text, never the file it points to."""
    harness = browsingHarness(root)
    body = get(harness, "/project.git/-/blob/main/passwd-link").body.decode()
    assert "Symbolic link to <code>/etc/passwd</code>" in body and "root:" not in body
    raw = get(harness, "/project.git/-/raw/main/passwd-link")
    assert raw.body == b"/etc/passwd"


def test_commitPageShowsItsDiff(sample: Path, root: Path) -> None:
    """A commit page shows the message, the author and the changed lines."""
    harness = browsingHarness(root)
    log = get(harness, "/project.git/-/log/main").body.decode()
    newest = re.findall(r"/-/commit/([0-9a-f]{40})", log)[0]
    body = get(harness, f"/project.git/-/commit/{newest}").body.decode()
    assert "Change the answer" in body and "Test User" in body
    assert '<tr class="del"><td>    return 42</td></tr>' in body
    assert '<tr class="add"><td>    return 43</td></tr>' in body
    assert get(harness, "/project.git/-/commit/" + "0" * 40).status == 404


def test_logPagination(git: GitClient, root: Path, tmp_path: Path) -> None:
    """The log shows 50 commits a page with a link to the older ones, and per path."""
    work = tmp_path / "work"
    git.run("init", "-q", "-b", "main", str(work))
    git.commit(work, "a.txt", "a\n", "touch a")
    for number in range(54):
        git.run("commit", "-q", "--allow-empty", "-m", f"empty {number}", cwd=work)
    git.run("clone", "-q", "--bare", str(work), str(root / "long.git"))
    harness = browsingHarness(root)
    first = get(harness, "/long.git/-/log/main").body.decode()
    assert first.count('class="subject"') == 50 and "?page=2" in first
    second = get(harness, "/long.git/-/log/main?page=2").body.decode()
    assert second.count('class="subject"') == 5 and "touch a" in second
    assert "?page=3" not in second
    path = get(harness, "/long.git/-/log/main/a.txt").body.decode()
    assert path.count('class="subject"') == 1 and "touch a" in path


def test_emptyRepositorySaysHowToPush(git: GitClient, root: Path) -> None:
    """An empty repository's page shows the commands that fill it."""
    git.bare(root / "empty.git")
    body = get(browsingHarness(root), "/empty.git").body.decode()
    assert "This repository is empty" in body
    assert "git remote add origin http://example/empty.git" in body


def test_unreadableIsExactlyLikeMissing(sample: Path, git: GitClient, root: Path) -> None:
    """Repositories the fetch policy refuses are absent from the index and their pages 404."""
    git.bare(root / "closed.git", http__uploadpack="false")
    harness = browsingHarness(root, requireExportOk=True)
    (root / "open.git").mkdir()
    git.bare(root / "open.git")
    (root / "open.git" / "git-daemon-export-ok").touch()
    index = get(harness, "/").body.decode()
    assert "/open.git" in index and "/project.git" not in index and "closed" not in index
    missing = get(harness, "/nothing.git/-/refs")
    for path in ("/project.git", "/project.git/-/refs", "/closed.git/-/refs"):
        response = get(harness, path)
        assert (response.status, response.body, response.headers.keys()) == (
            missing.status,
            missing.body,
            missing.headers.keys(),
        ), path


def test_hiddenRefsAreNotShown(sample: Path, git: GitClient, root: Path) -> None:
    """Refs hidden by transfer.hideRefs are neither listed nor browsable."""
    git.run("config", "-f", str(sample / "config"), "transfer.hideRefs", "refs/heads/feature")
    harness = browsingHarness(root)
    assert "feature/x" not in get(harness, "/project.git/-/refs").body.decode()
    assert "feature/x" not in get(harness, "/project.git").body.decode()
    assert get(harness, "/project.git/-/tree/feature/x").status == 404


def test_hostileContentIsEscaped(git: GitClient, root: Path, tmp_path: Path) -> None:
    """Payloads in names, refs, messages and authors come out as text, never as markup."""
    payload = "<img src=x onerror=alert(1)>"
    work = tmp_path / "work"
    git.run("init", "-q", "-b", "main", str(work))
    (work / f"{payload}.txt").write_text(f"<script>alert(1)</script>{payload}\n")
    (work / "README.md").write_text(f"# {payload}\n\n<script>alert(2)</script>\n")
    git.run("add", "-A", cwd=work)
    git.run(
        "-c", f"user.name={payload}", "commit", "-q", "-m", "<script>alert(3)</script>", cwd=work
    )
    git.run("branch", "x<b>y", cwd=work, check=False)
    git.run("clone", "-q", "--bare", str(work), str(root / "evil.git"))
    harness = browsingHarness(root)
    for path in ("/", "/evil.git", "/evil.git/-/refs", "/evil.git/-/log/main"):
        body = get(harness, path).body.decode()
        assert "<img src=x" not in body and "<script>alert" not in body, path
    body = get(harness, "/evil.git").body.decode()
    assert "&lt;img src=x onerror=alert(1)&gt;" in body


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://example.com/a", "https://example.com/a"),
        ("mailto:a@example.com", "mailto:a@example.com"),
        ("javascript:alert(1)", None),
        ("java\tscript:alert(1)", None),
        (" JAVASCRIPT:alert(1)", None),
        ("data:text/html,x", None),
        ("vbscript:x", None),
        ("//evil.example/x", None),
        ("docs/a.md", "/r.git/-/blob/main/docs/a.md"),
        ("../../../etc/passwd", None),
        ("#section", "#section"),
    ],
)
def test_readmeLinksAreSanitised(url: str, expected: str | None) -> None:
    """Only http, https, mailto and links inside the repository survive in a README."""
    assert safeURL(url, Links("r.git"), "main", "", False) == expected


def test_imagesOnlyByMagic() -> None:
    """Only PNG, JPEG, GIF and WebP are images; SVG (which can hold script) never is."""
    assert imageType(b"\x89PNG\r\n\x1a\nxx") == "image/png"
    assert imageType(b"RIFF1234WEBPVP8 ") == "image/webp"
    assert imageType(b"<svg onload=alert(1)>") is None


def test_pagesFollowPushes(sample: Path, git: GitClient, root: Path, tmp_path: Path) -> None:
    """A cached page is rebuilt once a ref moves: the refs key changes with it."""
    harness = browsingHarness(root)
    before = refsKey(sample, now=2e9)
    assert "Third commit" not in get(harness, "/project.git").body.decode()
    work = tmp_path / "more"
    git.run("clone", "-q", str(sample), str(work))
    git.commit(work, "new.txt", "new\n", "Third commit")
    git.run("push", "-q", "origin", "main", cwd=work)
    assert "Third commit" in get(harness, "/project.git").body.decode()
    assert refsKey(sample, now=2e9) != before


def test_staticAssets(root: Path) -> None:
    """The stylesheet and the icon come from the daemon, with dark mode in the CSS."""
    harness = browsingHarness(root)
    css = get(harness, "/-/static/style.css", {})
    assert css.status == 200 and b"prefers-color-scheme: dark" in css.body
    assert get(harness, "/-/static/favicon.svg", {}).header(b"content-type") == b"image/svg+xml"
    assert get(harness, "/-/static/nothing.js", {}).status == 404


def test_indexRowsAreCachedByStamps(sample: Path, root: Path) -> None:
    """The index reads a repository again only when one of its stamps changed."""
    data = BrowseData(root.resolve(), browsingHarness(root).core.policy)
    old = 1_000_000_000
    for name in ("HEAD", "config", "description", "packed-refs", "refs/heads/main"):
        if (sample / name).exists():
            os.utime(sample / name, (old, old))
    first = data.summaries(None)
    assert data.summaries(None)[0] is first[0]
    (sample / "description").write_text("Renamed\n")
    assert data.summaries(None)[0].description == "Renamed"


def test_templatesAreTheOnlyWayIn() -> None:
    """The page skeleton escapes a hostile title like any other value."""
    body = pages.page("<b>x</b>", [("<i>", None)]).decode()
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in body and "<i>" not in body


@pytest.mark.parametrize(("args", "pages"), [([], True), (["--no-browse"], False)])
def test_noBrowseOption(tmp_path: Path, args: list[str], pages: bool) -> None:
    """--no-browse leaves the site without pages; by default they are on."""
    from twisted.application.service import IServiceCollection

    from gitserve.tap import ListeningService, Options, makeService

    options = Options()
    options.parseOptions(["--root", str(tmp_path), "--listen", "tcp:0", *args])
    assert options["no-browse"] is not pages
    top = IServiceCollection(makeService(options))
    (listener,) = [s for s in top if isinstance(s, ListeningService)]
    context = listener.site.resource.context
    assert (context.browse is not None) is pages


def test_pagesFollowTheAccessRulesOfTheUser(git: GitClient, root: Path) -> None:
    """Under --access the index and pages show a user exactly what the rules let them read."""
    conf = root.parent / "access.conf"
    conf.write_text("repo pub\n    R = @all\nrepo secret\n    R = alice\n")
    git.bare(root / "pub.git")
    git.bare(root / "secret.git")
    policy = Policy(
        configs=ConfigCache(), access=AccessControl(str(conf)), root=root, canAuthenticate=True
    )
    data = BrowseData(root, policy)
    shown = {user: {row.name for row in data.summaries(user)} for user in ("alice", None)}
    assert shown == {"alice": {"pub.git", "secret.git"}, None: {"pub.git"}}
    secret = Repository(gitDir=root / "secret.git", name="secret.git")
    assert data.readable(secret, "alice")
    assert not data.readable(secret, "bob") and not data.readable(secret, None)
