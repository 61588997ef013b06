"""
The update hook gitserve gives receive-pack under C{--access}: one ref of a
push, checked before git applies it, as gitolite's update hook checks it.

git runs it once per ref (C{update REF OLD NEW}) after the pack is received
and before the ref moves; a non-zero exit refuses that ref alone, so the
other refs of the push still land (unless the client asked for
C{--atomic}). What kind of update it is — create, fast-forward, rewind,
delete — is decided here, on the server, from the objects (git's
C{merge-base --is-ancestor}, run inside the push's quarantine, where the
new objects are visible); the client's C{--force} says nothing.

It imports only L{gitserve.core.access} (and the standard library): it runs
for every ref, and reads the rules from the snapshot the daemon put in its
environment rather than parsing the conf.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

from gitserve.core.access import decideRef

ACCESS_ENV = "GITSERVE_ACCESS"
REPO_HOOKS_ENV = "GITSERVE_REPO_HOOKS"
UNBORN_HEAD_FILE = "gitserve-unborn-head"


def _isZero(oid: str) -> bool:
    return bool(oid) and set(oid) == {"0"}


def isAncestor(old: str, new: str, env: Mapping[str, str]) -> bool:
    """
    Whether C{new} contains C{old} (a fast-forward). Anything git cannot
    answer (a missing object) counts as a rewind: the stricter check.
    """
    result = subprocess.run(
        ["git", "merge-base", "--is-ancestor", old, new],
        env=dict(env),
        capture_output=True,
    )
    return result.returncode == 0


def hasMerges(old: str, new: str, env: Mapping[str, str]) -> bool:
    """Whether C{old..new} brings a merge commit (gitolite's C{MERGE_CHECK})."""
    result = subprocess.run(
        ["git", "rev-list", "-n", "1", "--merges", f"{old}..{new}"],
        env=dict(env),
        capture_output=True,
    )
    return bool(result.stdout.strip())


def accessFor(
    ref: str, old: str, new: str, snapshot: Mapping[str, object], env: Mapping[str, str]
) -> str:
    """
    What this update needs (gitolite's C{args()} in C{Hooks/Update.pm}):
    C{W} to create or fast-forward, C{+} to rewind (a tag that exists is
    always rewound) or delete, C{C}/C{D} where the rules made creating or
    deleting a permission of its own, plus C{M} for merges under
    C{MERGE_CHECK}.
    """
    aa = "W"
    if "refs/tags/" in ref and not _isZero(old):
        aa = "+"
    if not _isZero(old) and (_isZero(new) or not isAncestor(old, new, env)):
        aa = "+"
    if snapshot.get("deleteIsD") and _isZero(new):
        aa = "D"
    if snapshot.get("createIsC") and _isZero(old):
        aa = "C"
    if snapshot.get("mergeCheck") and not _isZero(old) and not _isZero(new):
        if hasMerges(old, new, env):
            aa += "M"
    return aa


def _moveUnbornHead(ref: str, old: str, env: Mapping[str, str]) -> None:
    """
    A repository created by this push has its HEAD point at the first
    branch pushed. The marker is removed first, so of several refs (or
    pushes) only the first moves HEAD.
    """
    if not (ref.startswith("refs/heads/") and _isZero(old)):
        return
    try:
        os.unlink(os.path.join(env.get("GIT_DIR", "."), UNBORN_HEAD_FILE))
    except OSError:
        return
    # Writing HEAD is not an object write; git refuses ref writes inside
    # the quarantine, which HEAD need not be part of.
    outside = {k: v for k, v in env.items() if k != "GIT_QUARANTINE_PATH"}
    subprocess.run(["git", "symbolic-ref", "HEAD", ref], env=outside, capture_output=True)


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """The update hook: C{update REF OLD NEW}."""
    env = dict(os.environ if env is None else env)
    if len(argv) != 4:
        print("gitserve: the update hook needs REF OLD NEW", file=sys.stderr)
        return 1
    ref, old, new = argv[1:4]
    encoded = env.get(ACCESS_ENV)
    if encoded is None:
        # No snapshot means the daemon did not start this push with the
        # rules: refuse rather than let it through unchecked.
        print("gitserve: access denied: no access rules for this push", file=sys.stderr)
        return 1
    snapshot = json.loads(encoded)
    aa = accessFor(ref, old, new, snapshot, env)
    decision = decideRef(snapshot, aa, ref)
    if not decision.allowed:
        print(f"gitserve: access denied: {decision.text}", file=sys.stderr)
        if decision.decidedBy is not None:
            print(f"gitserve: by rule {decision.decidedBy.source}", file=sys.stderr)
        return 1
    own = os.path.join(env.get(REPO_HOOKS_ENV, ""), "update")
    if env.get(REPO_HOOKS_ENV) and os.path.isfile(own) and os.access(own, os.X_OK):
        status = subprocess.run([own, ref, old, new], env=env).returncode
        if status != 0:
            return status
    _moveUnbornHead(ref, old, env)
    return 0
