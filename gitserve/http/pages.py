"""
The browser pages as L{twisted.web.template} tag trees, and nothing else.

Every value from a repository (names, refs, messages, authors, READMEs,
file contents) enters a page as a string or an attribute of a L{Tag}, so the
flattener escapes it: no HTML is ever built by concatenation, Markdown and
syntax highlighting included (both are turned into tags here from their
token streams, never from the HTML their libraries would write).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib
import posixpath
import re
import time
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

from twisted.web.template import Tag, flattenString, tags

from gitserve.core.browse import (
    MAX_HIGHLIGHTED,
    CommitInfo,
    CommitPage,
    FileData,
    LogPage,
    RefInfo,
    Summary,
    TreeEntry,
    text,
)

DOCTYPE = b"<!DOCTYPE html>\n"
STATIC = "/-/static/"

# The only script: it shows the copy buttons (hidden without JavaScript) and
# copies a clone URL. It is allowed by its hash in the CSP. The flattener
# escapes "<", ">" and "&" even inside <script>, so it uses none of them.
COPY_SCRIPT = (
    'document.querySelectorAll("button[data-copy]").forEach(function (b) {'
    " b.hidden = false; b.onclick = function () {"
    " var i = document.getElementById(b.dataset.copy); i.select();"
    " if (navigator.clipboard) { navigator.clipboard.writeText(i.value); }"
    ' else { document.execCommand("copy"); } b.textContent = "Copied"; }; });'
)
COPY_SCRIPT_HASH = "sha256-" + base64.b64encode(
    hashlib.sha256(COPY_SCRIPT.encode("utf-8")).digest()
).decode("ascii")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; "
    f"script-src '{COPY_SCRIPT_HASH}'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
).encode("ascii")


def flatten(root: Tag) -> bytes:
    """A page as bytes. Nothing in a page is deferred, so flattening is synchronous."""
    result: list[bytes] = []
    failures: list[Any] = []
    flattenString(None, root).addCallbacks(result.append, failures.append)
    if failures:
        failures[0].raiseException()
    return DOCTYPE + result[0]


if TYPE_CHECKING:
    from markdown_it import MarkdownIt
    from markdown_it.token import Token
    from pygments.lexer import Lexer
    from pygments.token import _TokenType

# markdown-it-py and Pygments are imported when the first README or file is
# shown, not at start-up: together they are some 5 MB of a daemon that may
# never serve a page (the large-push tests hold its RSS under 60 MB).

# -- URLs ---------------------------------------------------------------------------------------


def segment(value: str) -> str:
    """One path segment, percent-encoded (a slash in a name stays inside its segment)."""
    return quote(value, safe="")


def path(*parts: str) -> str:
    """A path of several, each possibly with slashes that separate segments."""
    return "/".join(segment(s) for part in parts for s in part.split("/") if s)


class Links:
    """The URLs of one repository's pages."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.base = "/" + path(name)

    def home(self) -> str:
        return self.base

    def view(self, view: str, ref: str = "", where: str = "") -> str:
        tail = path(ref, where)
        return f"{self.base}/-/{view}" + (f"/{tail}" if tail else "")

    def commit(self, sha: str) -> str:
        return f"{self.base}/-/commit/{sha}"


# -- layout -------------------------------------------------------------------------------------


def page(title: str, crumbs: Sequence[tuple[str, str | None]], *body: Any) -> bytes:
    """A whole page: C{title} for the tab, breadcrumbs (text, link), the body."""
    trail: list[Any] = []
    for number, (label, href) in enumerate(crumbs):
        if number:
            trail.append(tags.span(" / ", class_="sep"))
        trail.append(tags.a(label, href=href) if href else tags.span(label))
    return flatten(
        tags.html(lang="en")(
            tags.head(
                tags.meta(charset="utf-8"),
                tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
                tags.meta(name="referrer", content="no-referrer"),
                tags.title(title),
                tags.link(rel="stylesheet", href=STATIC + "style.css"),
                tags.link(rel="icon", href=STATIC + "favicon.svg", type="image/svg+xml"),
            ),
            tags.body(
                tags.header(tags.nav(trail, class_="crumbs", **{"aria-label": "breadcrumbs"})),
                Tag("main")(*body),
                tags.script(COPY_SCRIPT),
            ),
        )
    )


def repositoryCrumbs(name: str, *rest: tuple[str, str | None]) -> list[tuple[str, str | None]]:
    """Breadcrumbs from the index through each folder to a repository, then C{rest}."""
    crumbs: list[tuple[str, str | None]] = [("repositories", "/")]
    crumbs.append((name, Links(name).home()))
    return crumbs + list(rest)


def pathCrumbs(links: Links, ref: str, where: Sequence[str]) -> list[tuple[str, str | None]]:
    """Breadcrumbs for a path inside a tree: the ref, then each folder."""
    crumbs: list[tuple[str, str | None]] = [(ref, links.view("tree", ref))]
    for end in range(1, len(where) + 1):
        last = end == len(where)
        crumbs.append(
            (where[end - 1], None if last else links.view("tree", ref, "/".join(where[:end])))
        )
    return crumbs


def when(seconds: int, offset: int = 0) -> Tag:
    """A date, in the committer's own time zone, with the machine-readable form beside it."""
    local = time.gmtime(seconds + offset)
    sign = "+" if offset >= 0 else "-"
    zone = f"{sign}{abs(offset) // 3600:02d}{abs(offset) % 3600 // 60:02d}"
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", local) + zone[:3] + ":" + zone[3:]
    return tags.time(time.strftime("%Y-%m-%d %H:%M", local) + " " + zone, datetime=iso)


def shortId(sha: str) -> str:
    return sha[:10]


# -- the index ----------------------------------------------------------------------------------


def indexPage(rows: Sequence[Summary], query: str, order: str, total: int) -> bytes:
    """Every readable repository, grouped by folder, with a filter box and the sort order."""
    form = tags.form(method="get", action="/", class_="filter")(
        tags.label("Filter ", tags.input(type="search", name="q", value=query)),
        tags.label(
            " sort by ",
            tags.select(name="sort")(
                tags.option("name", value="name", **({"selected": ""} if order != "age" else {})),
                tags.option(
                    "last change", value="age", **({"selected": ""} if order == "age" else {})
                ),
            ),
        ),
        " ",
        tags.button("Show", type="submit"),
    )
    groups: dict[str, list[Summary]] = {}
    for row in rows:
        groups.setdefault(row.folder, []).append(row)
    sections: list[Tag] = []
    for folder in sorted(groups):
        items = []
        for row in groups[folder]:
            last = row.lastChange
            items.append(
                tags.tr(
                    tags.td(tags.a(row.name, href=Links(row.name).home()), class_="name"),
                    tags.td(row.description, class_="desc"),
                    tags.td(row.defaultBranch or "—", class_="branch"),
                    tags.td(
                        [
                            when(last.committer.time, last.committer.offset),
                            " ",
                            tags.span(last.author.name, class_="who"),
                            " ",
                            tags.span(last.subject, class_="subject"),
                        ]
                        if last is not None
                        else tags.span("empty", class_="muted"),
                        class_="last",
                    ),
                )
            )
        sections.append(
            tags.section(
                tags.h2(folder + "/") if folder else "",
                tags.table(
                    tags.thead(
                        tags.tr(
                            tags.th("Repository"),
                            tags.th("Description"),
                            tags.th("Branch"),
                            tags.th("Last change"),
                        )
                    ),
                    tags.tbody(items),
                    class_="list index",
                ),
            )
        )
    shown = f"{len(rows)} of {total} repositories" if query else f"{total} repositories"
    body = sections or [tags.p("No repositories here yet." if not query else "Nothing matches.")]
    return page(
        "Repositories",
        [("repositories", None)],
        tags.h1("Repositories"),
        form,
        tags.p(shown, class_="muted"),
        *body,
    )


# -- the repository page ------------------------------------------------------------------------


def cloneBox(label: str, url: str) -> Tag:
    """A clone URL in a read-only field, and the copy button the script reveals."""
    field = "clone-" + label.lower().strip(":/")
    return tags.div(class_="clone")(
        tags.label(f"Clone over {label}", for_=field),
        tags.input(id=field, value=url, readonly="", type="text"),
        tags.button("Copy", type="button", hidden="", **{"data-copy": field}),
    )


def commitList(links: Links, commits: Iterable[CommitInfo]) -> Tag:
    rows = [
        tags.tr(
            tags.td(tags.a(c.subject or "(no message)", href=links.commit(c.id)), class_="subject"),
            tags.td(c.author.name, class_="who"),
            tags.td(when(c.committer.time, c.committer.offset), class_="date"),
            tags.td(tags.a(shortId(c.id), href=links.commit(c.id)), class_="sha"),
        )
        for c in commits
    ]
    return tags.table(tags.tbody(rows), class_="list log")


def refList(links: Links, refs: Sequence[RefInfo]) -> Tag:
    rows = [
        tags.tr(
            tags.td(tags.a(r.name, href=links.view("tree", r.name)), class_="name"),
            tags.td(r.kind, class_="muted"),
            tags.td(r.commit.subject if r.commit else "", class_="subject"),
            tags.td(
                when(r.commit.committer.time, r.commit.committer.offset) if r.commit else "",
                class_="date",
            ),
        )
        for r in refs
    ]
    return tags.table(tags.tbody(rows), class_="list refs")


def treeTable(links: Links, ref: str, entries: Sequence[TreeEntry], up: str | None) -> Tag:
    rows: list[Tag] = []
    if up is not None:
        rows.append(tags.tr(tags.td(tags.a("..", href=up), class_="name"), tags.td("")))
    for entry in entries:
        if entry.kind == "tree":
            cell = tags.a(entry.name + "/", href=links.view("tree", ref, entry.path))
            extra: Any = ""
        elif entry.kind == "link":
            # Shown as its target text, never followed.
            cell = tags.a(entry.name, href=links.view("blob", ref, entry.path))
            extra = ["→ ", tags.code(entry.target)]
        elif entry.kind == "submodule":
            cell = tags.span(entry.name)
            extra = ["submodule @ ", tags.code(shortId(entry.id))]
        else:
            cell = tags.a(entry.name, href=links.view("blob", ref, entry.path))
            extra = ""
        rows.append(tags.tr(tags.td(cell, class_="name " + entry.kind), tags.td(extra)))
    return tags.table(tags.tbody(rows), class_="list tree")


def repositoryPage(
    name: str,
    description: str,
    cloneURLs: Sequence[tuple[str, str]],
    branch: str,
    head: CommitInfo | None,
    entries: Sequence[TreeEntry],
    readme: FileData | None,
    readmeRef: str,
    recent: Sequence[CommitInfo],
    refs: Sequence[RefInfo],
) -> bytes:
    """
    The page at C{/<repo>}: clone URLs (HTTP first, then each other door
    that listens), README, refs, recent commits and the top tree.
    """
    links = Links(name)
    cloneURL = cloneURLs[0][1]
    parts: list[Any] = [
        tags.h1(name),
        tags.p(description, class_="desc") if description else "",
        *(cloneBox(label, url) for label, url in cloneURLs),
    ]
    if head is None:
        target = branch or "main"
        parts.append(
            tags.section(
                tags.h2("This repository is empty"),
                tags.p("Push to it from a repository of your own:"),
                tags.pre(
                    tags.code(f"git remote add origin {cloneURL}\ngit push -u origin {target}\n"),
                    class_="howto",
                ),
            )
        )
        return page(name, repositoryCrumbs(name), *parts)
    parts.append(
        tags.nav(class_="tabs")(
            tags.a("Files", href=links.view("tree", branch or head.id)),
            " ",
            tags.a("History", href=links.view("log", branch or head.id)),
            " ",
            tags.a("Branches and tags", href=links.view("refs")),
        )
    )
    parts.append(
        tags.section(
            tags.h2("Files", tags.span(" on ", branch or shortId(head.id), class_="muted")),
            treeTable(links, branch or head.id, entries, None),
        )
    )
    if readme is not None:
        parts.append(
            tags.section(
                tags.h2(readme.path),
                renderReadme(readme, links, readmeRef),
                class_="readme",
            )
        )
    parts.append(
        tags.section(
            tags.h2("Recent commits"),
            commitList(links, recent),
            tags.p(tags.a("All history", href=links.view("log", branch or head.id))),
        )
    )
    if refs:
        parts.append(
            tags.section(
                tags.h2("Branches and tags"),
                refList(links, refs),
                tags.p(tags.a("All branches and tags", href=links.view("refs"))),
            )
        )
    return page(name, repositoryCrumbs(name), *parts)


def refsPage(name: str, refs: Sequence[RefInfo]) -> bytes:
    links = Links(name)
    return page(
        f"Branches and tags · {name}",
        repositoryCrumbs(name, ("branches and tags", None)),
        tags.h1("Branches and tags"),
        refList(links, refs) if refs else tags.p("No branches or tags."),
    )


def treePage(
    name: str, ref: str, where: Sequence[str], entries: Sequence[TreeEntry], cut: bool
) -> bytes:
    links = Links(name)
    up = None
    if where:
        up = links.view("tree", ref, "/".join(where[:-1]))
    title = "/".join(where) or ref
    return page(
        f"{title} · {name}",
        repositoryCrumbs(name, *pathCrumbs(links, ref, where)),
        tags.nav(class_="tabs")(
            tags.a("History of this folder", href=links.view("log", ref, "/".join(where)))
        ),
        treeTable(links, ref, entries, up),
        tags.p("Only the first entries are shown.", class_="note") if cut else "",
    )


def logPage(name: str, ref: str, where: Sequence[str], log: LogPage, number: int) -> bytes:
    links = Links(name)
    base = links.view("log", ref, "/".join(where))
    pager: list[Any] = []
    if number > 1:
        pager.append(tags.a("← Newer", href=f"{base}?page={number - 1}", rel="prev"))
    if log.more and log.commits:
        pager += [" ", tags.a("Older →", href=f"{base}?page={number + 1}", rel="next")]
    subject = "/".join(where)
    return page(
        f"History of {subject or ref} · {name}",
        repositoryCrumbs(name, *pathCrumbs(links, ref, where), ("history", None)),
        tags.h1("History", tags.span(" of ", subject, class_="muted") if subject else ""),
        commitList(links, log.commits) if log.commits else tags.p("No commits."),
        tags.p(log.stopped, class_="note") if log.stopped else "",
        tags.nav(pager, class_="pager"),
    )


def commitPageView(name: str, detail: CommitPage) -> bytes:
    links = Links(name)
    c = detail.commit
    files = []
    for change in detail.files:
        label = change.newPath or change.oldPath or ""
        if change.status == "modified" or change.oldPath == change.newPath:
            heading: Any = label
        else:
            heading = [label, tags.span(f" ({change.status})", class_="muted")]
        rows = [
            tags.tr(
                tags.td(line.text),
                class_={"+": "add", "-": "del", " ": "ctx", "@": "hunk"}[line.kind],
            )
            for line in change.lines
        ]
        body: list[Any] = []
        if rows:
            body.append(tags.table(tags.tbody(rows), class_="diff"))
        if change.note:
            body.append(tags.p(change.note, class_="note"))
        files.append(tags.section(tags.h3(heading, class_="file"), *body, class_="change"))
    parents = [[tags.a(shortId(p), href=links.commit(p)), " "] for p in c.parents]
    return page(
        f"{c.subject} · {name}",
        repositoryCrumbs(name, ("commit " + shortId(c.id), None)),
        tags.h1(c.subject or "(no message)", class_="subject"),
        tags.pre(c.body, class_="message") if c.body else "",
        tags.dl(class_="meta")(
            tags.dt("Author"),
            tags.dd(
                c.author.name, " <", c.author.email, "> ", when(c.author.time, c.author.offset)
            ),
            tags.dt("Committer"),
            tags.dd(c.committer.name, " ", when(c.committer.time, c.committer.offset)),
            tags.dt("Commit"),
            tags.dd(tags.code(c.id)),
            tags.dt("Parents"),
            tags.dd(parents or "none"),
            tags.dt("Files"),
            tags.dd(tags.a("browse", href=links.view("tree", c.id))),
        ),
        tags.p(detail.truncated, class_="note") if detail.truncated else "",
        *files,
    )


# -- files --------------------------------------------------------------------------------------


def _cssClass(kind: _TokenType) -> str:
    from pygments.token import STANDARD_TYPES

    while kind not in STANDARD_TYPES:
        kind = kind.parent
    return STANDARD_TYPES[kind]


@lru_cache(maxsize=512)
def _lexerFor(filename: str) -> Lexer | None:
    """
    The lexer for a file name, by Pygments' own table of file patterns,
    importing only the module of the lexer that matches. (Pygments' own
    lookup also scans plugins and imported some 600 modules, 38 MB, on the
    first file shown.)
    """
    from pygments.lexers._mapping import LEXERS

    for className, (module, _, _, patterns, _) in LEXERS.items():
        if any(fnmatch.fnmatchcase(filename, pattern) for pattern in patterns):
            try:
                lexer = getattr(importlib.import_module(module), className)
            except (ImportError, AttributeError):
                return None
            return cast("Lexer", lexer(stripnl=False, ensurenl=False))
    return None


def codeLines(filename: str, source: str) -> list[list[Any]]:
    """
    C{source} split into lines of highlighted spans. Pygments' tokens become
    L{Tag}s with its CSS class names; its HTML formatter is never used.
    """
    lexer = _lexerFor(posixpath.basename(filename)) if len(source) <= MAX_HIGHLIGHTED else None
    if lexer is None:
        return [[line] for line in source.split("\n")]
    lines: list[list[Any]] = [[]]
    for kind, value in lexer.get_tokens(source):
        css = _cssClass(kind)
        pieces = value.split("\n")
        for number, piece in enumerate(pieces):
            if number:
                lines.append([])
            if piece:
                lines[-1].append(tags.span(piece, class_=css) if css else piece)
    return lines


def filePage(name: str, ref: str, where: Sequence[str], data: FileData) -> bytes:
    links = Links(name)
    joined = "/".join(where)
    raw = links.view("raw", ref, joined)
    actions = tags.nav(class_="tabs")(
        tags.a("Raw", href=raw),
        " ",
        tags.a("History", href=links.view("log", ref, joined)),
        " ",
        tags.span(f"{data.size:,} bytes", class_="muted"),
    )
    if data.link:
        content: Any = tags.p("Symbolic link to ", tags.code(text(data.data)))
    elif data.image is not None:
        content = tags.p(tags.img(src=raw, alt=joined), class_="image")
    elif data.binary:
        content = tags.p("Binary file, not shown. ", tags.a("Download it", href=raw), ".")
    else:
        source = text(data.data)
        if source.endswith("\n"):
            source = source[:-1]
        lines = codeLines(joined, source)
        numbers = []
        for n in range(1, len(lines) + 1):
            numbers += [tags.a(str(n), href=f"#L{n}", id=f"L{n}"), "\n"]
        body = []
        for line in lines:
            body += [*line, "\n"]
        content = [
            tags.div(class_="file")(
                tags.pre(numbers, class_="nums", **{"aria-hidden": "true"}),
                tags.pre(tags.code(body), class_="code hl"),
            ),
            tags.p("The file is longer than shown; use Raw for all of it.", class_="note")
            if data.truncated
            else "",
        ]
    return page(
        f"{joined} · {name}",
        repositoryCrumbs(name, *pathCrumbs(links, ref, where)),
        actions,
        content,
    )


# -- READMEs ------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    """The README parser: CommonMark with tables and strikethrough, raw HTML off."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


# The tags a README may become; anything else turns into a neutral container.
_BLOCK_TAGS = {
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "blockquote",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "em",
    "strong",
    "s",
    "a",
    "code",
    "pre",
}
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_INVISIBLE = re.compile(r"[\x00-\x20\x7f]")


def safeURL(url: str, links: Links, ref: str, folder: str, raw: bool) -> str | None:
    """
    A README link made safe: http, https and mailto pass; a relative link
    is rewritten to the file it names in this repository (its raw form for
    images); anything else (C{javascript:}, C{data:}, C{vbscript:}, ...) is
    dropped. Browsers ignore whitespace and control characters inside a
    scheme ("java\\tscript:"), so they are removed before looking at it.
    """
    cleaned = _INVISIBLE.sub("", url)
    scheme = _SCHEME.match(cleaned)
    if scheme is not None:
        return cleaned if scheme.group(1).lower() in ("http", "https", "mailto") else None
    if cleaned.startswith(("//", "\\", "/\\")):
        return None  # protocol-relative: another host
    if cleaned.startswith("#") or not cleaned:
        return cleaned or None
    if cleaned.startswith("/"):
        target = cleaned.lstrip("/")
    else:
        target = posixpath.normpath(posixpath.join(folder, cleaned.split("#")[0].split("?")[0]))
    if target.startswith("..") or target == ".":
        return None
    return links.view("raw" if raw else "blob", ref, target)


def _inline(children: Sequence[Token], parent: Tag, safe: Any) -> None:
    stack = [parent]
    for token in children:
        kind = token.type
        if kind == "text" or kind == "html_inline":
            stack[-1](token.content)
        elif kind == "softbreak":
            stack[-1]("\n")
        elif kind == "hardbreak":
            stack[-1](tags.br())
        elif kind == "code_inline":
            stack[-1](tags.code(token.content))
        elif kind == "image":
            alt = "".join(child.content for child in token.children or [])
            src = safe(str(token.attrGet("src") or ""), True)
            stack[-1](tags.img(src=src, alt=alt) if src else alt)
        elif token.nesting == 1:
            element = Tag(token.tag if token.tag in _BLOCK_TAGS else "span")
            if token.tag == "a":
                href = safe(str(token.attrGet("href") or ""), False)
                if href:
                    element(href=href, rel="nofollow noopener")
            stack[-1](element)
            stack.append(element)
        elif token.nesting == -1 and len(stack) > 1:
            stack.pop()
        else:
            stack[-1](token.content)


def renderMarkdown(source: str, safe: Any) -> Tag:
    """Markdown as tags, from markdown-it's tokens (raw HTML off: it stays text)."""
    root = tags.div(class_="markdown")
    stack: list[Tag] = [root]
    for token in _markdown().parse(source):
        if token.type == "inline":
            _inline(token.children or [], stack[-1], safe)
        elif token.nesting == 1:
            if token.hidden:
                stack.append(stack[-1])  # a tight list's paragraph: no element
                continue
            element = Tag(token.tag if token.tag in _BLOCK_TAGS else "div")
            start = token.attrGet("start")
            if token.tag == "ol" and start is not None and str(start).isdigit():
                element(start=str(start))
            stack[-1](element)
            stack.append(element)
        elif token.nesting == -1:
            if len(stack) > 1:
                stack.pop()
        elif token.type in ("fence", "code_block"):
            stack[-1](tags.pre(tags.code(token.content)))
        elif token.type == "hr":
            stack[-1](tags.hr())
        else:
            stack[-1](tags.p(token.content))
    return root


def renderReadme(readme: FileData, links: Links, ref: str) -> Tag:
    """A README: Markdown rendered (safely), any other README as plain text."""
    source = text(readme.data)
    if readme.path.lower().endswith((".md", ".markdown")):
        folder = posixpath.dirname(readme.path)
        return renderMarkdown(source, lambda url, raw: safeURL(url, links, ref, folder, raw))
    return tags.pre(source, class_="plain")


# -- the stylesheet and the icon -----------------------------------------------------------------

FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<circle cx="4" cy="4" r="2.5" fill="#f05133"/><circle cx="4" cy="12" r="2.5" '
    b'fill="#f05133"/><circle cx="12" cy="8" r="2.5" fill="#f05133"/>'
    b'<path d="M4 4v8M4 8h8" stroke="#f05133" stroke-width="1.5" fill="none"/></svg>'
)

_BASE_CSS = """
:root { color-scheme: light dark; --fg: #1f2328; --bg: #fff; --muted: #656d76;
  --line: #d0d7de; --link: #0969da; --soft: #f6f8fa; --add: #e6ffec; --del: #ffebe9;
  --hunk: #ddf4ff; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --bg: #0d1117; --muted: #8d96a0; --line: #30363d;
    --link: #4493f8; --soft: #161b22; --add: #12261e; --del: #25171c; --hunk: #121d2f; }
}
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 0 1rem 3rem; color: var(--fg);
  background: var(--bg); font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
a { color: var(--link); text-decoration: none; } a:hover { text-decoration: underline; }
header { padding: .8rem 0; border-bottom: 1px solid var(--line); margin-bottom: 1rem;
  overflow-wrap: anywhere; }
.crumbs .sep { color: var(--muted); }
h1 { font-size: 1.5rem; margin: .5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.15rem; margin: 1.5rem 0 .5rem; }
h3.file { font-size: 1rem; font-family: ui-monospace, monospace; margin: 1.2rem 0 .3rem;
  overflow-wrap: anywhere; }
.muted, .who, .date, time { color: var(--muted); }
.desc { color: var(--muted); }
.note { color: var(--muted); font-style: italic; }
table.list { width: 100%; border-collapse: collapse; }
table.list td, table.list th { padding: .35rem .5rem; border-bottom: 1px solid var(--line);
  text-align: left; vertical-align: top; overflow-wrap: break-word; }
table.list th { white-space: nowrap; }
table.list th { font-weight: 600; }
td.sha, td.date { white-space: nowrap; font-family: ui-monospace, monospace; font-size: .9em; }
.filter { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; }
input, select, button { font: inherit; color: inherit; background: var(--soft);
  border: 1px solid var(--line); border-radius: 6px; padding: .3rem .5rem; }
.clone { display: flex; flex-wrap: wrap; gap: .5rem; align-items: center; margin: 1rem 0; }
.clone input { flex: 1 1 20rem; font-family: ui-monospace, monospace; }
.tabs { display: flex; flex-wrap: wrap; gap: 1rem; margin: .5rem 0; }
pre, code { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace; font-size: .9em; }
pre { background: var(--soft); padding: .75rem; border-radius: 6px; overflow-x: auto; }
.message { white-space: pre-wrap; overflow-wrap: anywhere; }
.file { display: flex; border: 1px solid var(--line); border-radius: 6px; overflow-x: auto; }
.file pre { margin: 0; border-radius: 0; background: none; }
.file .nums { text-align: right; color: var(--muted); user-select: none;
  border-right: 1px solid var(--line); }
.file .nums a { color: inherit; }
.file .code { flex: 1; }
table.diff { width: 100%; border-collapse: collapse; font-family: ui-monospace, monospace;
  font-size: .85em; }
table.diff td { white-space: pre-wrap; overflow-wrap: anywhere; padding: 0 .5rem; }
tr.add { background: var(--add); } tr.del { background: var(--del); }
tr.hunk { background: var(--hunk); color: var(--muted); }
tr.add td::before { content: "+"; } tr.del td::before { content: "-"; }
tr.ctx td::before { content: " "; }
.markdown img, .image img { max-width: 100%; }
.markdown table { border-collapse: collapse; }
.markdown td, .markdown th { border: 1px solid var(--line); padding: .3rem .6rem; }
.readme { border: 1px solid var(--line); border-radius: 6px; padding: 0 1rem; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.pager { display: flex; gap: 1rem; margin: 1rem 0; }
@media (max-width: 40rem) {
  body { font-size: 14px; padding: 0 .5rem 2rem; }
  td.desc, th:nth-child(2), .log td.who { display: none; }
}
"""


@lru_cache(maxsize=1)
def stylesheet() -> bytes:
    """The one stylesheet: the layout, then Pygments' colours for light and dark."""
    from pygments.formatters import HtmlFormatter

    light = HtmlFormatter(style="default").get_style_defs(".hl")
    dark = HtmlFormatter(style="github-dark").get_style_defs(".hl")
    keep = lambda css: "\n".join(  # noqa: E731
        line for line in css.splitlines() if line.startswith(".hl ")
    )
    return (
        _BASE_CSS + keep(light) + "\n@media (prefers-color-scheme: dark) {\n" + keep(dark) + "\n}\n"
    ).encode("utf-8")
