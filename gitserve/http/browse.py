"""
The browser's front door: which requests get pages, and how a page is
answered (headers, caching, the thread it is built in).

Pages answer only what git never asks for:

  - C{/} and C{/<repo>} when the request asks for HTML (C{Accept:
    text/html}) and is not from git (git's User-Agent starts with C{git/});
  - anything under a C{-} segment (C{/-/static/...}, C{/<repo>/-/...}):
    resolution refuses a segment starting with C{-}, so no repository and no
    dumb-protocol path can ever be named like that.

Every other request goes on to the route table exactly as without pages.
Reading is the fetch policy's (L{BrowseData.checkReadable}): a repository
the visitor may not fetch answers exactly like a missing one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from dulwich.objects import Commit
from twisted.internet.defer import Deferred, succeed
from twisted.web.server import Request

from gitserve.core.browse import (
    MAX_RAW,
    BrowseData,
    CommitInfo,
    Summary,
    commitInfo,
    isBinary,
    refsKey,
    sortSummaries,
    text,
)
from gitserve.core.errors import NotFound
from gitserve.core.repository import Repository, resolveRepository
from gitserve.http import pages
from gitserve.http.routes import matchRoute

if TYPE_CHECKING:
    from gitserve.http.context import HTTPContext

GET_METHODS = (b"GET", b"HEAD")
RECENT_COMMITS = 10
REFS_ON_SUMMARY = 10
LOG_PAGE = 50

# A Host header fit to be shown in a clone URL (a name or an address, a port).
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")

SECURITY_HEADERS = (
    (b"Content-Security-Policy", pages.CONTENT_SECURITY_POLICY),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Frame-Options", b"DENY"),
)

# Raw files are data, never documents: even a text/plain answer gets a CSP
# that forbids everything and sandboxes it, in case a browser sniffs anyway.
RAW_CSP = b"default-src 'none'; style-src 'unsafe-inline'; sandbox"

# The daemon's own files, built when first asked for (the stylesheet
# carries Pygments' colours, which are not loaded at start-up).
STATIC: dict[str, tuple[bytes, Callable[[], bytes]]] = {
    "style.css": (b"text/css; charset=utf-8", pages.stylesheet),
    "favicon.svg": (b"image/svg+xml", lambda: pages.FAVICON),
}


def asksForHTML(request: Request) -> bool:
    """
    Whether a request is a browser's: it accepts text/html and is not git
    (git sends C{Accept: */*} at most, but a proxy or a user's config could add
    more, so its User-Agent decides too).
    """
    agent = request.getHeader(b"User-Agent") or b""
    if agent.lower().startswith(b"git/"):
        return False
    accept = (request.getHeader(b"Accept") or b"").lower()
    return b"text/html" in accept or b"application/xhtml+xml" in accept


class BrowsePages:
    """
    The pages of one daemon, over L{BrowseData}. L{claims} says whether a
    request is for a page; L{render} answers it.

    @param runBlocking: runs page building (file reads, flattening) off the
        reactor thread.
    """

    def __init__(
        self,
        context: HTTPContext,
        data: BrowseData,
        sshPort: Callable[[], int | None] = lambda: None,
        gitPort: Callable[[], int | None] = lambda: None,
    ) -> None:
        """
        @param sshPort: the port the SSH door listens on, once it does.
        @param gitPort: the same for git://.
        """
        self.context = context
        self.data = data
        self.sshPort = sshPort
        self.gitPort = gitPort

    @property
    def runBlocking(self) -> Callable[[Callable[[], Any]], Deferred[Any]]:
        return self.context.core.runBlocking

    def claims(self, request: Request, segments: Sequence[str]) -> bool:
        """Whether C{request} (its decoded path C{segments}) is for a page."""
        if request.method not in GET_METHODS:
            return False
        if "-" in segments:
            return True
        if matchRoute(segments) is not None:
            return False
        return asksForHTML(request)

    def render(self, request: Request, segments: Sequence[str]) -> Deferred[None]:
        """Answer a claimed request; refusals fail the Deferred (the root renders them)."""
        return self.context.userFor(request).addCallback(self._answer, request, list(segments))

    def _answer(self, user: str | None, request: Request, segments: list[str]) -> Deferred[None]:
        while segments and segments[-1] == "":
            segments.pop()
        if segments[:2] == ["-", "static"] and len(segments) == 3 and segments[2] in STATIC:
            contentType, build = STATIC[segments[2]]
            body = build()
            request.setHeader(b"Cache-Control", b"public, max-age=86400")
            self._send(request, body, contentType)
            return succeed(None)
        if not segments:
            return self._index(request, user)
        if "-" in segments:
            split = segments.index("-")
            names, view = segments[:split], segments[split + 1 :]
        else:
            names, view = segments, []
        if not names:
            raise NotFound()
        repository = resolveRepository(self.context.core.root, [n.encode("utf-8") for n in names])
        if repository is None:
            raise NotFound()
        self.data.checkReadable(repository, user)
        return self._repository(request, repository, view)

    def _send(self, request: Request, body: bytes, contentType: bytes) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", contentType)
        for name, value in SECURITY_HEADERS:
            request.setHeader(name, value)
        if not request.responseHeaders.hasHeader(b"Cache-Control"):
            request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def _sendPage(self, request: Request, body: bytes) -> None:
        self._send(request, body, b"text/html; charset=utf-8")

    # -- the index

    def _index(self, request: Request, user: str | None) -> Deferred[None]:
        query = _argument(request, b"q")[:200]
        order = "age" if _argument(request, b"sort") == "age" else "name"

        def build() -> bytes:
            rows = self.data.summaries(user)
            key = ("index", query, order, tuple(rows))
            cached = self.data.pages.get(key)
            if cached is not None:
                return cached
            shown = _filter(rows, query)
            body = pages.indexPage(sortSummaries(shown, order), query, order, len(rows))
            self.data.pages.put(key, body, len(body))
            return body

        return self.runBlocking(build).addCallback(lambda body: self._sendPage(request, body))

    # -- a repository

    def _repository(
        self, request: Request, repository: Repository, view: list[str]
    ) -> Deferred[None]:
        kind = view[0] if view else ""
        rest = view[1:]
        if kind == "raw":
            return self.runBlocking(lambda: self._raw(repository, rest)).addCallback(
                lambda answer: self._sendRaw(request, *answer)
            )
        builders: dict[str, Callable[[], bytes]] = {
            "": lambda: self._summary(repository, self.cloneURLs(request, repository)),
            "tree": lambda: self._tree(repository, rest),
            "blob": lambda: self._blob(repository, rest),
            "log": lambda: self._log(repository, rest, _pageNumber(request)),
            "commit": lambda: self._commit(repository, rest),
            "refs": lambda: self._refs(repository),
        }
        if kind not in builders or (kind in ("", "refs") and rest):
            raise NotFound()
        key: tuple[Any, ...] = (repository.gitDir, kind, tuple(rest))
        if kind == "":
            key += tuple(self.cloneURLs(request, repository))
        if kind == "log":
            key += (_pageNumber(request),)

        def build() -> bytes:
            # The page may change only when refs (or the config, or the
            # description) do: objects never change.
            stamps = refsKey(repository.gitDir)
            if stamps is not None:
                cached = self.data.pages.get((key, stamps))
                if cached is not None:
                    return cached
            body = builders[kind]()
            if stamps is not None:
                self.data.pages.put((key, stamps), body, len(body))
            return body

        return self.runBlocking(build).addCallback(lambda body: self._sendPage(request, body))

    def cloneURLs(self, request: Request, repository: Repository) -> list[tuple[str, str]]:
        """
        Where this repository can be cloned from, as the visitor reached the
        server: over HTTP(S), then over SSH and git:// when they listen.
        """
        http = _cloneURL(request, repository)
        urls = [("HTTPS" if request.isSecure() else "HTTP", http)]
        host = urlsplit(http).hostname or "localhost"
        if ":" in host:
            host = f"[{host}]"
        name = pages.path(repository.name)
        for label, scheme, port in (
            ("SSH", "ssh://git@", self.sshPort),
            ("git://", "git://", self.gitPort),
        ):
            found = port()
            if found:
                urls.append((label, f"{scheme}{host}:{found}/{name}"))
        return urls

    def _summary(self, repository: Repository, cloneURLs: list[tuple[str, str]]) -> bytes:
        with self.data.reader(repository) as reader:
            branch = reader.defaultBranch()
            head = reader.headCommit()
            if head is None:
                return pages.repositoryPage(
                    repository.name,
                    reader.description(),
                    cloneURLs,
                    branch,
                    None,
                    [],
                    None,
                    "",
                    [],
                    [],
                )
            ref = branch or text(head.id)
            entries, _ = reader.tree(head, [])
            return pages.repositoryPage(
                repository.name,
                reader.description(),
                cloneURLs,
                branch,
                _info(head),
                entries,
                reader.readme(head),
                ref,
                reader.log(head, [], 0, RECENT_COMMITS).commits,
                reader.refs(limit=REFS_ON_SUMMARY),
            )

    def _tree(self, repository: Repository, rest: list[str]) -> bytes:
        with self.data.reader(repository) as reader:
            ref, commit, where = reader.resolve(rest)
            if where and reader.kindAt(commit, where) == "blob":
                return pages.filePage(repository.name, ref, where, reader.file(commit, where))
            entries, cut = reader.tree(commit, where)
            return pages.treePage(repository.name, ref, where, entries, cut)

    def _blob(self, repository: Repository, rest: list[str]) -> bytes:
        with self.data.reader(repository) as reader:
            ref, commit, where = reader.resolve(rest)
            if not where:
                raise NotFound()
            if reader.kindAt(commit, where) == "tree":
                entries, cut = reader.tree(commit, where)
                return pages.treePage(repository.name, ref, where, entries, cut)
            return pages.filePage(repository.name, ref, where, reader.file(commit, where))

    def _log(self, repository: Repository, rest: list[str], number: int) -> bytes:
        with self.data.reader(repository) as reader:
            ref, commit, where = reader.resolve(rest)
            if where:
                reader.kindAt(commit, where)  # NotFound for a path that never existed here
            log = reader.log(commit, where, (number - 1) * LOG_PAGE, LOG_PAGE)
            return pages.logPage(repository.name, ref, where, log, number)

    def _commit(self, repository: Repository, rest: list[str]) -> bytes:
        if len(rest) != 1:
            raise NotFound()
        with self.data.reader(repository) as reader:
            return pages.commitPageView(repository.name, reader.commitPage(reader.commit(rest[0])))

    def _refs(self, repository: Repository) -> bytes:
        with self.data.reader(repository) as reader:
            return pages.refsPage(repository.name, reader.refs())

    # -- raw files

    def _raw(self, repository: Repository, rest: list[str]) -> tuple[bytes, bytes, str]:
        with self.data.reader(repository) as reader:
            _, commit, where = reader.resolve(rest)
            data = reader.file(commit, where, MAX_RAW)
        if data.truncated:
            raise NotFound("The file is too large to download here: clone the repository.")
        if data.image is not None:
            contentType = data.image.encode("ascii")
        elif not isBinary(data.data) and not data.link:
            contentType = b"text/plain; charset=utf-8"
        else:
            contentType = b"application/octet-stream"
        return data.data, contentType, where[-1] if where else "file"

    def _sendRaw(self, request: Request, body: bytes, contentType: bytes, name: str) -> None:
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", contentType)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", RAW_CSP)
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"Cache-Control", b"no-cache")
        if contentType == b"application/octet-stream":
            # Something a browser could open or run: it is downloaded instead.
            request.setHeader(
                b"Content-Disposition",
                b"attachment; filename*=UTF-8''" + quote(name, safe="").encode("ascii"),
            )
        request.setHeader(b"Content-Length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _info(commit: Commit) -> CommitInfo:
    return commitInfo(commit)


def _argument(request: Request, name: bytes) -> str:
    args: dict[bytes, list[bytes]] = request.args or {}
    values = args.get(name) or [b""]
    return values[0].decode("utf-8", "replace").strip()


def _pageNumber(request: Request) -> int:
    value = _argument(request, b"page")
    return min(int(value), 10_000) if value.isdigit() and int(value) > 0 else 1


def _filter(rows: Sequence[Summary], query: str) -> list[Summary]:
    if not query:
        return list(rows)
    needle = query.lower()
    return [r for r in rows if needle in r.name.lower() or needle in r.description.lower()]


def _cloneURL(request: Request, repository: Repository) -> str:
    """
    The URL git clones this repository from, as this visitor reached the
    server: its scheme and its C{Host} (checked to be a host name, so the page
    never shows arbitrary text as a URL), else the address it connected to.
    """
    scheme = "https" if request.isSecure() else "http"
    host = (request.getHeader(b"Host") or b"").decode("latin-1")
    if not _HOST.fullmatch(host):
        address = request.getHost()
        host = f"{getattr(address, 'host', 'localhost')}:{getattr(address, 'port', 80)}"
    return f"{scheme}://{host}/{pages.path(repository.name)}"
