"""The web layer with authentication, private mode and the job limit, over the real GitSite."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs

from gitserve.auth import BasicAuthenticator, makePortal
from gitserve.core.jobs import JobLimiter
from gitserve.http.channel import GitSite
from gitserve.http.routes import RootResource
from tests.fakes import CLIENT, SiteHarness, makeRepository

ADVERTISE_RECEIVE = b"/project.git/info/refs?service=git-receive-pack"
ADVERTISE_UPLOAD = b"/project.git/info/refs?service=git-upload-pack"


def basic(user: str, password: str) -> dict[bytes, bytes]:
    return {b"Authorization": b"Basic " + base64.b64encode(f"{user}:{password}".encode())}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    makeRepository(tmp_path / "project.git")
    return tmp_path


def withAuth(site: SiteHarness) -> SiteHarness:
    """Give the harness's server alice/secret through a portal, checked synchronously."""
    checker = InMemoryUsernamePasswordDatabaseDontUse(alice=b"secret")
    authenticator = BasicAuthenticator(makePortal([checker], lambda f, *a: succeed(f(*a))), "t")
    site.context.authenticate = lambda request: authenticator.authenticate(
        request.getHeader(b"Authorization")
    )
    site.context.challenge = authenticator.challenge
    return site


def test_anonymousPushGetsAChallenge(root: Path) -> None:
    """With auth configured, anonymous receive-pack is 401 with WWW-Authenticate; no git runs."""
    site = withAuth(SiteHarness(root))
    site.request(b"GET", ADVERTISE_RECEIVE)
    response = site.response()
    assert response.status == 401
    assert response.header(b"www-authenticate") == b'Basic realm="t", charset="UTF-8"'
    assert site.reactor.spawned == []


def test_wrongPasswordGetsTheSameChallenge(root: Path) -> None:
    """A wrong password is answered exactly like no password."""
    anonymous = withAuth(SiteHarness(root))
    anonymous.request(b"GET", ADVERTISE_RECEIVE)
    wrong = withAuth(SiteHarness(root))
    wrong.request(b"GET", ADVERTISE_RECEIVE, basic("alice", "nope"))
    assert wrong.response() == anonymous.response()


def test_authenticatedPushReachesGitAsTheUser(root: Path) -> None:
    """alice's receive-pack runs with REMOTE_USER and the committer ident http-backend sets."""
    site = withAuth(SiteHarness(root))
    site.request(b"GET", ADVERTISE_RECEIVE, basic("alice", "secret"))
    env = site.child.env
    assert env["REMOTE_USER"] == "alice"
    assert env["GIT_COMMITTER_NAME"] == "alice"
    assert env["GIT_COMMITTER_EMAIL"] == "alice@http.192.0.2.7"


def test_privateModeHidesMissingAndExistingAlike(root: Path) -> None:
    """--private: without a valid user, smart or dumb, missing or existing: the same 401."""
    answers = []
    paths = (
        ADVERTISE_UPLOAD,
        b"/missing.git/info/refs?service=git-upload-pack",
        b"/project.git/HEAD",
        b"/missing.git/objects/info/packs",
    )
    for path in paths:
        for headers in (None, basic("alice", "nope")):
            site = withAuth(SiteHarness(root))
            site.context.core.policy.private = True
            site.request(b"GET", path, headers)
            answers.append(site.response())
            assert site.reactor.spawned == []
    assert answers[0].status == 401
    assert all(answer == answers[0] for answer in answers)


def test_privateModeServesTheUser(root: Path) -> None:
    """--private with valid credentials: fetch runs, and a missing repository is a plain 404."""
    site = withAuth(SiteHarness(root))
    site.context.core.policy.private = True
    site.request(b"GET", ADVERTISE_UPLOAD, basic("alice", "secret"))
    assert site.child.env["REMOTE_USER"] == "alice"
    site.child.exit(0)
    site.request(
        b"GET", b"/missing.git/info/refs?service=git-upload-pack", basic("alice", "secret")
    )
    assert site.responses()[-1].status == 404
    site.request(b"GET", b"/project.git/HEAD", basic("alice", "secret"))
    head = site.responses()[-1]
    # An unborn HEAD: an empty text/plain answer, as http-backend gives.
    assert head.status == 200 and head.header(b"content-type") == b"text/plain"


def oneRunningOneQueued(root: Path) -> SiteHarness:
    """A site with one job slot and one queue place, both taken by advertisements."""
    site = SiteHarness(root)
    site.context.core.jobs = JobLimiter(maxJobs=1, maxQueue=1)
    site.request(b"GET", ADVERTISE_UPLOAD)
    site.connect()
    site.request(b"GET", ADVERTISE_UPLOAD)
    return site


def test_jobLimitQueuesThenRefuses(root: Path) -> None:
    """One job and one queue place: the second request waits, the third gets 503 + Retry-After."""
    site = oneRunningOneQueued(root)
    assert len(site.reactor.spawned) == 1
    site.connect()
    site.request(b"GET", ADVERTISE_UPLOAD)
    refused = site.response()
    assert refused.status == 503
    assert refused.header(b"retry-after") == b"10"
    assert b"The server is busy" in refused.body
    # The first child ends: the queued request gets its slot.
    site.reactor.spawned[0].exit(0)
    assert len(site.reactor.spawned) == 2


def test_clientLeavingTheQueueFreesItsPlace(root: Path) -> None:
    """A queued client that disconnects never starts git."""
    site = oneRunningOneQueued(root)
    assert site.context.core.jobs.queued == 1
    site.channel.connectionLost(Exception("gone"))
    assert site.context.core.jobs.queued == 0
    site.reactor.spawned[0].exit(0)
    assert len(site.reactor.spawned) == 1
    assert site.context.core.jobs.busy == 0


def test_operationLogIsStructured(root: Path) -> None:
    """Each git operation logs one event with its service, repository, user, protocol and sizes."""
    site = withAuth(SiteHarness(root))
    with capturedLogs() as events:
        site.request(b"GET", ADVERTISE_RECEIVE, basic("alice", "secret"))
        site.child.protocol.outReceived(b"0000")
        site.child.exit(0)
    [event] = [e for e in events if e.get("log_format", "").startswith("git {description}")]
    assert {k: event[k] for k in ("service", "repository", "user", "protocolVersion")} == {
        "service": "git-receive-pack",
        "repository": "project.git",
        "user": "alice",
        "protocolVersion": 0,
    }
    assert event["exitCode"] == 0 and event["bytesOut"] > 0 and event["duration"] >= 0


def guardedChannel(site: SiteHarness, idleTimeout: float) -> StringTransport:
    """Connect the harness through a GitSite serving the same server; return the transport."""
    guarded = GitSite(RootResource(site.context), idleTimeout=idleTimeout, reactor=site.reactor)
    site.channel = guarded.buildProtocol(CLIENT)
    site.transport = StringTransport(peerAddress=CLIENT)
    site.channel.makeConnection(site.transport)
    return site.transport


PUSH_HEADERS = (
    b"POST /project.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-git-receive-pack-request\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def test_pushWaitingForAJobIsNotIdle(root: Path) -> None:
    """A push whose body the server holds back while it waits for a job is not timed out."""
    site = SiteHarness(root, anonymousPush=True)
    site.context.core.jobs = JobLimiter(maxJobs=1, maxQueue=1)
    site.request(b"GET", ADVERTISE_UPLOAD)
    transport = guardedChannel(site, idleTimeout=10)
    site.send(PUSH_HEADERS)
    site.reactor.advance(35)
    assert not transport.disconnecting
    site.reactor.spawned[0].exit(0)
    assert site.reactor.spawned[1].args[1] == "receive-pack"


def test_pushBodyThatStopsComingIsDropped(root: Path) -> None:
    """A push whose client stops sending its body is dropped after the idle timeout."""
    site = SiteHarness(root, anonymousPush=True)
    transport = guardedChannel(site, idleTimeout=10)
    site.send(PUSH_HEADERS + b"5\r\nhello\r\n")
    assert site.child.stdin == b"hello"
    site.reactor.advance(9)
    assert not transport.disconnecting
    site.reactor.advance(2)
    assert transport.disconnecting
