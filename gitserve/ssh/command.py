"""
The command an SSH client asks to run, read exactly as git-shell reads it.

git runs C{ssh host "git-upload-pack '/path'"}: one string, the path in
single quotes, where C{'} becomes C{'\\''} and C{!} becomes C{'\\!'}. git-shell
(git 2.39, C{shell.c} and C{quote.c}) accepts C{git-<service> <one quoted
argument>}, with C{git <service>} read as C{git-<service>}, and refuses
everything else. So does this module: the string is never given to a shell,
and what comes out is a service and a path, which only resolution turns into
a directory.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitserve.core.policy import Service

# git-shell's need_bs_quote(): the only characters git escapes outside quotes.
_BACKSLASHED = b"'!"

# C's isspace(), which git-shell tests the fourth byte of "git foo" with.
_C_SPACE = b" \t\n\v\f\r"

# git-shell's cmd_list (whether upload-archive may run is the policy's:
# the repository's daemon.uploadarch).
_COMMANDS = {
    b"git-receive-pack": Service.RECEIVE_PACK,
    b"git-upload-pack": Service.UPLOAD_PACK,
    b"git-upload-archive": Service.UPLOAD_ARCHIVE,
}

# Longer commands are not git's (a path is at most PATH_MAX).
MAX_COMMAND = 8192


class CommandRefused(Exception):
    """A command git-shell would not run, with the line the user is shown."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class GitCommand:
    """
    An accepted command.

    @ivar service: the git service it runs.
    @ivar path: the repository path as the client wrote it, unquoted; only
        for resolution, never for git's command line.
    """

    service: Service
    path: bytes


def sqDequote(text: bytes) -> bytes | None:
    """
    git's C{sq_dequote()}: the value of one single-quoted word, where only
    C{'\\''} and C{'\\!'} may interrupt the quotes, and nothing may follow
    the closing quote. L{None} for anything else (no shell syntax at all:
    C{;}, C{`}, C{$(...)} outside quotes make the whole string invalid, and
    inside quotes they are just characters of a path).
    """
    if not text.startswith(b"'"):
        return None
    out = bytearray()
    index = 1
    while True:
        if index >= len(text) or text[index] == 0:
            # Unterminated (C stops at NUL).
            return None
        c = text[index : index + 1]
        if c != b"'":
            out += c
            index += 1
            continue
        # Stepped out of the quotes.
        index += 1
        if index >= len(text) or text[index] == 0:
            return bytes(out)
        escaped = text[index + 1 : index + 2]
        if (
            text[index : index + 1] == b"\\"
            and len(escaped) == 1
            and escaped in _BACKSLASHED
            and text[index + 2 : index + 3] == b"'"
        ):
            out += escaped
            index += 3
            continue
        return None


def parseCommand(command: bytes) -> GitCommand:
    """
    The git service and path an C{exec} request asks for.

    @raise CommandRefused: for anything git-shell would refuse, and for a
        NUL anywhere (C would cut the string there; here it is simply
        refused).
    """
    if len(command) > MAX_COMMAND or b"\0" in command:
        raise CommandRefused("unrecognized command")
    prog = bytearray(command)
    if prog[:3] == b"git" and len(prog) > 3 and prog[3] in _C_SPACE:
        # git-shell: accept "git foo" as if the caller said "git-foo".
        prog[3:4] = b"-"
    for name, service in _COMMANDS.items():
        if not prog.startswith(name):
            continue
        rest = bytes(prog[len(name) :])
        if rest and rest[:1] != b" ":
            continue
        argument = sqDequote(rest[1:]) if rest else None
        if argument is None or argument.startswith(b"-"):
            # git-shell's die("bad argument"): the path must be exactly one
            # quoted word, and never something git could read as an option.
            raise CommandRefused("bad argument")
        return GitCommand(service, argument)
    raise CommandRefused("unrecognized command")
