"""What an attacker's request gets: oversized heads, impossible chunk sizes, wrong methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from gitserve.core.errors import AuthenticationRequired, Busy, Forbidden, NotFound, TooLarge
from gitserve.http.errors import httpErrorFor
from gitserve.http.smart import MAX_REQUEST_BUFFER
from tests.fakes import SiteHarness, makeRepository

CHUNKED_UPLOAD = (
    b"POST /project.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-git-upload-pack-request\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    makeRepository(tmp_path / "project.git")
    return tmp_path


@pytest.fixture
def site(root: Path) -> SiteHarness:
    return SiteHarness(root)


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
