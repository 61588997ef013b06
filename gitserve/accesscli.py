"""
C{gitserve-access [--root DIR] [-s] FILE USER REPO [R|W|+|C|D] [REF]}: ask the
access rules a question, as C{gitolite access} does, before relying on them.

Prints C{allowed} or C{denied} (exit status 0 or 1); with C{-s}, the rules it
went through, each marked as gitolite marks them, and the one that decided.
For a wild repository that does not exist yet, it answers what the daemon
would do for that user: create it (if the user has C{C}) and then check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gitserve.core.access import ACCESSES, AccessConfError, Decision, loadRules
from gitserve.core.accesscontrol import creatorOf, requestedName, ruleName
from gitserve.core.repository import resolveRepository

MARKS = {
    "d": "skipped: deny rule, and the ref is 'any' without deny-rules",
    "r": "skipped: refex does not match",
    "p": "skipped: permission does not match",
    "D": "DENIED",
    "A": "ALLOWED",
}


def _show(decision: Decision, out: list[str]) -> None:
    for rule, mark in decision.walked:
        out.append(f"  {mark} {rule.source.path}:{rule.source.lineNumber}: {rule.source.text}")
        out.append(f"      {MARKS[mark]}")
    if decision.decidedBy is None:
        out.append("  F (fallthru)" if "fallthru" in decision.text else f"  ! {decision.text}")
    out.append(f"decided by: {decision.text}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gitserve-access", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".", help="the served root (default: .)")
    parser.add_argument("-s", action="store_true", help="show the rules walked")
    parser.add_argument("file", help="the access conf (gitolite syntax)")
    parser.add_argument("user")
    parser.add_argument("repo", help="the repository's name under the root, without .git")
    parser.add_argument("perm", nargs="?", default="+", choices=ACCESSES)
    parser.add_argument("ref", nargs="?", default="any")
    args = parser.parse_args(argv)
    try:
        rules = loadRules(args.file)
    except AccessConfError as e:
        print(f"gitserve-access: {e}", file=sys.stderr)
        return 2
    ref = args.ref
    if ref != "any" and not ref.startswith(("refs/", "VREF/")):
        ref = "refs/heads/" + ref
    root = Path(args.root).resolve()
    segments = [s.encode() for s in args.repo.split("/")]
    repository = resolveRepository(root, segments)
    out: list[str] = []
    if repository is not None:
        name, creator, exists = ruleName(root, repository), creatorOf(repository), True
    else:
        name, creator, exists = requestedName(args.repo.split("/")) or args.repo, args.user, False
    aa = rules.adjustAccess(name, args.perm, creator)
    if not exists and args.perm != "^C":
        # As the daemon: a user with C creates the repository first, then
        # the question is asked of it, with the user as its creator.
        create = rules.access(name, args.user, "^C", "any", False, args.user)
        if args.s:
            out.append(f"{name} does not exist; creating it needs ^C:")
            _show(create, out)
        if not create.allowed:
            print("\n".join(out + ["denied"]))
            return 1
        exists = True
        if args.s:
            out.append(f"it would be created, with {args.user} as its creator; then:")
    decision = rules.access(name, args.user, aa, ref, exists, creator)
    if args.s:
        _show(decision, out)
    out.append("allowed" if decision.allowed else "denied")
    print("\n".join(out))
    return 0 if decision.allowed else 1


if __name__ == "__main__":
    sys.exit(main())
