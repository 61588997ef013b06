"""
gitolite itself, as the oracle for the access rules: a private gitolite
install in a temporary HOME, fed a conf, and asked many questions through one
Perl process that calls gitolite's own C{access()} for each.

C{gitolite access} answers one (perm, ref) per process, or a batch of
repositories and users for one fixed (perm, ref); the driver below keeps
gitolite's code and its C{adjust_aa} step but reads whole questions from
stdin, so a conf's thousand questions cost one process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

GL_LIBDIR = "/usr/share/gitolite3/lib"

# A minimal rc: no triggers (compiling is then a fraction of a second),
# every config key allowed (gitserve accepts config lines and ignores them;
# the default rc would make gitolite refuse them), the default roles.
RC = """%RC = (
    UMASK => 0077,
    GIT_CONFIG_KEYS => '.*',
    LOG_EXTRA => 0,
    ROLES => { READERS => 1, WRITERS => 1 },
    ENABLE => [],
);
1;
"""

DRIVER = r"""
use strict; use warnings;
use lib $ENV{GL_LIBDIR};
use Gitolite::Rc;
use Gitolite::Common;
use Gitolite::Conf::Load;
$| = 1;
# As commands/access does before calling access().
sub adjust_aa {
    my ($repo, $aa) = @_;
    $aa = 'W' if $aa eq 'C' and not option($repo, 'CREATE_IS_C');
    $aa = '+' if $aa eq 'D' and not option($repo, 'DELETE_IS_D');
    return $aa;
}
while (my $line = <STDIN>) {
    chomp $line;
    my ($repo, $user, $aa, $ref) = split /\t/, $line;
    # For a repository that does not exist, gitolite's creator is GL_USER.
    $ENV{GL_USER} = $user;
    my $ret = eval { access($repo, $user, adjust_aa($repo, $aa), $ref) };
    $ret = "DIED $@" unless defined $ret;
    $ret =~ s/\s+/ /g;
    print "$ret\n";
}
"""


def available() -> bool:
    """Whether Debian's gitolite3 is installed here."""
    return shutil.which("gitolite") is not None and os.path.isdir(GL_LIBDIR)


@dataclass
class Gitolite:
    """A private gitolite, set up once, recompiled for each conf."""

    home: Path

    @classmethod
    def setUp(cls, home: Path) -> Gitolite:
        env = cls._env(home)
        subprocess.run(
            ["gitolite", "setup", "-a", "admin"], env=env, check=True, capture_output=True
        )
        (home / ".gitolite.rc").write_text(RC)
        (home / "driver.pl").write_text(DRIVER)
        return cls(home)

    @staticmethod
    def _env(home: Path) -> dict[str, str]:
        return {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GL_LIBDIR": GL_LIBDIR,
            "GIT_CONFIG_NOSYSTEM": "1",
            "LANG": "C",
        }

    @property
    def repositories(self) -> Path:
        return self.home / "repositories"

    def load(self, conf: str, wild: dict[str, str], named: tuple[str, ...] = ()) -> None:
        """
        Compile C{conf} (gitolite creates its named repositories) and create
        the wild repositories C{wild} (name → creator) as C{gitolite create}
        leaves them: a directory, the update hook, C{gl-creator}.
        """
        shutil.rmtree(self.repositories, ignore_errors=True)
        self.repositories.mkdir()
        # A compiled conf left from the previous conf would be read during
        # this compile (its split-conf list names repositories now gone).
        (self.home / ".gitolite" / "conf" / "gitolite.conf-compiled.pm").unlink(missing_ok=True)
        hook = self.home / ".gitolite" / "hooks" / "common" / "update"
        for name in named:
            # What `git init --bare` and gitolite's hook setup leave, as far
            # as gitolite looks (a directory, its update hook): compiling
            # then skips one git process per name.
            (self.repositories / f"{name}.git" / "hooks").mkdir(parents=True)
            (self.repositories / f"{name}.git" / "hooks" / "update").symlink_to(hook)
        (self.home / ".gitolite" / "conf" / "gitolite.conf").write_text(conf)
        subprocess.run(
            ["gitolite", "compile"], env=self._env(self.home), check=True, capture_output=True
        )
        for name, creator in wild.items():
            repo = self.repositories / f"{name}.git"
            (repo / "hooks").mkdir(parents=True, exist_ok=True)
            if not (repo / "hooks" / "update").exists():
                (repo / "hooks" / "update").symlink_to(hook)
            if not (repo / "gl-creator").exists():
                (repo / "gl-creator").write_text(creator + "\n")

    def exists(self, repo: str) -> bool:
        return (self.repositories / f"{repo}.git").is_dir()

    def creator(self, repo: str) -> str:
        try:
            return (self.repositories / f"{repo}.git" / "gl-creator").read_text().strip()
        except OSError:
            return ""

    def ask(
        self,
        questions: list[tuple[str, str, str, str]],
        processes: int = max(2, os.cpu_count() or 2),
    ) -> list[str]:
        """
        gitolite's answer to each (repo, user, perm, full ref or 'any'),
        asked of a few Perl processes at once (each answer costs gitolite
        most of a millisecond).
        """
        size = -(-len(questions) // processes) or 1
        chunks = [questions[i : i + size] for i in range(0, len(questions), size)]
        children = [
            subprocess.Popen(
                ["perl", str(self.home / "driver.pl")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(self.home),
                text=True,
            )
            for _ in chunks
        ]

        def run(pair: tuple[subprocess.Popen[str], list[tuple[str, str, str, str]]]) -> list[str]:
            child, chunk = pair
            out, err = child.communicate("".join("\t".join(q) + "\n" for q in chunk))
            lines = out.splitlines()
            assert child.returncode == 0 and len(lines) == len(chunk), err
            return lines

        with ThreadPoolExecutor(len(children)) as pool:
            return [
                line
                for lines in pool.map(run, zip(children, chunks, strict=True))
                for line in lines
            ]
