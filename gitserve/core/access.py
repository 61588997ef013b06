"""
Who may do what: gitolite v3's access rules, read from its conf syntax and
decided exactly as gitolite's C{access()} decides (C{Gitolite/Conf/Load.pm}).

Pure: no Twisted, no I/O except reading the conf files (L{loadRules}) and the
one-line C{gl-creator} file a caller hands in. A conf is parsed and compiled
once (L{AccessRules}); a decision (L{AccessRules.access}) is a few dict
lookups and the regular expressions of the rules that apply, so the update
hook can import this module alone and decide in microseconds.

What is kept from gitolite, on purpose, including its surprises (each was
checked against C{gitolite access}, see C{tests/test_access_gitolite.py}):

  - a group's members are expanded when the group line is read: a group named
    on the right must already exist, and members it gains later do not count;
  - repository names and group members that are not plain names are regular
    expressions anchored as C{^PATTERN$} by string concatenation (so
    C{a|b} means C{^a} or C{b$}), and any name key is also tried as one (so
    C{foo.bar} also covers C{fooXbar});
  - rules from every name, pattern and group the repository and the user
    belong to are walked in the order they appear in the conf (their
    sequence number), the first matching rule decides, and nothing matching
    denies ("fallthru");
  - a refex is matched as C{^REFEX} (a prefix unless it ends in C{$}); one
    not starting with C{refs/} means C{refs/heads/REFEX}; C{/USER/} in it
    stands for the user;
  - C{-} rules are skipped for the C{any} ref (the check before git runs)
    unless C{option deny-rules = 1} applies to the repository;
  - C{C} in a permission: on a C{C} line, who may create a wild repository
    (C{^C}); inside C{RWC}/C{RW+C}, that creating a ref needs C{C} for every
    rule of that repository block (gitolite's C{CREATE_IS_C}); C{D} likewise
    for deleting (C{DELETE_IS_D});
  - C{CREATOR} is whoever created the repository (its C{gl-creator} file),
    or, for one that does not exist yet, the user asking; a repository that
    does not exist needs C{^C} before any other check.

Where gitserve differs, and why (also in the README's design notes):

  - a line gitolite would skip with a warning (a syntax error), an include
    that names no file, and a regular expression that does not compile are
    errors here (C{FILE:LINE: what is wrong}): a typo in a deny rule must not
    silently become a grant;
  - C{config}, C{desc}/C{owner}/C{category}, VREF rules, C{subconf}'s
    delegation and gl-perms roles (C{READERS}/C{WRITERS}) are not access
    rules gitserve enforces: they are accepted and reported in
    L{AccessRules.ignored}, never treated as a grant (a VREF rule is dropped,
    grant or deny: gitserve runs no VREF programs);
  - regular expressions run on the C{regex} module, which is close to Perl's
    for what confs use; each match is bounded in time
    (L{MATCH_TIMEOUT}) and one that runs out denies the request.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import regex

# gitolite's own patterns (Gitolite/Rc.pm), which decide what a name, a user,
# a ref and a pattern may look like.
REF_OR_FILENAME_PATT = regex.compile(r"^[0-9a-zA-Z][-0-9a-zA-Z._@/+ :,]*\Z")
REPONAME_PATT = regex.compile(r"^@?[0-9a-zA-Z][-0-9a-zA-Z._@/+]*\Z")
REPOPATT_PATT = regex.compile(r"^@?[[0-9a-zA-Z][-0-9a-zA-Z._@/+\\^$|()[\]*?{},]*\Z")
USERNAME_PATT = regex.compile(r"^@?[0-9a-zA-Z][-0-9a-zA-Z._@+]*\Z")
_RULE_LINE = regex.compile(r"^(-|C|R|RW\+?(?:C?D?|D?C?)M?) (.* )?= (.+)\Z")
_GROUP_LINE = regex.compile(r"^(@\S+) = (.*)\Z")
_CONFIG_LINE = regex.compile(r"^config (.+) = ?(.*)\Z")
_INCLUDE_LINE = regex.compile(r"^(include|subconf) (?:(\S+) )?(\S.+)\Z")
_UNSAFE_REF_CHARS = regex.compile(r"[^-0-9a-zA-Z._@/+ :,]")
_COMMENT = regex.compile(r'^((".*?"|[^#"])*)#.*')
_SPACES = regex.compile(r"\s+")
_BEGIN_SKIP = regex.compile(r"^= *begin (testconf|template-data)\Z")
_END_SKIP = regex.compile(r"^= *end\Z")
_QUOTED = regex.compile(r"""^(?:"(.+)"|'(.+)')\Z""")
_OPTION_LINE = regex.compile(r"^option (\S+) = (\S.*)\Z")
_GITWEB_LINE = regex.compile(r"^(desc|owner|category) = (\S.*)\Z")
_CREATE_PERM = regex.compile("RW.*C")

# The users gitolite gives to requests nobody authenticated: HTTP_ANON_USER
# for HTTP, and git-daemon's "daemon" for git://.
ANONYMOUS = "anonymous"
DAEMON = "daemon"

# The accesses a caller may ask about: read, write, rewind, create and delete
# a ref, and create a (wild) repository.
ACCESSES = ("R", "W", "+", "C", "D", "M", "^C")

# The longest one regular expression of the conf may run on one name or ref
# before the request is denied: a conf line like (a|aa)+$ must not stall the
# daemon (gitolite, in Perl, has no such bound).
MATCH_TIMEOUT = 0.01

# How many repository names' memberships are kept (each costs a walk over
# every pattern of the conf the first time).
MAX_CACHED_MEMBERSHIPS = 4096

# gitolite's include depth is unbounded but loops are cut by inode; ours too,
# plus a bound on depth so that a generated chain cannot exhaust the stack.
MAX_INCLUDE_DEPTH = 32


class AccessConfError(ValueError):
    """
    A conf gitserve will not serve from, with the file and line to fix.

    @ivar path: the file, as it was named (the main file, or an include).
    @ivar lineNumber: the line, or L{None} when the file as a whole is wrong.
    """

    def __init__(self, path: str, lineNumber: int | None, reason: str) -> None:
        self.path = path
        self.lineNumber = lineNumber
        self.reason = reason
        where = f"{path}:{lineNumber}" if lineNumber is not None else path
        super().__init__(f"{where}: {reason}")


class PatternTimeout(Exception):
    """A conf regular expression ran past L{MATCH_TIMEOUT}: the request is denied."""


@dataclass(frozen=True)
class Source:
    """Where a rule came from: file, line number and the line as written."""

    path: str
    lineNumber: int
    text: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineNumber}: {self.text}"


@dataclass(frozen=True)
class Rule:
    """
    One permission for one user or group, on one refex: gitolite's
    C{[seq, perm, ref]} triple, with its source for C{-s}.
    """

    seq: int
    perm: str
    refex: str
    source: Source


@dataclass
class Decision:
    """
    The answer to one question, in gitolite's words.

    @ivar allowed: the answer.
    @ivar text: what C{gitolite access} prints: the refex that allowed, or
        C{"<aa> <ref> <repo> <user> DENIED by <refex|fallthru|existence>"}.
    @ivar walked: the rules looked at, in order, each with gitolite's trace
        mark (C{d} deny rule skipped for C{any}, C{r} refex did not match,
        C{p} permission did not match, C{D} denied, C{A} allowed).
    @ivar decidedBy: the rule that decided, L{None} for fallthru and for
        refusals that come before the rules (existence, a bad name).
    """

    allowed: bool
    text: str
    walked: list[tuple[Rule, str]] = field(default_factory=list)
    decidedBy: Rule | None = None


def _match(pattern: str, text: str, compiled: dict[str, regex.Pattern[str]]) -> bool:
    """
    Perl's C{text =~ /PATTERN/}: a search, bounded in time.

    @raise PatternTimeout: the pattern ran past L{MATCH_TIMEOUT}.
    """
    try:
        matcher = compiled[pattern]
    except KeyError:
        matcher = compiled[pattern] = regex.compile(pattern)
    try:
        return matcher.search(text, timeout=MATCH_TIMEOUT) is not None
    except TimeoutError as e:
        raise PatternTimeout(pattern) from e


@functools.lru_cache(maxsize=64)
def _permissionMatcher(pattern: str) -> regex.Pattern[str]:
    """The compiled form of an access turned into a pattern over permissions."""
    return regex.compile(pattern)


def _perlTrue(value: str) -> bool:
    """Perl truth of a string, as gitolite tests an option's value."""
    return value not in ("", "0")


def cleanupConfLine(line: str) -> str:
    """
    gitolite's C{cleanup_conf_line}: drop the comment (a C{#} outside a
    simple double-quoted string), put spaces around the first C{=}, squeeze
    whitespace.
    """
    if "#" in line:
        line = _COMMENT.sub(r"\1", line, count=1)
    line = line.replace("=", " = ", 1)
    line = _SPACES.sub(" ", line)
    return line.strip(" ")


def _isPlainName(name: str) -> bool:
    """Whether a name, used as a gitolite pattern, can match only itself."""
    return not any(ch in ".+*?()[]{}|^$\\" for ch in name)


@dataclass(frozen=True)
class ConfLine:
    """One significant line of the exploded conf, with where it came from."""

    text: str
    source: Source


def explode(
    path: str,
    baseDir: str,
    seen: set[tuple[int, int]] | None = None,
    depth: int = 0,
    files: list[str] | None = None,
) -> Iterator[ConfLine]:
    """
    gitolite's C{explode}: the cleaned lines of C{path}, with C{include}d
    files spliced in where they are named.

    @param baseDir: the directory includes are resolved against (the main
        file's, as gitolite resolves them against its conf directory).
    @raise AccessConfError: an unreadable file, a bad include.
    """
    if seen is None:
        seen = set()
    if files is not None:
        files.append(path)
    try:
        with open(path, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            seen.add((st.st_dev, st.st_ino))
            lines = f.read().splitlines()
    except OSError as e:
        raise AccessConfError(path, None, e.strerror or str(e)) from e
    except UnicodeDecodeError as e:
        raise AccessConfError(path, None, "not UTF-8 text") from e
    skipping = False
    for number, raw in enumerate(lines, 1):
        line = cleanupConfLine(raw)
        if not line:
            continue
        source = Source(path, number, raw.strip())
        # gitolite's skip_block sugar: test data and templates are not rules.
        if _BEGIN_SKIP.match(line):
            skipping = True
            continue
        if skipping:
            skipping = _END_SKIP.match(line) is None
            continue
        m = _INCLUDE_LINE.match(line)
        if m is None:
            yield ConfLine(line, source)
            continue
        if m.group(1) == "subconf":
            raise AccessConfError(path, number, "subconf is not supported (use include)")
        quoted = _QUOTED.match(m.group(3))
        if m.group(2) is not None or quoted is None:
            raise AccessConfError(path, number, f"invalid include {m.group(3)!r} (quote it)")
        pattern = quoted.group(1) or quoted.group(2)
        target = os.path.join(baseDir, pattern)
        names = sorted(glob.glob(target)) if glob.has_magic(pattern) else [target]
        if depth >= MAX_INCLUDE_DEPTH:
            raise AccessConfError(path, number, "includes nested too deep")
        for name in names:
            if not os.path.isfile(name):
                # gitolite warns and goes on; a missing file of rules is an
                # error here, since the rules it held (denies too) would vanish.
                raise AccessConfError(path, number, f"included file not found: {pattern!r}")
            if not name.endswith(".conf"):
                raise AccessConfError(path, number, f"included file must end in .conf: {name!r}")
            st = os.stat(name)
            if (st.st_dev, st.st_ino) in seen:
                continue
            yield from explode(name, baseDir, seen, depth + 1, files)


class _Compiler:
    """gitolite's sugar, C{parse} and C{Store}: conf lines into tables."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, None]] = {}
        self.repos: dict[str, dict[str, list[Rule]]] = {}
        self.configs: dict[str, list[tuple[int, str, str]]] = {}
        self.repolist: list[str] = []
        self.seq = 0
        self.ignored: list[str] = []
        self._seenOptions: set[str] = set()
        # Patterns already known to compile.
        self._checked: set[str] = set()

    def fail(self, source: Source, reason: str) -> AccessConfError:
        return AccessConfError(source.path, source.lineNumber, reason)

    def expand(self, items: Iterable[str], source: Source) -> list[str]:
        """gitolite's C{expand_list}: a group on the right is its members, now."""
        out: list[str] = []
        for item in items:
            if item.startswith("@") and item != "@all":
                if item not in self.groups:
                    raise self.fail(source, f"undefined group {item!r}")
                out.extend(sorted(self.groups[item]))
            else:
                out.append(item)
        return out

    def addConfig(self, key: str, value: str) -> None:
        self.seq += 1
        for repo in self.repolist:
            self.configs.setdefault(repo, []).append((self.seq, key, value))

    def line(self, conf: ConfLine) -> None:
        text, source = conf.text, conf.source
        m = _GROUP_LINE.match(text)
        if m is not None:
            lhs = m.group(1)
            if not REPONAME_PATT.match(lhs):
                raise self.fail(source, f"bad group {lhs!r}")
            members = m.group(2).split()
            for member in members:
                if not REPOPATT_PATT.match(member):
                    raise self.fail(source, f"bad expansion {member!r}")
                self.checkPattern(member, source)
            group = self.groups.setdefault(lhs, {})
            for member in self.expand(members, source):
                group.setdefault(member, None)
            return
        if text.startswith("repo "):
            self.repolist = []
            self._seenOptions = set()
            for name in text[len("repo ") :].split():
                # gitolite: "explicit '.git' extension ignored".
                name = name.removesuffix(".git")
                if not REPOPATT_PATT.match(name):
                    raise self.fail(source, f"bad reponame {name!r}")
                self.checkPattern(name, source)
                self.repolist.append(name)
            return
        m = _RULE_LINE.match(text)
        if m is not None:
            self.rule(m.group(1), m.group(2) or "", m.group(3), source)
            return
        option = _OPTION_LINE.match(text)
        if option is not None:
            name = option.group(1)
            if name not in ("deny-rules", "CREATE_IS_C", "DELETE_IS_D", "MERGE_CHECK"):
                self.ignored.append(f"{source.path}:{source.lineNumber}: option {name}")
            self.addConfig(f"gitolite-options.{name}", option.group(2))
            return
        if _GITWEB_LINE.match(text):
            self.ignored.append(f"{source.path}:{source.lineNumber}: {text.split()[0]}")
            self.addConfig("gitweb." + text.split()[0], "")
            return
        m = _CONFIG_LINE.match(text)
        if m is not None:
            self.ignored.append(f"{source.path}:{source.lineNumber}: config {m.group(1)}")
            self.addConfig(m.group(1), m.group(2))
            return
        raise self.fail(source, f"syntax error: {source.text!r}")

    def checkPattern(self, pattern: str, source: Source) -> None:
        """A name that gitolite would use as a regular expression must compile."""
        if _isPlainName(pattern) or pattern in self._checked:
            return
        self._checked.add(pattern)
        try:
            regex.compile("^" + pattern + "$")
        except regex.error as e:
            raise self.fail(source, f"bad regular expression {pattern!r}: {e}") from e

    def rule(self, perm: str, refs: str, users: str, source: Source) -> None:
        # Sugar (name_vref, role_names): NAME/ is a VREF, CREATOR a role.
        refList = [
            "VREF/NAME/" + r[len("NAME/") :] if r.startswith("NAME/") and perm != "C" else r
            for r in refs.split()
        ]
        userList = ["@" + u if u in ("CREATOR", "READERS", "WRITERS") else u for u in users.split()]
        # parse_refs: groups expanded, no ref means every ref, and a refex
        # not starting with refs/ is a branch.
        expanded = self.expand(refList, source) or ["refs/.*"]
        qualified = [r if r.startswith(("refs/", "VREF/")) else "refs/heads/" + r for r in expanded]
        for user in userList:
            if not USERNAME_PATT.match(user):
                raise self.fail(source, f"bad username {user!r}")
        for ref in qualified:
            if not REPOPATT_PATT.match(ref):
                raise self.fail(source, f"bad ref {ref!r}")
            for user in userList:
                self.seq += 1
                if ref.startswith("VREF/"):
                    # gitserve runs no VREF programs: dropped, grant or deny.
                    self.ignored.append(f"{source.path}:{source.lineNumber}: VREF rule {ref}")
                    continue
                if ref not in self._checked and not _isPlainName(ref):
                    try:
                        regex.compile("^" + ref.replace("/USER/", "/x/", 1))
                    except regex.error as e:
                        raise self.fail(source, f"bad refex {ref!r}: {e}") from e
                    self._checked.add(ref)
                item = Rule(self.seq, perm, ref, source)
                for repo in self.repolist:
                    self.repos.setdefault(repo, {}).setdefault(user, []).append(item)
        # Sugar (rw_cdm), after the rule as gitolite adds it: C or D inside
        # RW... makes creating/deleting a ref need them, for the repositories
        # of this block.
        for option, wanted in (
            ("DELETE_IS_D", "D" in perm),
            ("CREATE_IS_C", _CREATE_PERM.search(perm) is not None),
            ("MERGE_CHECK", "M" in perm),
        ):
            if wanted and option not in self._seenOptions:
                self._seenOptions.add(option)
                self.addConfig(f"gitolite-options.{option}", "1")


class AccessRules:
    """
    A compiled conf: gitolite's C{%repos}, C{%groups} (inside out) and
    C{%configs}, and the decisions they give.

    @ivar ignored: the lines accepted but not enforced, as C{FILE:LINE: what}.
    @ivar files: the conf and every file it included, for reloading.
    """

    def __init__(
        self,
        repos: dict[str, dict[str, list[Rule]]],
        groups: dict[str, dict[str, None]],
        configs: dict[str, list[tuple[int, str, str]]],
        ignored: list[str] | None = None,
        files: list[str] | None = None,
    ) -> None:
        self.repos = repos
        self.configs = configs
        self.ignored = ignored or []
        self.files = files or []
        self.memberOf: dict[str, list[str]] = {}
        for group, members in groups.items():
            for member in members:
                self.memberOf.setdefault(member, []).append(group)
        keys = dict.fromkeys([*repos, *configs])
        # Name keys that can only match themselves are found by lookup; the
        # rest are tried as patterns, as gitolite tries every key.
        self._literalKeys = {k for k in keys if _isPlainName(k)}
        self._patternKeys = [k for k in keys if not _isPlainName(k)]
        # Group members that are patterns, not names (gitolite's %patterns).
        self._patternMembers = [m for m in self.memberOf if not REPONAME_PATT.match(m)]
        self._compiled: dict[str, regex.Pattern[str]] = {}
        self._repoMemberships: dict[tuple[str, str], tuple[str, ...]] = {}

    @classmethod
    def fromLines(cls, lines: Iterable[ConfLine], files: list[str] | None = None) -> AccessRules:
        """Compile exploded conf lines (see L{explode}, L{loadRules})."""
        compiler = _Compiler()
        for line in lines:
            compiler.line(line)
        return cls(compiler.repos, compiler.groups, compiler.configs, compiler.ignored, files)

    @classmethod
    def fromText(cls, text: str, path: str = "gitolite.conf") -> AccessRules:
        """Compile a conf given as text (no includes): for tests and tools."""
        lines = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = cleanupConfLine(raw)
            if line:
                lines.append(ConfLine(line, Source(path, number, raw.strip())))
        return cls.fromLines(lines)

    # Memberships -------------------------------------------------------------

    def genericName(self, repo: str, creator: str) -> str:
        """
        gitolite's C{generic_name}: the repository's name with its creator's
        name (the first, as a word) replaced by C{CREATOR}; empty when that
        changes nothing.
        """
        if not creator:
            return ""
        pattern = r"\b" + creator + r"\b"
        try:
            matcher = self._compiled.get(pattern) or regex.compile(pattern)
        except regex.error:
            return ""
        self._compiled[pattern] = matcher
        try:
            generic = matcher.sub("CREATOR", repo, count=1, timeout=MATCH_TIMEOUT)
        except TimeoutError as e:
            raise PatternTimeout(pattern) from e
        return "" if generic == repo else generic

    def repoMemberships(self, repo: str, creator: str) -> tuple[str, ...]:
        """Every name, pattern and group whose rules apply to C{repo}."""
        key = (repo, creator)
        cached = self._repoMemberships.get(key)
        if cached is not None:
            return cached
        generic = self.genericName(repo, creator)
        names = [n for n in (repo, generic) if n]
        found = [repo, "@all"]
        found += [n for n in names if n in self._literalKeys]
        for pattern in self._patternKeys:
            if any(n == pattern or _match("^" + pattern + "$", n, self._compiled) for n in names):
                found.append(pattern)
        for name in names:
            found += self.memberOf.get(name, [])
        for pattern in self._patternMembers:
            if any(_match("^" + pattern + "$", n, self._compiled) for n in names):
                found += self.memberOf[pattern]
        result = tuple(sorted(set(found)))
        if len(self._repoMemberships) >= MAX_CACHED_MEMBERSHIPS:
            self._repoMemberships.clear()
        self._repoMemberships[key] = result
        return result

    def userMemberships(self, user: str, repoExists: bool, creator: str) -> tuple[str, ...]:
        """
        The user, C{@all}, the groups naming the user, and C{@CREATOR} when
        the user created the (existing) repository.
        """
        found = [user, "@all", *self.memberOf.get(user, [])]
        if repoExists and creator and creator == user:
            found.append("@CREATOR")
        return tuple(sorted(set(found)))

    # Questions ---------------------------------------------------------------

    def rules(self, repo: str, user: str, repoExists: bool, creator: str) -> list[Rule]:
        """gitolite's C{rules}: every rule for (repo, user), in conf order."""
        found: dict[int, Rule] = {}
        users = self.userMemberships(user, repoExists, creator)
        for r in self.repoMemberships(repo, creator):
            byUser = self.repos.get(r)
            if byUser is None:
                continue
            for u in users:
                for rule in byUser.get(u, ()):
                    found[rule.seq] = rule
        return [found[seq] for seq in sorted(found)]

    def option(self, repo: str, name: str, creator: str) -> bool:
        """gitolite's C{option}: the last value set for the repository, as Perl truth."""
        key = f"gitolite-options.{name}"
        values = sorted(
            entry
            for r in self.repoMemberships(repo, creator)
            for entry in self.configs.get(r, ())
            if entry[1] == key
        )
        return bool(values) and _perlTrue(values[-1][2])

    def access(
        self,
        repo: str,
        user: str,
        aa: str,
        ref: str = "any",
        repoExists: bool = True,
        creator: str = "",
    ) -> Decision:
        """
        gitolite's C{access()}: may C{user} do C{aa} to C{ref} of C{repo}?

        @param aa: C{R}, C{W}, C{+}, C{C}, C{D}, C{M} (already adjusted for
            C{CREATE_IS_C}/C{DELETE_IS_D}, see L{adjustAccess}) or C{^C}.
        @param ref: a full ref name, or C{any} for the check before git runs.
        @param repoExists: whether the repository is there; one that is not
            needs C{^C} first, and only C{^C} is allowed on one that is.
        @param creator: the C{gl-creator} of an existing repository; for one
            that does not exist, the user (who would create it).
        """
        try:
            return self._access(repo, user, aa, ref, repoExists, creator)
        except PatternTimeout as e:
            return Decision(False, f"{aa} any {repo} {user} DENIED by slow pattern {e}")

    def _access(
        self, repo: str, user: str, aa: str, ref: str, repoExists: bool, creator: str
    ) -> Decision:
        if not USERNAME_PATT.match(user or ""):
            return Decision(False, f"invalid user {user!r}")
        problem = repoNameProblem(repo)
        if problem is not None:
            return Decision(False, problem)
        if not repoExists:
            creator = user
        if not ref.startswith("VREF/NAME/") and not REF_OR_FILENAME_PATT.match(ref):
            return Decision(False, f"invalid characters in ref or filename: {ref!r}")
        safeRef = _UNSAFE_REF_CHARS.sub(".", ref)
        rules = self.rules(repo, user, repoExists, creator)
        denyRules = self.option(repo, "deny-rules", creator)
        # As gitolite: a repository that does not exist needs ^C first.
        if aa != "^C" and not repo.startswith("@") and REPONAME_PATT.match(repo):
            if not repoExists:
                first = self._access(repo, user, "^C", ref, repoExists, creator)
                if not first.allowed:
                    first.text = first.text.replace("^C", aa, 1)
                    return first
        if aa == "^C" and repoExists:
            return Decision(False, f"{aa} {safeRef} {repo} {user} DENIED by existence")
        # gitolite turns the access asked into a pattern over permissions.
        pattern = {"+": r"\+", "C": "RW.*C"}.get(aa, aa).replace("M", ".*M")
        decision = Decision(False, "")
        for rule in rules:
            perm = rule.perm
            refex = rule.refex.replace("/USER/", f"/{user}/", 1)
            if perm == "-" and ref == "any" and not denyRules:
                decision.walked.append((rule, "d"))
                continue
            if ref != "any" and not _match("^" + refex, ref, self._compiled):
                decision.walked.append((rule, "r"))
                continue
            if perm == "-":
                decision.walked.append((rule, "D"))
                decision.text = f"{aa} {safeRef} {repo} {user} DENIED by {refex}"
                decision.decidedBy = rule
                return decision
            if _permissionMatcher(pattern).search(perm):
                decision.walked.append((rule, "A"))
                decision.allowed = True
                decision.text = refex
                decision.decidedBy = rule
                return decision
            decision.walked.append((rule, "p"))
        decision.text = f"{aa} {safeRef} {repo} {user} DENIED by fallthru"
        return decision

    def adjustAccess(self, repo: str, aa: str, creator: str = "") -> str:
        """
        What a ref creation or deletion is checked as for C{repo}: C{C} and
        C{D} only where the conf gave them meaning (gitolite's C{adjust_aa}).
        """
        if aa == "C" and not self.option(repo, "CREATE_IS_C", creator):
            return "W"
        if aa == "D" and not self.option(repo, "DELETE_IS_D", creator):
            return "+"
        if aa == "M" and not self.option(repo, "MERGE_CHECK", creator):
            return "W"
        return aa

    def pushRules(self, repo: str, user: str, creator: str) -> dict[str, object]:
        """
        Everything the update hook needs to decide every ref of one push by
        C{user} to (existing) C{repo}: the rules that apply, in order, and
        the options that shape them. A snapshot: a push is decided by the
        rules as they were when it began.
        """
        return {
            "repo": repo,
            "user": user,
            "denyRules": self.option(repo, "deny-rules", creator),
            "createIsC": self.option(repo, "CREATE_IS_C", creator),
            "deleteIsD": self.option(repo, "DELETE_IS_D", creator),
            "mergeCheck": self.option(repo, "MERGE_CHECK", creator),
            "rules": [
                [r.seq, r.perm, r.refex, r.source.path, r.source.lineNumber, r.source.text]
                for r in self.rules(repo, user, True, creator)
            ],
        }


def decideRef(snapshot: dict[str, object], aa: str, ref: str) -> Decision:
    """
    Decide one ref of a push from a L{AccessRules.pushRules} snapshot, as
    L{AccessRules.access} would for an existing repository.
    """
    rules = [
        Rule(int(seq), str(perm), str(refex), Source(str(path), int(number), str(text)))
        for seq, perm, refex, path, number, text in snapshot["rules"]  # type: ignore[attr-defined]
    ]
    options: dict[str, list[tuple[int, str, str]]] = {
        "x": [
            (1, f"gitolite-options.{name}", "1" if snapshot[key] else "")
            for key, name in (
                ("denyRules", "deny-rules"),
                ("createIsC", "CREATE_IS_C"),
                ("deleteIsD", "DELETE_IS_D"),
                ("mergeCheck", "MERGE_CHECK"),
            )
        ]
    }
    user = str(snapshot["user"])
    repo = str(snapshot["repo"])
    # The snapshot's rules, as the only rules of a one-repository conf.
    single = AccessRules({repo: {user: rules}}, {}, {repo: options["x"]})
    return single.access(repo, user, aa, ref, repoExists=True, creator="")


def repoNameProblem(repo: str) -> str | None:
    """gitolite's C{sanity}: why C{repo} cannot be a repository name, if it cannot."""
    if not repo or not REPOPATT_PATT.match(repo):
        return f"invalid repo {repo!r}"
    if repo.endswith("/"):
        return f"{repo!r} ends with a '/'"
    if REPONAME_PATT.match(repo) and ".." in repo:
        return f"{repo!r} contains '..'"
    if REPONAME_PATT.match(repo) and ".git/" in repo:
        return f"{repo!r} contains '.git/'"
    if repo.endswith(".git"):
        return f"{repo!r} ends with '.git'"
    return None


def loadRules(path: str) -> AccessRules:
    """
    Read and compile the conf at C{path} and everything it includes
    (resolved against C{path}'s directory).

    @raise AccessConfError: with the file and line to fix.
    """
    baseDir = os.path.dirname(os.path.abspath(path))
    files: list[str] = []
    lines = list(explode(path, baseDir, files=files))
    return AccessRules.fromLines(lines, files)
