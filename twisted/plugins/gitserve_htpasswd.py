"""
The strcred plugin behind C{--auth htpasswd:FILE}.

A checker factory rather than a special case in gitserve's options, so that
C{--auth} takes every strcred checker the same way (C{memory:}, C{file:},
C{unix}, third-party plugins) and C{--help-auth} lists this one too. Kept
import-light: twistd imports every plugin module when it looks for any plugin.
"""

from twisted.cred.credentials import IUsernamePassword
from twisted.cred.strcred import ICheckerFactory
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, ICheckerFactory)
class HtpasswdCheckerFactory:
    """Build gitserve's htpasswd checker from C{--auth htpasswd:FILE}."""

    authType = "htpasswd"
    authHelp = (
        "Check usernames and passwords against an Apache htpasswd file whose\n"
        "entries use bcrypt (`htpasswd -B`). The file is re-read when it changes;\n"
        "an entry in any other scheme is refused at start-up."
    )
    argStringFormat = "Path to an htpasswd file with bcrypt entries."
    credentialInterfaces = (IUsernamePassword,)

    def generateChecker(self, argstring: str) -> object:
        """Read and validate the file now, so a bad entry stops the start-up."""
        from pathlib import Path

        from twisted.internet import reactor, threads
        from twisted.python import usage

        from gitserve.auth import HtpasswdChecker, HtpasswdError

        if not argstring.strip():
            raise usage.UsageError(
                "htpasswd: needs a file name, as in htpasswd:/etc/gitserve/users"
            )
        try:
            return HtpasswdChecker(Path(argstring), threads.deferToThread, reactor)
        except HtpasswdError as e:
            raise usage.UsageError(f"--auth htpasswd: {e}") from e


theHtpasswdCheckerFactory = HtpasswdCheckerFactory()
