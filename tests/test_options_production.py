"""The production options of `twistd gitserve`: parsing, defaults and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import capturedLogs
from twisted.python import usage

from gitserve.app.tls import CertificateReloadService, warnIfPlaintextAuth
from gitserve.auth import HtpasswdChecker
from gitserve.core.jobs import defaultMaxJobs
from gitserve.tap import Options, makeService
from tests.certs import makeSelfSigned
from tests.fakes import FakeServiceReactor


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults(tmp_path: Path) -> None:
    """Without options: 4 x CPUs jobs, a queue of 8 x that, 30 s grace, no checkers."""
    options = parse("--root", str(tmp_path))
    assert options["max-jobs"] == defaultMaxJobs() >= 4
    assert options["max-queue"] == 8 * options["max-jobs"]
    assert options["shutdown-grace"] == 30
    assert options["idle-timeout"] == 120
    assert options["credCheckers"] == []


def test_authHtpasswdAndStrcred(tmp_path: Path) -> None:
    """--auth takes the htpasswd plugin and Twisted's own checkers, repeatedly."""
    users = tmp_path / "users"
    users.write_text("")
    options = parse("--root", str(tmp_path), "--auth", f"htpasswd:{users}", "--auth", "memory:a:b")
    kinds = [type(c).__name__ for c in options["credCheckers"]]
    assert kinds == [HtpasswdChecker.__name__, "InMemoryUsernamePasswordDatabaseDontUse"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--private"], "--private needs --auth"),
        (["--max-jobs", "0"], "--max-jobs must be a positive integer"),
        (["--max-queue", "-1"], "--max-queue must be a whole number"),
        (["--shutdown-grace", "soon"], "--shutdown-grace must be a positive number"),
        (["--idle-timeout", "0"], "--idle-timeout must be a positive number"),
        (["--auth", "sshkey"], "Auth plugin not supported"),
    ],
)
def test_refusals(tmp_path: Path, args: list[str], message: str) -> None:
    """Nonsense is refused at start-up with a message naming the option."""
    with pytest.raises(usage.UsageError) as caught:
        parse("--root", str(tmp_path), *args)
    assert message in str(caught.value)


def test_sslListenGetsAReloadableCertificate(tmp_path: Path) -> None:
    """--listen ssl:... is accepted exactly as Twisted spells it, with a reloadable certificate."""
    key, cert = makeSelfSigned(tmp_path)
    options = parse(
        "--root", str(tmp_path), "--listen", f"ssl:8443:privateKey={key}:certKey={cert}"
    )
    service = makeService(options, reactor=FakeServiceReactor())
    [reloader] = [s for s in service if isinstance(s, CertificateReloadService)]  # type: ignore[attr-defined]
    assert reloader.reloadAll() == 1


def test_sslWithAMismatchedKeyIsRefused(tmp_path: Path) -> None:
    """A key that does not belong to the certificate stops the start-up."""
    _, cert = makeSelfSigned(tmp_path)
    otherKey, _ = makeSelfSigned(tmp_path, name="other")
    options = parse(
        "--root", str(tmp_path), "--listen", f"ssl:8443:privateKey={otherKey}:certKey={cert}"
    )
    with pytest.raises(usage.UsageError) as caught:
        makeService(options, reactor=FakeServiceReactor())
    assert "TLS setup failed: Certificate public and private keys do not match" in str(caught.value)


def test_listenThatDoesNotParseIsAUsageError(tmp_path: Path) -> None:
    """A --listen description that does not parse stops start-up with a usage error naming it."""
    options = parse("--root", str(tmp_path), "--listen", "tcp:http")
    with pytest.raises(usage.UsageError) as caught:
        makeService(options, reactor=FakeServiceReactor())
    assert str(caught.value).startswith("--listen 'tcp:http' is not an endpoint: ")


@pytest.mark.parametrize(
    "args, unknown",
    [
        (["--access-l", "access.log"], "--access-l"),
        (["--access-lo=access.log"], "--access-lo"),
        (["--max-j", "3"], "--max-j"),
        (["--anon"], "--anon"),
        (["--priv", "--auth", "memory:a:b"], "--priv"),
        (["--au", "memory:a:b"], "--au"),
        (["--help-a"], "--help-a"),
        (["--list", "tcp:0"], "--list"),
    ],
)
def test_abbreviatedOptionsAreRefused(tmp_path: Path, args: list[str], unknown: str) -> None:
    """getopt would take an unambiguous prefix; gitserve names it as an unknown option instead."""
    with pytest.raises(usage.UsageError) as caught:
        parse("--root", str(tmp_path), *args)
    assert str(caught.value) == f"option {unknown} not recognized"


def test_fullOptionNamesStillWork(tmp_path: Path) -> None:
    """Every option written in full, with a space or "=", parses as before."""
    log = tmp_path / "access.log"
    options = parse(
        "--root",
        str(tmp_path),
        f"--access-log={log}",
        "--max-jobs",
        "3",
        "--max-queue=5",
        "--anonymous-push",
        "--require-export-ok",
        "--auth",
        "memory:a:b",
        "--private",
        "--listen",
        "tcp:0",
        "--listen=unix:/tmp/x.sock",
    )
    assert options["access-log"] == str(log)
    assert (options["max-jobs"], options["max-queue"]) == (3, 5)
    assert options["anonymous-push"] and options["require-export-ok"] and options["private"]
    assert len(options["credCheckers"]) == 1
    assert options["listen"] == ["tcp:0", "unix:/tmp/x.sock"]


def test_valuesThatLookLikeOptionsAreValues(tmp_path: Path) -> None:
    """An option's value is never taken for an option, even when it starts with "--"."""
    options = parse("--root", str(tmp_path), "--realm", "--anon")
    assert options["realm"] == "--anon"


def test_doubleDashEndsTheOptions(tmp_path: Path) -> None:
    """After "--" nothing is an option: gitserve takes no arguments, so it is Twisted's refusal."""
    with pytest.raises(usage.UsageError) as caught:
        parse("--root", str(tmp_path), "--", "--anon")
    assert str(caught.value) == "Wrong number of arguments."


@pytest.mark.parametrize(
    "address, secure, warned",
    [
        (IPv4Address("TCP", "0.0.0.0", 8080), False, True),
        (IPv4Address("TCP", "192.0.2.1", 8080), False, True),
        (IPv6Address("TCP", "::", 8080), False, True),
        (IPv4Address("TCP", "127.0.0.1", 8080), False, False),
        (IPv6Address("TCP", "::1", 8080), False, False),
        (IPv4Address("TCP", "0.0.0.0", 8443), True, False),
        (UNIXAddress(b"/run/gitserve.sock"), False, False),
    ],
)
def test_plaintextBasicAuthWarning(address: object, secure: bool, warned: bool) -> None:
    """Basic auth over plain TCP beyond loopback is warned about; TLS, loopback and unix are not."""
    with capturedLogs() as events:
        result = warnIfPlaintextAuth("tcp:8080", address, object() if secure else None)  # type: ignore[arg-type]
    assert result is warned
    assert len(events) == (1 if warned else 0)
