"""
The pack cache: identical fetches share one C{git upload-pack}.

A fetch that completes its negotiation (the request says C{done}) is answered
by git with bytes that depend only on the repository's state, the server's
git and config, the protocol version and the request itself. Those are
hashed into a key (L{PackCache.keyFor}); requests with the same key share
one answer:

  - B{lead}: nobody is producing it; this request starts git, whose output
    goes to a L{Flight}: a temporary file in the cache directory, from which
    every reader (this request's client first) is served at its own pace.
    git's pipe is spliced into the file (L{gitserve.core.pipefile}) and
    readers send from there; where git's output passes through the daemon
    (its first bytes, C{--no-splice}), readers that keep up are written
    straight from memory. A stalled reader holds back nobody and costs no
    memory beyond one chunk.
  - B{follow}: the same key is in flight; join it from byte 0.
  - B{hit}: the answer is kept in the cache directory; serve it (the HTTP
    door sends it with C{sendfile(2)} where it can, see
    L{gitserve.http.packhit}).
  - B{miss}: the cache is on but cannot serve this request (negotiation not
    complete, an input that cannot be keyed, an unusable cache directory):
    git runs for it alone, as without the cache.

When it pays (Gitaly's lesson: keeping every pack costs as much disk I/O as
it saves): a flight's file is renamed into C{entries/} only if git succeeded,
the key's inputs did not change while it ran, and the key was asked for
before or followers joined; otherwise it is unlinked (usually before the
kernel ever writes it back). Each entry starts with a header holding its
length, its CRC-32 and its key, checked before an entry is served the first
time (and again whenever its file's stamp changes): a truncated or altered
entry is dropped, never served. Temporary files are named by the daemon's
pid; a restart removes those of daemons that are gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from itertools import count
from pathlib import Path
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IProducer, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from gitserve.core.advertisement import RACY_SECONDS, CapabilityCache
from gitserve.core.errors import Refusal
from gitserve.core.filestamps import Stamp, stampOf
from gitserve.core.operations import GitCore, GitOperation
from gitserve.core.pipefile import PipeToFile
from gitserve.core.pktline import DELIM_PKT, FLUSH_PKT, ProtocolError, parsePktLines
from gitserve.core.policy import Service
from gitserve.core.process import GitOutcome, GitProcessProtocol
from gitserve.interfaces import IGitOutput, IOutputPipe, IPipeOutput, IRelayReactor
from gitserve.twistedinternals import enlargeOutputPipe

log = Logger()

# An entry: MAGIC, the answer's length, its CRC-32, the key's digest, padding.
MAGIC = b"GSPACK1\n"
HEADER = struct.Struct(">8sQI32s")
HEADER_SIZE = 64

# Read from a flight's file or an entry this much at a time, at most
# CHUNKS_PER_TURN times per reactor turn per reader.
CHUNK = 64 * 1024
CHUNKS_PER_TURN = 16

# What git's stdout pipe holds for a flight, and how long the daemon lets it
# fill after emptying it (see enlargeOutputPipe): git writes a pack at 100 to
# 300 MB/s, so 2 ms of it fits in the pipe and git seldom waits.
FLIGHT_PIPE_SIZE = 1024 * 1024
FLIGHT_READ_DELAY = 0.002

# Keys remembered as asked for once (an entry is kept on the second ask).
MAX_SEEN = 65536

# The key's repository files and directories, relative to the git directory:
# everything upload-pack reads to decide what a want may name and which
# objects to send. Loose refs, packs and loose objects are listed below.
STATE_FILES = (
    "packed-refs",
    "shallow",
    "info/grafts",
    "commondir",
    "objects/info/alternates",
    "objects/info/commit-graph",
    "objects/pack/multi-pack-index",
)
# Directories whose whole tree is stamped (names and stamps of every entry).
STATE_TREES = ("refs", "reftable")
# Directories whose entries are stamped (one level).
STATE_LISTINGS = ("objects", "objects/pack", "objects/info", "objects/info/commit-graphs")


class IPackReader(Interface):
    """
    One client's reader of a shared answer (a L{Flight} or a kept entry),
    as the flight drives it. L{CacheReader} writes into any L{IGitOutput};
    the HTTP door has one that sends with sendfile(2).
    """

    done: Deferred[GitOutcome] = Attribute("Fires with how it ended, as a git child's outcome.")
    offset: int = Attribute("Bytes of the answer this reader has taken so far.")
    paused: bool = Attribute("Whether its client cannot take more now.")

    def start() -> None:
        """Attach to the source and begin."""

    def terminate() -> None:
        """End it (a shutdown), as a git child is ended."""

    def dataAvailable(data: bytes | None, at: int) -> None:
        """
        git wrote C{data} at offset C{at} of the answer; L{None} when the
        bytes went into the source's file without the daemon holding them
        (L{gitserve.core.pipefile}): they are read from there.
        """

    def sourceFinished() -> None:
        """git ended: the source's size and outcome are final."""

    def fail(failure: Failure) -> None:
        """End without the rest of the answer."""


# (source, operation, bytesIn, quiet) -> an unstarted reader.
ReaderFactory = Callable[["Source", GitOperation, int, bool], IPackReader]


class CacheUnusable(Exception):
    """The cache directory cannot be written (missing, read-only, full)."""


def negotiationComplete(body: bytes, version: int) -> bool:
    """
    Whether C{body} is a fetch request that ends the negotiation, so that
    git answers with a pack decided by the request alone: C{done} in v0/v1,
    C{command=fetch} with C{done} in v2. Anything else (ACK/NAK rounds, the
    first round of a shallow fetch, C{ls-refs}) is cheap and not cached.
    """
    try:
        packets = parsePktLines(body)
    except ProtocolError:
        return False
    # A sender may end a packet with LF or not (git's own v2 requests do not).
    lines = [p.rstrip(b"\n") for p in packets if p is not FLUSH_PKT and p is not DELIM_PKT]
    if version >= 2:
        return bool(lines) and lines[0] == b"command=fetch" and b"done" in lines
    return b"done" in lines and any(p.startswith(b"want ") for p in lines)


def _treeStamps(base: str, relative: str, into: list[tuple[str, Stamp]]) -> None:
    """Stamp C{relative} and, if a directory, everything under it."""
    path = os.path.join(base, relative)
    into.append((relative, stampOf(path)))
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except (NotADirectoryError, FileNotFoundError):
        return
    for entry in entries:
        name = f"{relative}/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            _treeStamps(base, name, into)
        else:
            into.append((name, stampOf(entry.path)))


def repositoryState(gitDir: str) -> list[tuple[str, Stamp]]:
    """
    The stamps of everything in a git directory that decides what a fetch
    sends: refs (loose, packed, reftable), shallow and grafts, alternates,
    the pack listing and every loose-object directory.
    """
    stamps = [(name, stampOf(os.path.join(gitDir, name))) for name in STATE_FILES]
    for tree in STATE_TREES:
        _treeStamps(gitDir, tree, stamps)
    for listing in STATE_LISTINGS:
        path = os.path.join(gitDir, listing)
        stamps.append((listing, stampOf(path)))
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except (NotADirectoryError, FileNotFoundError):
            continue
        stamps.extend((f"{listing}/{e.name}", stampOf(e.path)) for e in entries)
    return stamps


@dataclass(frozen=True)
class CacheKey:
    """
    A request's key, and the newest modification time among its inputs
    (an answer built from a file changed within L{RACY_SECONDS} is served
    but not kept: its stamp may not show a second change).
    """

    digest: str
    newest: float


@dataclass
class CacheEntry:
    """A kept, verified answer, open: C{length} bytes at L{HEADER_SIZE} of C{fd}."""

    key: str
    fd: int
    length: int

    def close(self) -> None:
        """Give the descriptor back (the entry may be evicted meanwhile)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Lookup:
    """What the cache knows of a request before it is served."""

    operation: GitOperation
    body: bytes
    key: CacheKey | None
    entry: CacheEntry | None = None
    # Whether the request asks for a pack at all: an ls-refs or a
    # negotiation round is not the cache's business (no cache= field).
    fetchesPack: bool = True


class PackCache:
    """
    Kept and in-flight upload-pack answers, by key, in one directory owned
    by one daemon.

    @ivar directory: holds C{entries/} (kept answers, named by key) and
        C{tmp/} (flights, named by key and the daemon's pid).
    @ivar maxSize: the most bytes C{entries/} may hold; the least recently
        used entries go first.
    @ivar inputs: the daemon-wide inputs of git's answers (git binary,
        environment, config closure, git directory identity, HEAD), shared
        with the advertisement cache.
    @ivar runBlocking: runs an entry's verification off the reactor thread.
    @ivar pipeReactor: watches git's pipe while a flight splices it into
        its file (L{gitserve.core.pipefile}); L{None} reads git's output
        into the daemon instead.
    """

    def __init__(
        self,
        directory: Path,
        maxSize: int,
        inputs: CapabilityCache,
        clock: IReactorTime,
        runBlocking: Callable[[Callable[[], Any]], Deferred[Any]] = maybeDeferred,
        wallClock: Callable[[], float] = time.time,
        pipeReactor: IRelayReactor | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.pipeReactor = pipeReactor
        self.entriesDir = self.directory / "entries"
        self.tmpDir = self.directory / "tmp"
        self.maxSize = maxSize
        self.inputs = inputs
        self.clock = clock
        self.runBlocking = runBlocking
        self.wallClock = wallClock
        self.flights: dict[str, Flight] = {}
        self.entries: OrderedDict[str, int] = OrderedDict()
        self.size = 0
        self.counts = {"hit": 0, "follow": 0, "lead": 0, "miss": 0}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._verified: dict[str, Stamp] = {}
        self._names = count()
        self._unusableSaid = False

    @property
    def hits(self) -> int:
        """Fetches answered without a pack-objects of their own (kept or joined)."""
        return self.counts["hit"] + self.counts["follow"]

    @property
    def misses(self) -> int:
        """Fetches that ran git (as the lead of a flight, or uncached)."""
        return self.counts["lead"] + self.counts["miss"]

    # The directory ---------------------------------------------------------

    def open(self) -> None:
        """
        Create the directory, remove the temporary files of daemons that
        are gone (a killed daemon's half-written entries) and index what is
        kept, oldest use first. A directory that cannot be used is said once;
        fetches then run uncached.
        """
        try:
            self.entriesDir.mkdir(parents=True, exist_ok=True)
            self.tmpDir.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(self.tmpDir):
                owner = entry.name.rsplit(".", 2)[-2] if entry.name.count(".") >= 2 else ""
                if not (owner.isdigit() and _alive(int(owner)) and int(owner) != os.getpid()):
                    os.unlink(entry.path)
            found = []
            for entry in os.scandir(self.entriesDir):
                st = entry.stat(follow_symlinks=False)
                if _isDigest(entry.name) and st.st_size >= HEADER_SIZE:
                    found.append((st.st_mtime, entry.name, st.st_size))
                else:
                    os.unlink(entry.path)
        except OSError as e:
            self._unusable(e)
            return
        for _, name, size in sorted(found):
            self.entries[name] = size
            self.size += size
        self._evict()

    def _unusable(self, error: BaseException) -> None:
        if not self._unusableSaid:
            self._unusableSaid = True
            log.error(
                "pack cache directory {directory} cannot be used ({error}): fetches run uncached",
                directory=str(self.directory),
                error=str(error),
            )

    # Keys --------------------------------------------------------------------

    def keyFor(self, operation: GitOperation, body: bytes) -> CacheKey | None:
        """
        The key of a fetch, or L{None} when it must not be cached: not a
        complete negotiation, or an input the stamps cannot stand for (see
        L{CapabilityCache.key}).
        """
        if operation.service is not Service.UPLOAD_PACK or operation.advertise:
            return None
        if not negotiationComplete(body, operation.protocolVersion):
            return None
        daemonInputs = self.inputs.key(operation.repository)
        if daemonInputs is None:
            return None
        gitDir = str(operation.repository.gitDir)
        try:
            state = repositoryState(gitDir)
        except OSError:
            return None
        configFiles: tuple[tuple[str, Stamp], ...] = daemonInputs[2]  # type: ignore[assignment]
        newest = max(
            (stamp[3] / 1e9 for _, stamp in (*configFiles, *state) if stamp is not None),
            default=0.0,
        )
        digest = hashlib.sha256()
        digest.update(repr((daemonInputs, gitDir, state, operation.caller.protocol)).encode())
        digest.update(b"\0")
        digest.update(body)
        return CacheKey(digest.hexdigest(), newest)

    # Looking up --------------------------------------------------------------

    def lookup(self, operation: GitOperation, body: bytes) -> Deferred[Lookup]:
        """
        The key of a request and, when an entry is kept for it, that entry,
        open and verified (a bad one is removed, and the request misses).
        """
        key = self.keyFor(operation, body)
        found = Lookup(operation, body, key)
        if key is None:
            found.fetchesPack = negotiationComplete(body, operation.protocolVersion)
        if key is None or key.digest in self.flights or key.digest not in self.entries:
            return succeed(found)
        path = self.entriesDir / key.digest
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._forget(key.digest)
            return succeed(found)
        stamp = _fstamp(fd)
        if self._verified.get(key.digest) == stamp:
            length = _readHeader(fd, key.digest)
            if length is not None:
                found.entry = CacheEntry(key.digest, fd, length)
                return succeed(found)

        def verified(length: int | None) -> Lookup:
            if length is None:
                os.close(fd)
                log.warn(
                    "pack cache entry {name} is damaged (length or checksum): removed",
                    name=key.digest,
                )
                self._remove(key.digest)
            else:
                self._verified[key.digest] = stamp
                found.entry = CacheEntry(key.digest, fd, length)
            return found

        return self.runBlocking(lambda: verifyEntry(fd, key.digest)).addCallback(verified)

    # Serving -----------------------------------------------------------------

    def start(
        self,
        core: GitCore,
        lookup: Lookup,
        output: IGitOutput,
        makeReader: ReaderFactory | None = None,
    ) -> Deferred[GitProcessProtocol | IPackReader]:
        """
        Answer C{lookup}'s request into C{output}: from its entry (hit), by
        joining its flight (follow), by starting one (lead), or without the
        cache (miss).

        @param makeReader: builds the reader of a hit, follow or lead when
            the front door has a better way than writing into C{output}
            (sendfile(2) on a plain socket, L{gitserve.http.packhit});
            by default a L{CacheReader} writing into C{output}.
        @return: fires with the job whose C{done} fires with the
            L{GitOutcome} the front door answers from.
        """
        operation, key = lookup.operation, lookup.key
        if key is not None:
            flight = self.flights.get(key.digest)
            if flight is not None:
                if lookup.entry is not None:
                    lookup.entry.close()
                return succeed(
                    self._read(flight, operation, "follow", output, len(lookup.body), makeReader)
                )
            if lookup.entry is not None:
                self.touch(lookup.entry.key)
                return succeed(
                    self._read(
                        EntrySource(lookup.entry),
                        operation,
                        "hit",
                        output,
                        len(lookup.body),
                        makeReader,
                    )
                )
            try:
                flight = self._startFlight(core, lookup)
            except CacheUnusable:
                pass
            else:
                return succeed(
                    self._read(
                        flight, operation, "lead", output, len(lookup.body), makeReader, quiet=True
                    )
                )
        return self._miss(core, operation, lookup.body, output, lookup.fetchesPack)

    def _miss(
        self,
        core: GitCore,
        operation: GitOperation,
        body: bytes,
        output: IGitOutput,
        fetchesPack: bool,
    ) -> Deferred[GitProcessProtocol | IPackReader]:
        if fetchesPack:
            self.counts["miss"] += 1
            operation = replace(operation, cache="miss")

        def feed(protocol: GitProcessProtocol) -> GitProcessProtocol | IPackReader:
            protocol.feedStdin(body)
            return protocol

        return core.start(operation, output).addCallback(feed)

    def _read(
        self,
        source: Source,
        operation: GitOperation,
        kind: str,
        output: IGitOutput,
        bytesIn: int,
        makeReader: ReaderFactory | None,
        quiet: bool = False,
    ) -> IPackReader:
        self.counts[kind] += 1
        operation = replace(operation, cache=kind)
        reader: IPackReader
        if makeReader is not None:
            reader = makeReader(source, operation, bytesIn, quiet)
        else:
            reader = CacheReader(source, output, self.clock, operation, quiet, bytesIn)
        reader.start()
        return reader

    def _startFlight(self, core: GitCore, lookup: Lookup) -> Flight:
        assert lookup.key is not None
        digest = lookup.key.digest
        path = self.tmpDir / f"{digest}.{os.getpid()}.{next(self._names)}"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self._unusable(e)
            raise CacheUnusable(str(e)) from e
        self._unusableSaid = False
        flight = Flight(self, lookup, fd, path)
        self.flights[digest] = flight
        seenBefore = digest in self._seen
        self._seen[digest] = None
        self._seen.move_to_end(digest)
        while len(self._seen) > MAX_SEEN:
            self._seen.popitem(last=False)
        flight.seenBefore = seenBefore
        flight.run(core)
        return flight

    # Keeping and evicting ----------------------------------------------------

    def keep(self, flight: Flight) -> Deferred[bool]:
        """
        Rename a finished flight's file into C{entries/} if it pays and is
        still right (see the module docstring).

        The checksum is computed here, off the reactor thread, rather than
        as git writes: most flights are a key's first ask and are never
        kept, and a reader's client should not wait on it.

        @return: fires with whether it was kept (if not, the caller removes
            the file).
        """
        key = flight.lookup.key
        assert key is not None
        if not (flight.seenBefore or flight.followed):
            return succeed(False)
        if HEADER_SIZE + flight.size > self.maxSize:
            return succeed(False)
        now = self.keyFor(flight.lookup.operation, flight.lookup.body)
        if now is None or now.digest != key.digest or key.newest > self.wallClock() - RACY_SECONDS:
            return succeed(False)
        # The flight closes its descriptor when its last reader leaves,
        # which may be while this one is still being read.
        fd = os.dup(flight.fd)
        size = flight.size

        def seal() -> None:
            try:
                crc = crcOf(fd, size)
                if crc is None:
                    raise OSError(errno.EIO, "pack cache file shorter than written")
                os.pwrite(fd, _header(key.digest, size, crc), 0)
            finally:
                os.close(fd)

        def sealed(_: None) -> bool:
            path = self.entriesDir / key.digest
            os.rename(flight.path, path)
            self._forget(key.digest)
            self.entries[key.digest] = HEADER_SIZE + size
            self.size += HEADER_SIZE + size
            self._verified[key.digest] = stampOf(str(path))
            self._evict()
            return True

        def failed(failure: Failure) -> bool:
            self._unusable(failure.value)
            return False

        return self.runBlocking(seal).addCallback(sealed).addErrback(failed)

    def touch(self, digest: str) -> None:
        """An entry was served: it is now the most recently used."""
        if digest in self.entries:
            self.entries.move_to_end(digest)
            try:
                os.utime(self.entriesDir / digest)
                if digest in self._verified:
                    # Its times changed by our hand, not its bytes: still verified.
                    self._verified[digest] = stampOf(str(self.entriesDir / digest))
            except OSError:
                pass

    def _evict(self) -> None:
        while self.size > self.maxSize and self.entries:
            digest = next(iter(self.entries))
            self._remove(digest)

    def _remove(self, digest: str) -> None:
        self._forget(digest)
        try:
            os.unlink(self.entriesDir / digest)
        except OSError:
            pass

    def _forget(self, digest: str) -> None:
        self.size -= self.entries.pop(digest, 0)
        self._verified.pop(digest, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _isDigest(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def _fstamp(fd: int) -> Stamp:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_uid)


def _header(digest: str, length: int, crc: int) -> bytes:
    return HEADER.pack(MAGIC, length, crc, bytes.fromhex(digest)).ljust(HEADER_SIZE, b"\0")


def _readHeader(fd: int, digest: str) -> int | None:
    """The answer's length if C{fd} holds an entry of C{digest} of the right size."""
    header = os.pread(fd, HEADER_SIZE, 0)
    if len(header) != HEADER_SIZE:
        return None
    magic, length, _, keyDigest = HEADER.unpack_from(header)
    if magic != MAGIC or keyDigest != bytes.fromhex(digest):
        return None
    if os.fstat(fd).st_size != HEADER_SIZE + length:
        return None
    return int(length)


def crcOf(fd: int, length: int) -> int | None:
    """
    The CRC-32 of the C{length} bytes of an answer at L{HEADER_SIZE} of
    C{fd}, or L{None} if the file is shorter. Blocking; run off the reactor
    thread.
    """
    computed, offset, end = 0, HEADER_SIZE, HEADER_SIZE + length
    while offset < end:
        data = os.pread(fd, min(1024 * 1024, end - offset), offset)
        if not data:
            return None
        computed = zlib.crc32(data, computed)
        offset += len(data)
    return computed


def verifyEntry(fd: int, digest: str) -> int | None:
    """
    Read a whole entry and check it against its header: key, length and
    CRC-32. Blocking; run off the reactor thread.

    @return: the answer's length, or L{None} if the entry must not be served.
    """
    length = _readHeader(fd, digest)
    if length is None:
        return None
    crc = HEADER.unpack_from(os.pread(fd, HEADER_SIZE, 0))[2]
    return length if crcOf(fd, length) == crc else None


class Source:
    """What a L{CacheReader} reads: bytes at L{HEADER_SIZE} of a file, maybe still growing."""

    fd: int
    size: int
    finished: bool
    outcome: GitOutcome | None
    broken: bool = False

    def attach(self, reader: IPackReader) -> None:
        """C{reader} reads from here now."""

    def detach(self, reader: IPackReader) -> None:
        """C{reader} is done (or its client left)."""


class EntrySource(Source):
    """A kept entry: complete, and git succeeded when it was made."""

    def __init__(self, entry: CacheEntry) -> None:
        self.entry = entry
        self.fd = entry.fd
        self.size = entry.length
        self.finished = True
        self.outcome = GitOutcome(0, entry.length, False, None, "")

    def detach(self, reader: IPackReader) -> None:
        self.entry.close()


@implementer(IPipeOutput)
class Flight(Source):
    """
    One git child's answer, shared: git writes into a temporary file (never
    paused by a reader), and every reader reads it at its own pace.

    @ivar followed: whether a second reader joined (then the answer is kept
        even on its key's first ask).
    """

    def __init__(self, cache: PackCache, lookup: Lookup, fd: int, path: Path) -> None:
        self.cache = cache
        self.lookup = lookup
        self.fd = fd
        self.path = path
        self.size = 0
        self.finished = False
        self.outcome: GitOutcome | None = None
        self.readers: list[IPackReader] = []
        self.followed = False
        self.seenBefore = False
        self.broken = False
        self._producer: IPushProducer | None = None
        self._started: Deferred[GitProcessProtocol] | None = None
        self._closed = False

    def run(self, core: GitCore) -> None:
        """Start git (once a job slot is free) with the request as its stdin."""
        operation = replace(self.lookup.operation, cache="lead")
        self._started = core.start(operation, self)

        def feed(protocol: GitProcessProtocol) -> None:
            self._started = None
            # Nothing here waits on a reader: git's output is taken in
            # batches of up to a megabyte, far fewer wakeups for git, the
            # daemon and every reader than a 64 KiB pipe read as it fills.
            enlargeOutputPipe(protocol.transport, FLIGHT_PIPE_SIZE, FLIGHT_READ_DELAY)
            protocol.feedStdin(self.lookup.body)
            protocol.done.addCallback(self._gitEnded)

        def failed(failure: Failure) -> None:
            self._started = None
            if failure.check(CancelledError):
                failure = Failure(ConnectionAbortedError("every reader left"))
            elif not failure.check(Refusal):
                log.failure("starting git for a pack cache flight failed", failure)
            self._end(GitOutcome(None, 0, False, failure, "git could not be started"))

        self._started.addCallbacks(feed, failed)

    # IGitOutput, for git ---------------------------------------------------

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._producer = producer  # type: ignore[assignment]

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if not self.broken:
            try:
                _writeAll(self.fd, data, HEADER_SIZE + self.size)
            except OSError as e:
                self._spillFailed(e)
        self._grew(len(data), data)

    def relayPipe(self, pipe: IOutputPipe) -> IPushProducer | None:
        """
        From git's first bytes on, its pipe goes into the file with
        splice(2), unless the daemon runs with C{--no-splice} or the file
        already failed.
        """
        if self.cache.pipeReactor is None or self.broken:
            return None
        return PipeToFile(
            pipe,
            self.fd,
            HEADER_SIZE + self.size,
            self.cache.pipeReactor,
            FLIGHT_PIPE_SIZE,
            FLIGHT_READ_DELAY,
            grew=self._grew,
            failed=self._spillFailed,
        )

    def _grew(self, length: int, data: bytes | None = None) -> None:
        """git's answer is C{length} bytes longer (C{data}, where the daemon holds them)."""
        at = self.size
        self.size += length
        for reader in list(self.readers):
            reader.dataAvailable(data, at)

    def _spillFailed(self, error: OSError) -> None:
        """
        The file cannot grow (a full disk): nobody new joins, readers that
        are behind cannot be served (their clients see a broken transfer and
        retry, uncached), and git is paced by the readers still keeping up.
        """
        self.broken = True
        self.cache._unusable(error)
        if self.cache.flights.get(self.lookup.key.digest) is self:  # type: ignore[union-attr]
            del self.cache.flights[self.lookup.key.digest]  # type: ignore[union-attr]
        failure = Failure(error)
        for reader in list(self.readers):
            if reader.offset < self.size:
                reader.fail(failure)
        self.pace()

    def pace(self) -> None:
        """Without a file to fall back on, git goes as fast as its slowest live reader."""
        if not self.broken or self._producer is None or self.finished:
            return
        if any(reader.paused for reader in self.readers):
            self._producer.pauseProducing()
        else:
            self._producer.resumeProducing()

    # Readers -----------------------------------------------------------------

    def attach(self, reader: IPackReader) -> None:
        if self.readers or self.outcome is not None:
            self.followed = True
        self.readers.append(reader)

    def detach(self, reader: IPackReader) -> None:
        if reader in self.readers:
            self.readers.remove(reader)
        if self.readers:
            self.pace()
            return
        if self.finished:
            self._close()
        else:
            # Nobody reads any more: stop git, keep nothing.
            log.info("pack cache: every reader of a flight left; ending git")
            self._abandon()

    def _abandon(self) -> None:
        if self.cache.flights.get(self.lookup.key.digest) is self:  # type: ignore[union-attr]
            del self.cache.flights[self.lookup.key.digest]  # type: ignore[union-attr]
        if self._started is not None:
            self._started.cancel()
        elif self._producer is not None:
            self._producer.stopProducing()

    # The end -----------------------------------------------------------------

    def _gitEnded(self, outcome: GitOutcome) -> None:
        self._end(outcome)

    def _end(self, outcome: GitOutcome) -> None:
        self.finished = True
        self.outcome = outcome
        if self.cache.flights.get(self.lookup.key.digest) is self:  # type: ignore[union-attr]
            del self.cache.flights[self.lookup.key.digest]  # type: ignore[union-attr]
        kept = self.cache.keep(self) if outcome.succeeded and not self.broken else succeed(False)
        kept.addCallback(self._settled)
        for reader in list(self.readers):
            reader.sourceFinished()
        if not self.readers:
            self._close()

    def _settled(self, kept: bool) -> None:
        """Kept or not: a file not kept is removed (usually before the kernel wrote it)."""
        if kept:
            return
        try:
            os.unlink(self.path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                log.warn("pack cache: cannot remove {path}: {e}", path=str(self.path), e=e)

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            # The last close of a file that was not kept frees its pages:
            # milliseconds for a pack of tens of megabytes, which neither
            # the reactor nor the last reader's client (its answer's end is
            # written on the next turn) need wait for.
            self.cache.runBlocking(partial(os.close, self.fd)).addErrback(
                lambda failure: log.failure("pack cache: closing a flight's file", failure)
            )


def _writeAll(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, "no space left")
        view = view[written:]
        offset += written


@implementer(IPushProducer, IPackReader)
class CacheReader:
    """
    One client's copy of a shared answer, written into its L{IGitOutput} at
    the pace the output allows: straight from git's output while it keeps
    up, from the file when it falls behind. Reports how it ended through
    L{done}, as a git child would, so the front door answers the same way.
    """

    def __init__(
        self,
        source: Source,
        output: IGitOutput,
        clock: IReactorTime,
        operation: GitOperation,
        quiet: bool = False,
        bytesIn: int = 0,
    ) -> None:
        self.source = source
        self.bytesIn = bytesIn
        self.output = output
        self.clock = clock
        self.operation = operation
        self.quiet = quiet
        self.offset = 0
        self.paused = False
        self.done: Deferred[GitOutcome] = Deferred()
        self.began = clock.seconds()
        self._call: IDelayedCall | None = None
        self._ended = False

    def start(self) -> None:
        """Join the source and begin writing."""
        self.source.attach(self)
        self.output.registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if not self._ended and not self.paused and self._call is None:
            self._call = self.clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        for _ in range(CHUNKS_PER_TURN):
            if self._ended or self.paused:
                return
            available = self.source.size - self.offset
            if available <= 0:
                if self.source.finished:
                    self._finish()
                # Otherwise caught up: dataAvailable() goes on.
                return
            data = os.pread(self.source.fd, min(CHUNK, available), HEADER_SIZE + self.offset)
            if not data:
                self.fail(Failure(OSError(errno.EIO, "pack cache file shorter than written")))
                return
            self.offset += len(data)
            self.output.write(data)
        self._schedule()

    def dataAvailable(self, data: bytes | None, at: int) -> None:
        """git wrote C{data} at C{at}: send it now if this reader is caught up."""
        if self._ended:
            return
        if (
            data is not None
            and self.offset == at
            and (self.source.broken or (not self.paused and self._call is None))
        ):
            # Without a file behind it (broken), a reader that is caught up
            # takes this chunk even when paused: git is paused right after
            # it (Flight.pace), so that is one chunk more, once.
            self.offset += len(data)
            self.output.write(data)
        else:
            self._schedule()

    def sourceFinished(self) -> None:
        """git ended: finish once everything is sent."""
        self._schedule()

    # IPushProducer -------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if isinstance(self.source, Flight):
            self.source.pace()

    def resumeProducing(self) -> None:
        self.paused = False
        if isinstance(self.source, Flight):
            self.source.pace()
        self._schedule()

    def stopProducing(self) -> None:
        """The client left."""
        self._end(None, Failure(ConnectionAbortedError("the client went away")), unregister=False)

    def terminate(self) -> None:
        """IGitJob: a shutdown ends this reader as it would end a git child."""
        self.fail(Failure(ConnectionAbortedError("shutting down")))

    # The end -------------------------------------------------------------------

    def fail(self, failure: Failure) -> None:
        """End without the rest of the answer (the front door aborts)."""
        self._end(None, failure)

    def _finish(self) -> None:
        outcome = self.source.outcome
        assert outcome is not None
        self._end(outcome, None)

    def _end(
        self, outcome: GitOutcome | None, failure: Failure | None, unregister: bool = True
    ) -> None:
        if self._ended:
            return
        self._ended = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        if outcome is None:
            outcome = GitOutcome(None, self.offset, False, failure, "the shared answer failed")
        else:
            outcome = replace(outcome, bytesOut=self.offset)
        self.source.detach(self)
        if unregister:
            self.output.unregisterProducer()
        if not self.quiet:
            logServed(self.operation, outcome, self.clock.seconds() - self.began, self.bytesIn)
        self.done.callback(outcome)


def logServed(operation: GitOperation, outcome: GitOutcome, duration: float, bytesIn: int) -> None:
    """
    The per-operation log line of a fetch answered without a git child of
    its own, shaped as L{GitProcessProtocol}'s line for one with a child.
    """
    log.info(
        "git {description} exit={exitCode} bytes_in={bytesIn} bytes_out={bytesOut} "
        "duration={duration:.3f}s{logSuffix}",
        **operation.logFields(),
        logSuffix=operation.describeTransport(),
        description=operation.describe(),
        exitCode=outcome.exitCode,
        bytesIn=bytesIn,
        bytesOut=outcome.bytesOut,
        duration=duration,
    )
