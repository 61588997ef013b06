"""Routing, status codes, headers and the git child's wiring, with Twisted fakes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from gitserve.core.errors import AuthenticationRequired, Busy, Forbidden, NotFound, TooLarge
from gitserve.core.pktline import FLUSH, parsePktLines, pktLine
from gitserve.core.process import TERM_GRACE
from gitserve.http.channel import DISCARD_LIMIT
from gitserve.http.errors import httpErrorFor
from gitserve.http.smart import MAX_REQUEST_BUFFER
from tests.fakes import SiteHarness, makeRepository

UPLOAD_REQUEST = {b"Content-Type": b"application/x-git-upload-pack-request"}
RECEIVE_REQUEST = {b"Content-Type": b"application/x-git-receive-pack-request"}
NEGOTIATION = pktLine(b"want " + b"a" * 40 + b"\n") + FLUSH + pktLine(b"done\n")
# The headers of a chunked push, the body to follow.
CHUNKED_PUSH = (
    b"POST /project.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-git-receive-pack-request\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
CHUNKED_UPLOAD = (
    b"POST /project.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-git-upload-pack-request\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
NO_CACHE = {
    b"expires": b"Fri, 01 Jan 1980 00:00:00 GMT",
    b"pragma": b"no-cache",
    b"cache-control": b"no-cache, max-age=0, must-revalidate",
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    makeRepository(tmp_path / "project.git")
    return tmp_path


@pytest.fixture
def site(root: Path) -> SiteHarness:
    return SiteHarness(root)


def assertNoCache(response) -> None:
    for name, value in NO_CACHE.items():
        assert response.header(name) == value, name


def test_v0Advertisement(site: SiteHarness, root: Path) -> None:
    """info/refs runs upload-pack --advertise-refs on the real path, after the preamble."""
    site.request(b"GET", b"/project/info/refs?service=git-upload-pack")
    child = site.child
    assert child.args == [
        "/usr/bin/git",
        "upload-pack",
        "--strict",
        "--stateless-rpc",
        "--advertise-refs",
        str((root / "project.git").resolve()),
    ]
    assert child.stdinClosed
    child.protocol.outReceived(b"0010refs-go-here")
    child.exit(0)
    response = site.response()
    assert response.status == 200
    assert response.header(b"content-type") == b"application/x-git-upload-pack-advertisement"
    assertNoCache(response)
    assert response.body == pktLine(b"# service=git-upload-pack\n") + FLUSH + b"0010refs-go-here"


def test_v2AdvertisementHasNoPreamble(site: SiteHarness) -> None:
    """With Git-Protocol: version=2 the preamble is dropped and GIT_PROTOCOL reaches git."""
    site.request(
        b"GET", b"/project.git/info/refs?service=git-upload-pack", {b"Git-Protocol": b"version=2"}
    )
    assert site.child.env["GIT_PROTOCOL"] == "version=2"
    site.child.protocol.outReceived(b"000eversion 2\n0000")
    site.child.exit(0)
    assert site.response().body == b"000eversion 2\n0000"


def test_childEnvironmentIsAnAllowlist(root: Path) -> None:
    """git sees PATH, HOME and the http-backend variables, nothing else of the daemon's env."""
    site = SiteHarness(
        root,
        environ={
            "PATH": "/usr/bin",
            "HOME": "/home/g",
            "GIT_DIR": "/etc",
            "LD_PRELOAD": "x.so",
            "GIT_CONFIG_PARAMETERS": "'core.x'='y'",
        },
    )
    site.request(
        b"GET",
        b"/project.git/info/refs?service=git-upload-pack",
        {b"User-Agent": b"git/2.39.5\x01"},
    )
    assert site.child.env == {
        "PATH": "/usr/bin",
        "HOME": "/home/g",
        "REMOTE_ADDR": "192.0.2.7",
        "GIT_COMMITTER_NAME": "anonymous",
        "GIT_COMMITTER_EMAIL": "anonymous@http.192.0.2.7",
        "GIT_HTTP_USER_AGENT": "git/2.39.5",
    }


@pytest.mark.parametrize(
    "header",
    [
        b"version=2\x00",
        b"version=2 x",
        b"version=2;rm",
        b"a" * 300,
        b":version=2",
        b"",
    ],
)
def test_invalidGitProtocolIsRefused(site: SiteHarness, header: bytes) -> None:
    """A malformed Git-Protocol header gets 400 and never reaches git."""
    site.request(
        b"GET", b"/project.git/info/refs?service=git-upload-pack", {b"Git-Protocol": header}
    )
    assert site.response().status == 400
    assert site.reactor.spawned == []


@pytest.mark.parametrize(
    "method, path, status",
    [
        (b"GET", b"/missing.git/info/refs?service=git-upload-pack", 404),
        (b"GET", b"/project.git/info/refs?service=git-frobnicate", 403),
        (b"GET", b"/project.git/info/refs?service=git-upload-pack&service=git-receive-pack", 403),
        (b"GET", b"/project.git/git-upload-pack", 405),
        (b"PUT", b"/project.git/info/refs?service=git-upload-pack", 405),
        (b"GET", b"/project.git/../project.git/info/refs?service=git-upload-pack", 404),
        (b"GET", b"/project.git/nothing-here", 404),
        (b"GET", b"/info/refs?service=git-upload-pack", 404),
        (b"POST", b"/missing.git/git-upload-pack", 404),
    ],
)
def test_statusCodes(site: SiteHarness, method: bytes, path: bytes, status: int) -> None:
    """Routing answers like http-backend, with a no-cache text/plain message and no git run."""
    site.request(method, path)
    response = site.response()
    assert response.status == status
    assert response.header(b"content-type") == b"text/plain; charset=utf-8"
    assertNoCache(response)
    assert site.reactor.spawned == []


@pytest.mark.parametrize(
    "method, path, status",
    [
        (b"GET", b"/archived.git/info/refs?service=git-upload-archive", 403),
        (b"POST", b"/archived.git/git-upload-archive", 404),
    ],
)
def test_uploadArchiveNotOverHTTP(
    root: Path, site: SiteHarness, method: bytes, path: bytes, status: int
) -> None:
    """upload-archive is the SSH and git:// doors' alone: HTTP answers it as an unknown service."""
    makeRepository(
        root / "archived.git", "[daemon]\n\tuploadarch = true\n[http]\n\tuploadarchive = true\n"
    )
    site.request(method, path)
    assert site.response().status == status
    assert site.reactor.spawned == []


def test_405Is400ForHttp10(site: SiteHarness) -> None:
    """HTTP/1.0 has no 405: http-backend answers 400 there."""
    site.send(b"GET /project.git/git-upload-pack HTTP/1.0\r\n\r\n")
    assert site.response().status == 400


def test_disabledServiceIs403(root: Path) -> None:
    """http.uploadpack=false refuses upload-pack with the message git shows."""
    makeRepository(root / "off.git", "[http]\n\tuploadpack = false\n")
    site = SiteHarness(root)
    site.request(b"GET", b"/off.git/info/refs?service=git-upload-pack")
    response = site.response()
    assert response.status == 403
    assert response.body == b"Service not enabled: 'upload-pack'\n"


def test_exportOkRequired(root: Path) -> None:
    """With --require-export-ok a repository without the flag file is a 404; with it, served."""
    site = SiteHarness(root, requireExportOk=True)
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    assert site.response().status == 404
    (root / "project.git" / "git-daemon-export-ok").touch()
    site.connect()
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    assert len(site.reactor.spawned) == 1


def test_wrongContentTypeIs415(site: SiteHarness) -> None:
    """A POST with another Content-Type is refused before git starts."""
    site.request(
        b"POST", b"/project.git/git-upload-pack", {b"Content-Type": b"text/plain"}, NEGOTIATION
    )
    assert site.response().status == 415
    assert site.reactor.spawned == []


def test_declaredOversizeIs413BeforeTheBody(site: SiteHarness) -> None:
    """A Content-Length above the request buffer is refused from the headers alone."""
    site.send(
        b"POST /project.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-git-upload-pack-request\r\n"
        b"Content-Length: %d\r\n\r\n" % (MAX_REQUEST_BUFFER + 1)
    )
    response = site.response()
    assert response.status == 413
    assert site.reactor.spawned == []


def test_uploadPackBodyIsCheckedThenFed(site: SiteHarness) -> None:
    """The negotiation is buffered whole, then written to git's stdin and closed."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    child = site.child
    assert child.args[-2:] == ["--stateless-rpc", child.args[-1]]
    assert child.stdin == NEGOTIATION
    assert child.stdinClosed
    child.protocol.outReceived(b"0008NAK\n")
    child.exit(0)
    response = site.response()
    assert response.header(b"content-type") == b"application/x-git-upload-pack-result"
    assert response.body == b"0008NAK\n"


@pytest.mark.parametrize("body", [b"-001", b"00_4abcd", b"000aab", b"ffffxyz"])
def test_malformedNegotiationIs400(site: SiteHarness, body: bytes) -> None:
    """Bytes that are not pkt-lines get a protocol error instead of reaching git."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, body)
    response = site.response()
    assert response.status == 400
    assert b"protocol error" in response.body
    assert site.reactor.spawned == []


def test_gzipNegotiationIsInflated(site: SiteHarness) -> None:
    """A gzip request body reaches git inflated."""
    headers = {**UPLOAD_REQUEST, b"Content-Encoding": b"gzip"}
    site.request(b"POST", b"/project.git/git-upload-pack", headers, gzip.compress(NEGOTIATION))
    assert site.child.stdin == NEGOTIATION


def test_gzipBombStopsAtTheCap(site: SiteHarness) -> None:
    """A small gzip body that inflates past the request buffer is refused with 413."""
    bomb = gzip.compress(b"0" * (MAX_REQUEST_BUFFER + 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100 * 1024
    headers = {**UPLOAD_REQUEST, b"Content-Encoding": b"gzip"}
    site.request(b"POST", b"/project.git/git-upload-pack", headers, bomb)
    assert site.response().status == 413
    assert site.reactor.spawned == []


def test_brokenGzipIs400(site: SiteHarness) -> None:
    """A body that claims gzip and is not gets 400."""
    headers = {**UPLOAD_REQUEST, b"Content-Encoding": b"gzip"}
    site.request(b"POST", b"/project.git/git-upload-pack", headers, b"not gzip at all")
    assert site.response().status == 400


def test_anonymousPushRefusedWithoutReadingTheBody(site: SiteHarness) -> None:
    """Anonymous receive-pack is refused (403, no auth configured) from the headers alone."""
    site.send(CHUNKED_PUSH)
    response = site.response()
    assert response.status == 403
    assert b"Anonymous push is not allowed" in response.body
    assert site.reactor.spawned == []


def test_refusedBodyIsDroppedUpToALimit(site: SiteHarness) -> None:
    """A refused request's body is discarded, and past the discard limit the connection closes."""
    site.send(CHUNKED_PUSH)
    chunk = b"x" * 65536
    for _ in range(DISCARD_LIMIT // len(chunk)):
        site.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert not site.transport.disconnecting
    site.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    assert site.transport.disconnecting


def test_refusedSmallBodyKeepsTheConnection(site: SiteHarness) -> None:
    """After a refused request with a small body, the next request on the connection is served."""
    site.request(b"POST", b"/project.git/git-receive-pack", RECEIVE_REQUEST, b"0000")
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    assert [r.status for r in site.responses()] == [403]
    assert len(site.reactor.spawned) == 1


def test_pushStreamsIntoGitWithBackPressure(root: Path) -> None:
    """receive-pack starts at the headers; body chunks reach stdin as they come, paced by git."""
    site = SiteHarness(root, anonymousPush=True)
    site.send(CHUNKED_PUSH)
    child = site.child
    assert child.args[1] == "receive-pack"
    assert child.stdinProducer is not None
    site.send(b"5\r\nhello\r\n")
    assert child.stdin == b"hello"
    # git stops reading: the network is paused until it catches up.
    child.stdinProducer.pauseProducing()
    assert site.transport.producerState == "paused"
    child.stdinProducer.resumeProducing()
    assert site.transport.producerState == "producing"
    site.send(b"6\r\n world\r\n0\r\n\r\n")
    assert child.stdin == b"hello world"
    assert child.stdinClosed
    child.protocol.outReceived(b"0030\x01000eunpack ok\n0019ok refs/heads/main\n00000000")
    child.exit(0)
    response = site.response()
    assert response.status == 200
    assert response.header(b"content-type") == b"application/x-git-receive-pack-result"


def test_pushOverTheSizeLimitEndsGit(root: Path) -> None:
    """A streamed push past --max-push-size stops git and answers 413."""
    site = SiteHarness(root, anonymousPush=True)
    site.context.maxPushSize = 10
    site.send(CHUNKED_PUSH)
    site.send(b"10\r\n" + b"y" * 16 + b"\r\n")
    child = site.child
    assert child.stdinClosed
    site.reactor.advance(TERM_GRACE)
    assert child.signals == ["TERM"]
    child.exit(1)
    site.send(b"0\r\n\r\n")
    response = site.response()
    assert response.status == 413


def test_errorBeforeOutputBecomesErrPacket(site: SiteHarness) -> None:
    """git failing before writing anything gives the client an ERR packet with git's complaint."""
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    site.child.protocol.errReceived(b"fatal: bad config line 1 in file config\n")
    site.child.exit(128)
    response = site.response()
    assert response.status == 200
    assert parsePktLines(response.body) == [b"ERR fatal: bad config line 1 in file config\n"]


def test_dubiousOwnershipIsNotLeaked(site: SiteHarness) -> None:
    """git's ownership refusal tells the client to ask the admin, not where the repository is."""
    site.request(b"GET", b"/project.git/info/refs?service=git-upload-pack")
    site.child.protocol.errReceived(
        b"fatal: detected dubious ownership in repository at '/srv/secret/project.git'\n"
    )
    site.child.exit(128)
    body = site.response().body
    assert b"/srv/secret" not in body
    assert b"ownership" in body


def test_errorAfterOutputAborts(site: SiteHarness) -> None:
    """git failing mid-response aborts the connection rather than finishing a truncated reply."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    site.child.protocol.outReceived(b"0008NAK\n")
    site.child.exit(1)
    assert site.transport.disconnecting
    assert not site.transport.value().endswith(b"0\r\n\r\n")


def test_gitRefusingWithErrFinishesTheAnswer(site: SiteHarness) -> None:
    """git's complete ERR refusal (e.g. "not our ref" after a race) reaches the client intact."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    refusal = pktLine(b"ERR upload-pack: not our ref " + b"1" * 40)
    site.child.protocol.outReceived(refusal)
    site.child.exit(128)
    assert not site.transport.disconnecting
    response = site.response()
    assert response.status == 200
    assert parsePktLines(response.body) == [refusal[4:]]


def test_clientPausePausesGit(site: SiteHarness) -> None:
    """When the client's socket backs up, git's output is paused, and resumed after."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    child = site.child
    child.protocol.outReceived(b"0008NAK\n")
    site.channel.pauseProducing()
    assert child.paused
    site.channel.resumeProducing()
    assert not child.paused


def test_disconnectEndsGit(site: SiteHarness) -> None:
    """A client that goes away gets its git child TERMed, then KILLed after the grace."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    child = site.child
    child.protocol.outReceived(b"0008NAK\n")
    site.channel.connectionLost(Failure(ConnectionDone()))
    assert child.signals == ["TERM"]
    site.reactor.advance(site.context.core.backend.killGrace + 0.1)
    assert child.signals == ["TERM", "KILL"]
    child.exit(-9)


def test_disconnectMidPushClosesStdinBeforeSignals(root: Path) -> None:
    """A pusher gone mid-body: git gets EOF first, TERM after the grace, KILL after that."""
    site = SiteHarness(root, anonymousPush=True)
    site.send(CHUNKED_PUSH + b"5\r\nhello\r\n")
    child = site.child
    site.channel.connectionLost(Failure(ConnectionDone()))
    # EOF lets receive-pack fail and remove its quarantine itself, which a
    # signal would not (git >= 2.38 skips that cleanup on signals).
    assert child.stdinClosed
    assert child.signals == []
    site.reactor.advance(TERM_GRACE)
    assert child.signals == ["TERM"]
    site.reactor.advance(site.context.core.backend.killGrace)
    assert child.signals == ["TERM", "KILL"]
    child.exit(-9)
    assert not [call for call in site.reactor.getDelayedCalls() if call.active()]


def test_disconnectAfterExitLeavesNothingScheduled(site: SiteHarness) -> None:
    """A child that ends within its grace period leaves no kill timer behind."""
    site.request(b"POST", b"/project.git/git-upload-pack", UPLOAD_REQUEST, NEGOTIATION)
    child = site.child
    child.protocol.outReceived(b"0008NAK\n")
    child.protocol.terminate()
    child.exit(0)
    pending = [call.func for call in site.reactor.getDelayedCalls() if call.active()]
    assert child.protocol._signal not in pending


def test_gitEndingMidPushDropsTheRestOfTheBody(root: Path) -> None:
    """When receive-pack dies while the body still streams, the client gets git's answer."""
    site = SiteHarness(root, anonymousPush=True)
    site.send(CHUNKED_PUSH + b"5\r\nhello\r\n")
    child = site.child
    child.protocol.errReceived(b"fatal: protocol error: bad line length character: hell\n")
    child.exit(128)
    assert child.stdinProducer is None
    site.send(b"5\r\nworld\r\n0\r\n\r\n")
    response = site.response()
    assert parsePktLines(response.body) == [
        b"ERR fatal: protocol error: bad line length character: hell\n"
    ]
    assert not site.transport.disconnecting


# Hostile heads and bodies, wrong methods, and the refusal table ---------------


def test_hugeGitProtocolHeaderIsAnswered431AndClosed(site: SiteHarness) -> None:
    """One 64 KiB Git-Protocol value gets a 431 with a message and a close, not a silent close."""
    site.send(
        b"GET /project.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Git-Protocol: " + b"v" * 65536 + b"\r\n\r\n"
    )
    response = site.response()
    assert response.status == 431
    assert b"too large" in response.body
    assert site.transport.disconnecting
    assert site.reactor.spawned == []


def test_oneMebibyteHeaderBlockIsAnswered431(site: SiteHarness) -> None:
    """Many headers adding up past the total header size get a 431, sent before the close."""
    headers = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(1024))
    site.send(b"GET /project.git/HEAD HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert site.response().status == 431
    assert site.transport.disconnecting


def test_tooManyHeadersIsAnswered431(site: SiteHarness) -> None:
    """More header lines than the channel accepts get a 431 too."""
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(site.channel.maxHeaders + 1))
    site.send(b"GET /project.git/HEAD HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert site.response().status == 431
    assert site.transport.disconnecting


def test_overlongRequestLineIsAnswered400(site: SiteHarness) -> None:
    """A request line longer than a line may be gets a 400 with a message, then a close."""
    site.send(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n")
    response = site.response()
    assert response.status == 400
    assert b"Request line too long" in response.body
    assert site.transport.disconnecting


def test_headersAfterAnAnsweredRequestStillGetTheirOwnLimit(site: SiteHarness) -> None:
    """The header budget is per request: a second request on the connection starts afresh."""
    filler = b"X-Filler: " + b"f" * 9000 + b"\r\n"
    request = b"GET /project.git/HEAD HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n"
    site.send(request + request)
    assert [r.status for r in site.responses()] == [200, 200]


@pytest.mark.parametrize(
    "size", [b"ffffffffffffffff", b"100000000000000004", b"%x" % (MAX_REQUEST_BUFFER + 1)]
)
def test_chunkLargerThanTheCapIsRefusedAtOnce(site: SiteHarness, size: bytes) -> None:
    """A chunk-size line past the service's cap is a 413 and a close as soon as it arrives."""
    site.send(CHUNKED_UPLOAD + size + b"\r\n")
    response = site.response()
    assert response.status == 413
    assert b"exceeds the limit" in response.body
    # The server's side closes at once; what the client still sends is
    # dropped until it stops or passes the discard limit.
    assert site.transport.writeConnectionLost
    assert not site.channel.persistent
    assert site.reactor.spawned == []


def test_chunkLargerThanThePushCapIsRefusedAtOnce(root: Path) -> None:
    """A push announcing a chunk past --max-push-size ends git's input before the chunk comes."""
    site = SiteHarness(root, anonymousPush=True)
    site.context.maxPushSize = 1024
    site.send(
        b"POST /project.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-git-receive-pack-request\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"401\r\n"
    )
    child = site.child
    assert child.stdinClosed and child.stdin == b""
    # git, its input cut, fails; the answer follows at once.
    child.exit(1)
    assert site.response().status == 413
    assert site.transport.writeConnectionLost


def test_chunksWithinTheCapAreServed(site: SiteHarness) -> None:
    """Chunks that fit under the cap are read as usual: the refusal is about size only."""
    body = b"0032want " + b"a" * 40 + b"\n0000"
    site.send(CHUNKED_UPLOAD + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    [child] = site.reactor.spawned
    assert child.stdinClosed


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        (b"GET", b"/nowhere.git/git-upload-pack", b"POST"),
        (b"PUT", b"/nowhere.git/info/refs", b"GET, HEAD"),
        (b"DELETE", b"/project.git/HEAD", b"GET, HEAD"),
    ],
)
def test_wrongMethodIs405WithAllowBeforeResolution(
    site: SiteHarness, method: bytes, path: bytes, allow: bytes
) -> None:
    """A method a route does not answer is 405 with Allow, for missing repositories too."""
    site.request(method, path)
    response = site.response()
    assert response.status == 405
    assert response.header(b"allow") == allow


@pytest.mark.parametrize(
    ("refusal", "status"),
    [
        (NotFound(), 404),
        (Forbidden(), 403),
        (TooLarge(), 413),
        (Busy("busy", retryAfter=10), 503),
        (AuthenticationRequired(), 401),
    ],
)
def test_coreRefusalsMapToStatusesInOnePlace(refusal: Exception, status: int) -> None:
    """Each core refusal has its HTTP status, with the headers that go with it."""
    answer = httpErrorFor(refusal, b'Basic realm="x"')  # type: ignore[arg-type]
    assert answer.code == status
    if status == 503:
        assert answer.headers[b"Retry-After"] == b"10"
    if status == 401:
        assert answer.headers[b"WWW-Authenticate"] == b'Basic realm="x"'


def test_authenticationRequiredWithoutAuthConfiguredIs403() -> None:
    """With no credentials to ask for, "authenticate first" is a plain 403."""
    assert httpErrorFor(AuthenticationRequired(), None).code == 403
