"""
The benchmark's own instruments (bench/): a wrong instrument would print a
table of confident, wrong figures, so the parts that judge are pinned here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from bench.corpus import FastImportStream, gitEnvironment
from bench.procfs import Sampler, writtenFiles
from bench.run import BACKEND, FLOOR, GITSERVE, Row, Target, pktLine


def test_writtenFilesFindsAnUnlinkedTemporaryFile() -> None:
    """A TemporaryFile being written is seen with its size, though it has no name."""
    with tempfile.TemporaryFile() as spool:
        spool.write(b"x" * 2_000_000)
        spool.flush()
        sizes = [size for path, size in writtenFiles(os.getpid()).items() if "(deleted)" in path]
    assert 2_000_000 in sizes


def test_writtenFilesIgnoresFilesOpenForReading(tmp_path: Path) -> None:
    """A large file only read (a pack being served) is not a temporary file."""
    served = tmp_path / "served.pack"
    served.write_bytes(b"p" * 2_000_000)
    with open(served, "rb"):
        assert str(served) not in writtenFiles(os.getpid())


def test_samplerReportsTheLargestTemporaryFileButNotIgnoredOnes(tmp_path: Path) -> None:
    """The push workload's temp-file check sees a file in TMPDIR and skips the log."""
    log = tmp_path / "server.log"
    with open(log, "wb") as logFile:
        logFile.write(b"l" * 3_000_000)
        logFile.flush()
        sampler = Sampler(
            lambda: 1, lambda: [os.getpid()], watchFiles=True, tmpDir=tmp_path, ignore={str(log)}
        )
        with sampler:
            (tmp_path / "spool").write_bytes(b"s" * 1_500_000)
    assert sampler.result.largestTempFile == (str(tmp_path / "spool"), 1_500_000)


def test_targetsJudgeRatiosInTheRightDirection() -> None:
    """Lower-is-better and higher-is-better targets compare gitserve to the right column."""
    values = {GITSERVE: 2.0, BACKEND: 4.0, FLOOR: 1.95}
    assert Target("ratio<=", 0.5).met(values) is True
    assert Target("ratio>=", 3.0).met(values) is False
    assert Target("floor<=", 1.05).met(values) is True
    assert Target("floor<=", 1.0).met(values) is False
    assert Target("value<=", 1.5).met(values) is False
    assert Target("ratio<=", 1.0).met({GITSERVE: 1.0}) is None


def test_aFailedGitserveColumnFailsItsRow() -> None:
    """A workload gitserve failed is a missed target, not a missing figure."""
    row = Row(
        "w",
        "s",
        {GITSERVE: None, BACKEND: 1.0},
        [Target("ratio<=", 1.0)],
        samples={GITSERVE: [], BACKEND: [1.0]},
    )
    assert row.failed() == [GITSERVE]
    assert row.met() is False


def test_replayedFetchRequestGetsAPackFromUploadPack(tmp_path: Path) -> None:
    """The v2 fetch body the benchmark replays is one git answers with a whole pack."""
    env = gitEnvironment(tmp_path / "home")
    repo = tmp_path / "r.git"
    stream = FastImportStream(repo, env)
    blob = stream.blob(b"content\n")
    stream.commit(b"refs/heads/main", 1_600_000_000, b"one", [(b"f", blob)])
    (oid,) = [oid for mark, oid in stream.close().items() if mark != blob]
    body = b"".join(
        [
            pktLine(b"command=fetch\n"),
            pktLine(b"object-format=sha1\n"),
            b"0001",
            pktLine(b"no-progress\n"),
            pktLine(b"ofs-delta\n"),
            pktLine(b"want %s\n" % (oid.encode(),)),
            pktLine(b"done\n"),
            b"0000",
        ]
    )
    answer = subprocess.run(
        ["git", "upload-pack", "--stateless-rpc", str(repo)],
        input=body,
        check=True,
        env=dict(env, GIT_PROTOCOL="version=2"),
        stdout=subprocess.PIPE,
    ).stdout
    assert answer.startswith(b"000dpackfile\n")
    assert b"PACK" in answer


def test_sshdForcedCommandIsGitShellAndNothingElse() -> None:
    """The reference sshd's key line forces git-shell and forbids forwarding and a pty."""
    from bench.doors import authorizedKeysLine

    line = authorizedKeysLine("ssh-ed25519 AAAAkey bench\n")
    assert line == (
        'command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"",no-port-forwarding,'
        "no-X11-forwarding,no-agent-forwarding,no-pty ssh-ed25519 AAAAkey bench\n"
    )


def test_nonLoopbackListenersFindsAWildcardBind() -> None:
    """A listener on 0.0.0.0 or :: on a benchmark port is reported; loopback ones are not."""
    from bench.doors import nonLoopbackListeners

    header = "  sl  local_address rem_address   st\n"
    tables = {
        "tcp": header
        + "0: 0100007F:1F90 00000000:0000 0A\n"
        + "1: 00000000:1F91 00000000:0000 0A\n"
        + "2: 00000000:1F92 00000000:0000 01\n",
        "tcp6": header
        + "0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A\n"
        + "1: 00000000000000000000000000000000:1F92 00000000000000000000000000000000:0000 0A\n",
    }
    assert nonLoopbackListeners({0x1F90, 0x1F91, 0x1F92}, tables) == [
        "tcp 00000000:1F91",
        "tcp6 00000000000000000000000000000000:1F92",
    ]
