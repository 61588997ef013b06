"""Deterministic benchmark corpora, generated once and cached under C{bench/.work/}.

Four bare repositories live side by side in one serving root, so that gitserve
and git http-backend serve the very same files from the same page cache:

  - C{history.git}: a realistic history (thousands of commits editing and adding
    text files in a directory tree, release branches, annotated tags), repacked
    the way a server keeps it (one pack, bitmaps);
  - C{blobs.git}: a few commits holding large incompressible blobs (>= 500 MB);
  - C{refs.git}: a small history advertised under 50,000 refs (packed-refs);
  - C{tiny.git}: one commit, one file.

Everything is written through C{git fast-import} from a seeded PRNG with fixed
dates, so two machines generate the same object ids; running thousands of git
commands instead would take most of the benchmark's time budget.

Run C{python bench/corpus.py [--quick]} to build (or just show) the corpora.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

WORK_DIR = Path(__file__).resolve().parent / ".work"

# Bump when a generator changes, so stale caches are rebuilt rather than trusted.
GENERATOR_VERSION = 2

_EPOCH = 1_600_000_000
_IDENTITY = b"Bench Author <bench@example.invalid>"


@dataclass(frozen=True)
class CorpusSizes:
    """
    How big each generated repository is.

    @ivar historyCommits: commits on the main line of C{history.git}.
    @ivar historyInitialFiles: text files in C{history.git}'s first commit.
    @ivar blobCount: number of incompressible blobs in C{blobs.git}.
    @ivar blobBytes: size of each of those blobs.
    @ivar refCount: number of refs advertised by C{refs.git}.
    """

    historyCommits: int
    historyInitialFiles: int
    blobCount: int
    blobBytes: int
    refCount: int

    @property
    def name(self) -> str:
        """A directory name that changes whenever a size or a generator does."""
        return (
            f"v{GENERATOR_VERSION}-h{self.historyCommits}x{self.historyInitialFiles}"
            f"-b{self.blobCount}x{self.blobBytes}-r{self.refCount}"
        )


# The floor: >= 50k objects and a >= 20 MB pack, >= 500 MB of
# incompressible blobs, 50k refs.
FULL = CorpusSizes(
    historyCommits=5000,
    historyInitialFiles=1000,
    blobCount=16,
    blobBytes=32 * 1024 * 1024,
    refCount=50_000,
)

# Small enough to generate and benchmark in a few minutes, same shapes.
QUICK = CorpusSizes(
    historyCommits=600,
    historyInitialFiles=300,
    blobCount=4,
    blobBytes=16 * 1024 * 1024,
    refCount=5_000,
)


@dataclass(frozen=True)
class Corpus:
    """
    The generated repositories, all directly under one serving root.

    @ivar root: the directory both servers serve (C{--root}, C{GIT_PROJECT_ROOT}).
    @ivar sizes: the sizes it was generated with.
    """

    root: Path
    sizes: CorpusSizes

    @property
    def history(self) -> Path:
        """The realistic history."""
        return self.root / "history.git"

    @property
    def blobs(self) -> Path:
        """The repository of large incompressible blobs."""
        return self.root / "blobs.git"

    @property
    def refs(self) -> Path:
        """The repository with C{sizes.refCount} refs."""
        return self.root / "refs.git"

    @property
    def tiny(self) -> Path:
        """One commit, one file."""
        return self.root / "tiny.git"

    def bigPack(self) -> Path:
        """The one pack file of L{blobs}, the dumb-download payload."""
        (pack,) = sorted((self.blobs / "objects" / "pack").glob("pack-*.pack"))
        return pack


def gitEnvironment(home: Path) -> dict[str, str]:
    """
    An environment for git commands isolated from the machine's configuration.

    @param home: a private directory used as C{HOME}; a C{.gitconfig} there is
        the only configuration git reads besides the repository's own.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") and key not in ("HOME", "XDG_CONFIG_HOME")
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(home / ".gitconfig"),
        GIT_TERMINAL_PROMPT="0",
        LC_ALL="C",
    )
    # The Apache reference's push targets belong to its unprivileged user;
    # the benchmark (often root) inspects them afterwards.
    (home / ".gitconfig").write_text("[safe]\n\tdirectory = *\n")
    return env


class FastImportStream:
    """
    Write a C{git fast-import} stream into a new bare repository.

    fast-import deltas each blob against the previous one at the same path and
    writes a pack directly, which makes it two orders of magnitude faster than
    committing through porcelain.
    """

    def __init__(self, repo: Path, env: dict[str, str], *configs: str) -> None:
        subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True, env=env)
        # Without this, fast-import explodes a small import into loose objects.
        args = ["git", "-c", "fastimport.unpackLimit=0"]
        for config in configs:
            args += ["-c", config]
        args += ["-C", str(repo), "fast-import", "--quiet", "--done"]
        self._marks = repo / "fast-import.marks"
        args.append(f"--export-marks={self._marks}")
        self._process = subprocess.Popen(args, stdin=subprocess.PIPE, env=env)
        assert self._process.stdin is not None
        self._out = self._process.stdin
        self._nextMark = 1

    def blob(self, data: bytes) -> int:
        """Write a blob and return its mark."""
        mark = self._takeMark()
        self._out.write(b"blob\nmark :%d\ndata %d\n" % (mark, len(data)))
        self._out.write(data)
        self._out.write(b"\n")
        return mark

    def commit(
        self,
        ref: bytes,
        when: int,
        message: bytes,
        changes: list[tuple[bytes, int | None]],
        parent: int | None = None,
        merge: int | None = None,
    ) -> int:
        """
        Write a commit and return its mark.

        @param changes: C{(path, blob mark)} to write, or C{(path, None)} to delete.
        @param parent: the mark of the first parent; without it the commit
            continues C{ref} as fast-import left it.
        @param merge: the mark of a second parent.
        """
        mark = self._takeMark()
        out = self._out
        out.write(b"commit %s\nmark :%d\n" % (ref, mark))
        out.write(b"author %s %d +0000\n" % (_IDENTITY, when))
        out.write(b"committer %s %d +0000\n" % (_IDENTITY, when))
        out.write(b"data %d\n%s\n" % (len(message), message))
        if parent is not None:
            out.write(b"from :%d\n" % (parent,))
        if merge is not None:
            out.write(b"merge :%d\n" % (merge,))
        for path, blobMark in changes:
            if blobMark is None:
                out.write(b"D %s\n" % (path,))
            else:
                out.write(b"M 100644 :%d %s\n" % (blobMark, path))
        out.write(b"\n")
        return mark

    def tag(self, name: bytes, target: int, when: int, message: bytes) -> None:
        """Write an annotated tag pointing at the commit with mark C{target}."""
        out = self._out
        out.write(b"tag %s\nfrom :%d\n" % (name, target))
        out.write(b"tagger %s %d +0000\n" % (_IDENTITY, when))
        out.write(b"data %d\n%s\n" % (len(message), message))

    def close(self) -> dict[int, str]:
        """Finish the import and return the object id of every mark."""
        self._out.write(b"done\n")
        self._out.close()
        if self._process.wait() != 0:
            raise RuntimeError("git fast-import failed")
        marks = {}
        for line in self._marks.read_text().splitlines():
            mark, oid = line.split()
            marks[int(mark[1:])] = oid
        self._marks.unlink()
        return marks

    def _takeMark(self) -> int:
        mark = self._nextMark
        self._nextMark += 1
        return mark


class _TextTree:
    """
    A tree of source-like text files that a seeded PRNG edits like a team would.

    Edits replace, insert and delete a few lines of a few files per commit and
    add a new file now and then, so the history deltas like real code does.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        letters = "abcdefghijklmnopqrstuvwxyz"
        self._words = [
            "".join(rng.choice(letters) for _ in range(rng.randint(2, 11))) for _ in range(20000)
        ]
        self._dirs = [b"%s/%s" % (self._word().encode(), self._word().encode()) for _ in range(120)]
        self.files: dict[bytes, list[bytes]] = {}
        self.paths: list[bytes] = []

    def _word(self) -> str:
        return self._rng.choice(self._words)

    def _line(self) -> bytes:
        rng = self._rng
        indent = b"    " * rng.randint(0, 3)
        words = " ".join(rng.choice(self._words) for _ in range(rng.randint(3, 14)))
        # A hex literal now and then keeps the text from compressing unlike code.
        if rng.random() < 0.3:
            words += f" 0x{rng.getrandbits(32):08x}"
        return indent + words.encode()

    def newFile(self) -> bytes:
        """Create a file at a fresh path and return that path."""
        rng = self._rng
        while True:
            path = b"%s/%s_%s.py" % (
                rng.choice(self._dirs),
                self._word().encode(),
                self._word().encode(),
            )
            if path not in self.files:
                break
        self.files[path] = [self._line() for _ in range(rng.randint(40, 400))]
        self.paths.append(path)
        return path

    def editFile(self) -> bytes:
        """Edit a few lines of an existing file and return its path."""
        rng = self._rng
        path = rng.choice(self.paths)
        lines = self.files[path]
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(lines) + 1)
            action = rng.random()
            if action < 0.45 and at < len(lines):
                lines[at] = self._line()
            elif action < 0.85 or len(lines) < 20:
                lines[at:at] = [self._line() for _ in range(rng.randint(1, 6))]
            else:
                del lines[at : at + rng.randint(1, 3)]
        return path

    def content(self, path: bytes) -> bytes:
        """The current bytes of C{path}."""
        return b"\n".join(self.files[path]) + b"\n"


def generateHistory(repo: Path, sizes: CorpusSizes, env: dict[str, str]) -> None:
    """
    Generate the realistic history: a main line, release branches with fixes,
    merges back, and an annotated tag every hundred commits.
    """
    rng = random.Random(0x6173)
    tree = _TextTree(rng)
    stream = FastImportStream(repo, env)
    when = _EPOCH
    initial = [tree.newFile() for _ in range(sizes.historyInitialFiles)]
    head = stream.commit(
        b"refs/heads/main",
        when,
        b"Initial import",
        [(path, stream.blob(tree.content(path))) for path in initial],
    )
    releases = 0
    for number in range(1, sizes.historyCommits):
        when += rng.randint(60, 7200)
        touched = {tree.editFile() for _ in range(rng.randint(1, 5))}
        if rng.random() < 0.5:
            touched.add(tree.newFile())
        changes = [(path, stream.blob(tree.content(path))) for path in sorted(touched)]
        message = b"Change %d: %s\n\nTouches %d files." % (
            number,
            b" ".join(tree._word().encode() for _ in range(rng.randint(3, 10))),
            len(changes),
        )
        head = stream.commit(b"refs/heads/main", when, message, changes, parent=head)
        if number % 100 == 0:
            stream.tag(b"v%d.%d" % (number // 1000, number % 1000 // 100), head, when, b"Release")
        if number % 500 == 0:
            # A maintenance branch with a couple of fixes, merged back into main.
            releases += 1
            branch = b"refs/heads/release-%d" % (releases,)
            fix = head
            for _ in range(3):
                when += 60
                path = tree.editFile()
                fix = stream.commit(
                    branch,
                    when,
                    b"Fix on release",
                    [(path, stream.blob(tree.content(path)))],
                    parent=fix,
                )
            when += 60
            head = stream.commit(
                b"refs/heads/main", when, b"Merge release branch", [], parent=head, merge=fix
            )
    stream.close()
    _git(env, repo, "symbolic-ref", "HEAD", "refs/heads/main")
    # How a busy server keeps a repository: one pack with deltas and a bitmap.
    # -f, because fast-import only deltas a blob against the blob written just
    # before it, which here is almost never the same file.
    _git(env, repo, "repack", "-a", "-d", "-f", "-b", "-q", "--window=10", "--depth=50")


def _incompressible(seed: int, size: int) -> bytes:
    """C{size} deterministic bytes that zlib cannot shrink."""
    return random.Random(seed).randbytes(size)


def generateBlobs(repo: Path, sizes: CorpusSizes, env: dict[str, str]) -> None:
    """
    Generate the big-blob repository: one blob per commit over a few commits,
    packed by fast-import itself (compression 1: the data is incompressible and
    recompressing it at level 6 only costs generation time).
    """
    stream = FastImportStream(repo, env, "pack.compression=1", "core.bigFileThreshold=2g")
    head = None
    for number in range(sizes.blobCount):
        blob = stream.blob(_incompressible(number, sizes.blobBytes))
        head = stream.commit(
            b"refs/heads/main",
            _EPOCH + number * 60,
            b"Add asset %d" % (number,),
            [(b"assets/asset-%03d.bin" % (number,), blob)],
            parent=head,
        )
    stream.close()
    _git(env, repo, "symbolic-ref", "HEAD", "refs/heads/main")


def generateRefs(repo: Path, sizes: CorpusSizes, env: dict[str, str]) -> None:
    """
    Generate a small history advertised under C{sizes.refCount} refs, written
    straight into C{packed-refs} (as C{git pack-refs} leaves a busy repository).
    """
    stream = FastImportStream(repo, env)
    commits = []
    head = None
    for number in range(200):
        blob = stream.blob(b"state %d\n" % (number,))
        head = stream.commit(
            b"refs/heads/main",
            _EPOCH + number * 60,
            b"Commit %d" % (number,),
            [(b"state.txt", blob)],
            parent=head,
        )
        commits.append(head)
    marks = stream.close()
    _git(env, repo, "symbolic-ref", "HEAD", "refs/heads/main")
    refs = {b"refs/heads/main": marks[commits[-1]].encode()}
    for number in range(sizes.refCount - 1):
        # Mostly review and feature refs, as a forge accumulates them.
        kind = (b"refs/heads/feature", b"refs/pull", b"refs/changes")[number % 3]
        refs[b"%s/%06d" % (kind, number)] = marks[commits[number % len(commits)]].encode()
    lines = [b"# pack-refs with: peeled fully-peeled sorted \n"]
    lines += [b"%s %s\n" % (oid, name) for name, oid in sorted(refs.items())]
    (repo / "packed-refs").write_bytes(b"".join(lines))
    (repo / "refs" / "heads" / "main").unlink(missing_ok=True)


def generateTiny(repo: Path, env: dict[str, str]) -> None:
    """One commit holding one small file."""
    stream = FastImportStream(repo, env)
    stream.commit(b"refs/heads/main", _EPOCH, b"Hello", [(b"README", stream.blob(b"hello\n"))])
    stream.close()
    _git(env, repo, "symbolic-ref", "HEAD", "refs/heads/main")


def _git(env: dict[str, str], repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, env=env, stdout=subprocess.PIPE, text=True
    ).stdout


def countObjects(repo: Path, env: dict[str, str]) -> dict[str, str]:
    """C{git count-objects -v} as a dict, to show that a corpus meets its floor."""
    output = _git(env, repo, "count-objects", "-v")
    return dict(line.split(": ", 1) for line in output.splitlines())


def ensureCorpora(sizes: CorpusSizes, workDir: Path = WORK_DIR, log=print) -> Corpus:
    """
    Return the corpora for C{sizes}, generating any that is not cached yet.

    Each repository is generated into a temporary name and renamed into place
    when complete, so an interrupted run never leaves a half corpus that a
    later run would trust.
    """
    corpus = Corpus(root=workDir / "corpora" / sizes.name, sizes=sizes)
    corpus.root.mkdir(parents=True, exist_ok=True)
    env = gitEnvironment(workDir / "home")
    generators = [
        (corpus.tiny, lambda path: generateTiny(path, env)),
        (corpus.refs, lambda path: generateRefs(path, sizes, env)),
        (corpus.history, lambda path: generateHistory(path, sizes, env)),
        (corpus.blobs, lambda path: generateBlobs(path, sizes, env)),
    ]
    for final, generate in generators:
        if final.exists():
            continue
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        started = time.monotonic()
        log(f"generating {final.name} ...")
        generate(partial)
        partial.rename(final)
        log(f"generated {final.name} in {time.monotonic() - started:.1f}s")
    return corpus


def describe(corpus: Corpus, env: dict[str, str]) -> dict[str, dict[str, object]]:
    """Objects, pack size and ref count of each corpus repository."""
    result: dict[str, dict[str, object]] = {}
    for repo in (corpus.history, corpus.blobs, corpus.refs, corpus.tiny):
        counts = countObjects(repo, env)
        refs = _git(env, repo, "for-each-ref", "--format=x").count("\n")
        result[repo.name] = {
            "objects": int(counts["count"]) + int(counts["in-pack"]),
            "pack MB": round(int(counts["size-pack"]) / 1024, 1),
            "refs": refs,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    """Generate the corpora and print what they hold."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpora for a quick check")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    corpus = ensureCorpora(sizes)
    print(json.dumps({"root": str(corpus.root), "sizes": asdict(sizes)}, indent=2))
    print(json.dumps(describe(corpus, gitEnvironment(WORK_DIR / "home")), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
