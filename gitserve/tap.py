"""
The twistd plugin's options and service: `twistd -n gitserve --root DIR --listen ENDPOINT`.

Only this module touches the global reactor (in L{makeService}, and only when
it is not given one) and the process environment; everything below it gets
them passed in.
"""

from __future__ import annotations

import os
import shutil
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService, MultiService
from twisted.cred import strcred
from twisted.cred.credentials import IUsernamePassword
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorSSL, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage

from gitserve.app.listening import ListeningService
from gitserve.app.proxy import (
    PROXY_PREFIX,
    Network,
    parseNetwork,
    proxiedServerFromString,
    warnIfProxyUntrusted,
)
from gitserve.app.shutdown import (
    DEFAULT_SHUTDOWN_GRACE,
    DrainAnnouncement,
    GracefulShutdownService,
)
from gitserve.app.systemd import SystemdNotifier, SystemdNotifyService
from gitserve.app.tls import (
    CertificateReloadService,
    ReloadableServerTLS,
    reloadableServerFromString,
    warnIfPlaintextAuth,
)
from gitserve.auth import DEFAULT_REALM, BasicAuthenticator, makePortal
from gitserve.core.advertisement import CapabilityCache
from gitserve.core.browse import BrowseData
from gitserve.core.jobs import JobLimiter, defaultMaxJobs
from gitserve.core.metrics import IMetrics, NullMetrics
from gitserve.core.operations import GitCore
from gitserve.core.packcache import PackCache
from gitserve.core.policy import Policy
from gitserve.core.process import Caller, GitBackend
from gitserve.core.repository import ConfigCache, parseGitSize
from gitserve.gitd.daemon import GitDaemonFactory
from gitserve.http.accesslog import accessLogFormatter
from gitserve.http.browse import BrowsePages
from gitserve.http.channel import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, GitSite
from gitserve.http.context import MAX_PUSH_SIZE, HTTPContext
from gitserve.http.routes import RootResource
from gitserve.twistedinternals import PipeReadingSpawner

if TYPE_CHECKING:
    from gitserve.app.metrics import PrometheusMetrics

DEFAULT_LISTEN = "tcp:8080"

# --ssh-host-key's default: beside twistd's own twistd.pid and twistd.log,
# in the directory the daemon starts in.
DEFAULT_SSH_HOST_KEY = "ssh_host_ed25519_key"


def parseSize(text: str) -> int:
    """
    A byte count with an optional k/m/g suffix (binary, as git's own sizes).

    @raise usage.UsageError: for anything else.
    """
    size = parseGitSize(text.encode("utf-8", "replace"))
    if size is None:
        raise usage.UsageError(f"not a size: {text!r} (use e.g. 500m or 2g)")
    return size


def _positive(name: str, text: str, integer: bool = False) -> float:
    """A positive number for option C{name}, or a usage error saying so."""
    try:
        value = int(text) if integer else float(text)
    except (TypeError, ValueError):
        value = -1
    if value <= 0:
        raise usage.UsageError(f"--{name} must be a positive {'integer' if integer else 'number'}")
    return value


class Options(strcred.AuthOptionMixin, usage.Options):
    """The command line of `twistd gitserve`."""

    # HTTP Basic carries a username and a password, nothing else.
    supportedInterfaces = (IUsernamePassword,)

    synopsis = "[options]"
    longdesc = (
        "Serve every git repository under --root over smart and dumb HTTP(S). "
        "Fetch is anonymous; push needs an authenticated user, http.receivepack=true "
        "in the repository, or --anonymous-push."
    )

    optFlags = [
        ["anonymous-push", None, "Allow push without authentication on every repository."],
        ["require-export-ok", None, "Serve only repositories holding git-daemon-export-ok."],
        ["private", None, "Every request (fetch too) needs an authenticated user."],
        ["no-browse", None, "No pages for browsers: / and /<repo> answer 404 as before."],
        [
            "no-splice",
            None,
            "Pass every byte through Twisted: never splice(2) or sendfile(2) git's output"
            " or the dumb protocol's files to the socket, nor a push body into git.",
        ],
    ]
    optParameters = [
        ["root", None, ".", "The directory of repositories to serve."],
        ["max-push-size", None, "2g", "Refuse push bodies larger than this (k/m/g suffixes)."],
        ["realm", None, DEFAULT_REALM, "The HTTP Basic realm git shows when it asks."],
        ["access-log", None, None, "Write the access log (combined format) to this file."],
        ["access", None, None, "Access rules in gitolite's conf syntax (re-read on change)."],
        ["pack-cache", None, None, "Share identical fetches' packs, kept in this directory."],
        ["pack-cache-size", None, "1g", "Most disk the pack cache keeps (k/m/g suffixes)."],
        [
            "shutdown-grace",
            None,
            str(int(DEFAULT_SHUTDOWN_GRACE)),
            "On SIGTERM, seconds to let transfers finish before ending them.",
        ],
        ["max-jobs", None, None, "Concurrent git children (default: 4 x CPUs)."],
        ["max-queue", None, None, "Requests that may wait for a job (default: 8 x --max-jobs)."],
        [
            "idle-timeout",
            None,
            str(int(DEFAULT_IDLE_TIMEOUT)),
            "Drop a connection whose client sends or reads nothing for this many seconds.",
        ],
        [
            "header-timeout",
            None,
            str(int(DEFAULT_HEADER_TIMEOUT)),
            "Drop a connection whose request headers take longer than this.",
        ],
        [
            "ssh-host-key",
            None,
            DEFAULT_SSH_HOST_KEY,
            "The SSH server's private key; created (ed25519, mode 0600) if missing.",
        ],
        [
            "ssh-keys",
            None,
            None,
            "Users' SSH public keys, gitolite's keydir: DIR/alice.pub, DIR/x/alice@laptop.pub.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint (off by default).",
        ],
        [
            "drain-delay",
            None,
            "0",
            "On SIGTERM, answer /-/health with 503 and keep serving this many seconds "
            "before closing the listeners (for a load balancer's health checks).",
        ],
    ]

    compData = usage.Completions(optActions={"root": usage.CompleteDirs()})

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["listen-ssh"] = []
        self["listen-git"] = []
        self["trusted-proxy"] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse as L{usage.Options} does, but accept long options only by their
        full names.

        Twisted parses with C{getopt}, which takes any unambiguous prefix of a
        long option: C{--access rules.conf} would silently mean
        C{--access-log rules.conf}, and a future option could change what an
        abbreviation in a unit file means. So every long option written
        before the arguments end must be a whole name.

        @raise usage.UsageError: naming the first option that is not one.
        """
        if options is None:
            options = sys.argv[1:]
        # Twisted's shell completion passes its own option; leave it to Twisted.
        if not (len(options) > 1 and options[-2] == "--_shell-completion"):
            self._refuseAbbreviations(options)
        super().parseOptions(options)

    def _refuseAbbreviations(self, arguments: list[str]) -> None:
        """
        Walk C{arguments} as C{getopt.getopt} does (an option's value may be
        the next argument; C{--} or the first non-option ends the options)
        and refuse a long option that is not written in full.
        """
        takesValue = {name.rstrip("="): name.endswith("=") for name in self.longOpt}
        # In getopt's short spec, a letter followed by ":" takes a value.
        shortWithValue = {self.shortOpt[i - 1] for i, c in enumerate(self.shortOpt) if c == ":"}
        index = 0
        while index < len(arguments):
            argument = arguments[index]
            if argument == "--" or not argument.startswith("-") or argument == "-":
                return
            if argument.startswith("--"):
                name, equals, _ = argument[2:].partition("=")
                if name not in takesValue:
                    # getopt's own words for an option it does not know.
                    raise usage.UsageError(f"option --{name} not recognized")
                if takesValue[name] and not equals:
                    index += 1
            else:
                for position, letter in enumerate(argument[1:], start=2):
                    if letter in shortWithValue:
                        if position == len(argument):
                            index += 1
                        break
            index += 1

    def opt_listen(self, description: str) -> None:
        """A Twisted endpoint to listen on (repeatable; default tcp:8080)."""
        self["listen"].append(description)

    def opt_listen_ssh(self, description: str) -> None:
        """A Twisted endpoint to serve git over SSH on (repeatable; needs --ssh-keys)."""
        self["listen-ssh"].append(description)

    def opt_listen_git(self, description: str) -> None:
        """A Twisted endpoint to serve the git:// protocol on (repeatable)."""
        self["listen-git"].append(description)

    def opt_trusted_proxy(self, network: str) -> None:
        """
        Accept connections on haproxy: listeners only from this address or
        network (repeatable; default: from anyone who can connect).
        """
        try:
            self["trusted-proxy"].append(parseNetwork(network))
        except ValueError as e:
            raise usage.UsageError(f"--trusted-proxy {network!r}: {e}") from e

    def postOptions(self) -> None:
        """
        Check and convert every option. Endpoints are not built here: that
        needs a reactor, which L{makeService} is given.
        """
        root = Path(self["root"])
        if not root.is_dir():
            raise usage.UsageError(f"--root {self['root']!r} is not a directory")
        self["root"] = root.resolve()
        self["max-push-size"] = parseSize(self["max-push-size"])
        self["pack-cache-size"] = parseSize(self["pack-cache-size"])
        for name in ("shutdown-grace", "idle-timeout", "header-timeout"):
            self[name] = _positive(name, self[name])
        try:
            self["drain-delay"] = float(self["drain-delay"])
        except ValueError:
            self["drain-delay"] = -1.0
        if not 0 <= self["drain-delay"] < float("inf"):
            raise usage.UsageError("--drain-delay must be a number of seconds, 0 or more")
        self["max-jobs"] = (
            defaultMaxJobs()
            if self["max-jobs"] is None
            else _positive("max-jobs", self["max-jobs"], True)
        )
        if self["max-queue"] is None:
            self["max-queue"] = 8 * self["max-jobs"]
        elif not self["max-queue"].isdigit():
            raise usage.UsageError("--max-queue must be a whole number (0: refuse when busy)")
        else:
            self["max-queue"] = int(self["max-queue"])
        self.setdefault("credCheckers", [])
        if self["access"] is not None:
            # Imported only for --access: the rule engine's regex module is
            # memory a daemon without rules need not carry.
            from gitserve.core.access import AccessConfError
            from gitserve.core.accesscontrol import AccessControl

            try:
                self["access"] = AccessControl(self["access"])
            except AccessConfError as e:
                raise usage.UsageError(str(e)) from e
        if self["private"] and not self["credCheckers"]:
            raise usage.UsageError("--private needs --auth: nobody could log in")
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["listen-ssh"]:
            if self["ssh-keys"] is None:
                raise usage.UsageError("--listen-ssh needs --ssh-keys DIR: nobody could log in")
            if not Path(self["ssh-keys"]).is_dir():
                raise usage.UsageError(f"--ssh-keys {self['ssh-keys']!r} is not a directory")
            self["ssh-keys"] = Path(self["ssh-keys"]).resolve()
            self["ssh-host-key"] = Path(self["ssh-host-key"]).absolute()


def listeningEndpoints(
    reactor: IReactorSSL,
    descriptions: list[str],
    trusted: list[Network] | None = None,
    option: str = "--listen",
) -> list[tuple[str, IStreamServerEndpoint, ReloadableServerTLS | None]]:
    """
    Build the endpoint of each --listen description, with its reloadable
    certificate when it serves TLS.

    @raise usage.UsageError: for a description that does not parse or whose
        certificate cannot be loaded: start-up stops, naming the option.
    """
    built = []
    for description in descriptions:
        try:
            if description.startswith(PROXY_PREFIX):
                endpoint, tls = proxiedServerFromString(reactor, description, trusted or [])
            else:
                endpoint, tls = reloadableServerFromString(reactor, description)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(f"{option} {description!r} is not an endpoint: {e}") from e
        except Exception as e:
            # A key that does not match its certificate, or pyOpenSSL's errors.
            raise usage.UsageError(f"{option} {description!r}: TLS setup failed: {e}") from e
        built.append((description, endpoint, tls))
    return built


def doorEndpoints(
    reactor: Any, option: str, descriptions: list[str]
) -> list[tuple[str, IStreamServerEndpoint]]:
    """
    Build the endpoint of each --listen-ssh or --listen-git description.

    @raise usage.UsageError: naming the option, for one that does not parse.
    """
    built = []
    for description in descriptions:
        try:
            built.append((description, serverFromString(reactor, description)))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(f"--{option} {description!r} is not an endpoint: {e}") from e
    return built


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    Assemble the daemon: one site, one listening service per --listen.

    @param reactor: what to listen, spawn git, keep time and run threads
        with; the global reactor (imported only then) when L{None}, so that
        tests can build the whole service on a fake one.
    @raise usage.UsageError: for a --listen description that does not parse
        or whose certificate cannot be loaded; under twistd (C{options} has a
        parent), that usage error is printed as twistd prints its own and the
        process exits with status 1.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        reactor = globalReactor
    try:
        endpoints = listeningEndpoints(reactor, options["listen"], options["trusted-proxy"])
        sshEndpoints = doorEndpoints(reactor, "listen-ssh", options["listen-ssh"])
        gitEndpoints = doorEndpoints(reactor, "listen-git", options["listen-git"])
        hostKey = None
        if sshEndpoints:
            from gitserve.ssh.keys import loadOrCreateHostKey

            try:
                hostKey = loadOrCreateHostKey(options["ssh-host-key"])
            except Exception as e:
                raise usage.UsageError(
                    f"--ssh-host-key {str(options['ssh-host-key'])!r}: {e}"
                ) from e
        metricsEndpoints = listeningEndpoints(
            reactor, [options["metrics"]] if options["metrics"] else [], option="--metrics"
        )
    except usage.UsageError as error:
        if options.parent is None:
            raise
        # twistd turns only option-parsing errors into a usage message; one
        # from makeService would end start-up with a traceback instead. Say
        # it exactly as twistd says the others, as it was said when the
        # endpoints were built while parsing.
        print(options.parent)
        print(f"{' '.join(sys.argv[0:2])}: {error}")
        sys.exit(1)
    log = Logger()
    gitPath = shutil.which("git", path=os.environ.get("PATH"))
    available = gitPath is not None
    if gitPath is None:
        log.warn(
            "no git binary on PATH: fetches are served over the dumb protocol only, "
            "and pushes will fail"
        )
        gitPath = "git"
    configs = ConfigCache(home=os.environ.get("HOME"))
    # Blocking work (password hashing, dumb ref lists) goes to the reactor's pool.
    runInThread = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    jobs = JobLimiter(options["max-jobs"], options["max-queue"])
    access = options.get("access")
    accessHooks = None
    if access is not None:
        from gitserve.core.accesscontrol import makeHooksDirectory

        accessHooks = makeHooksDirectory()
    prometheus: PrometheusMetrics | None = None
    if metricsEndpoints:
        # Imported only for --metrics: prometheus_client and the modules it
        # pulls in are 1.3 MB of every daemon's resident memory.
        from gitserve.app.metrics import PrometheusMetrics

        prometheus = PrometheusMetrics()
    metrics: IMetrics = prometheus or NullMetrics()
    backend = GitBackend(
        reactor=PipeReadingSpawner(reactor),
        gitPath=gitPath,
        environ=dict(os.environ),
        available=available,
        accessHooks=accessHooks,
    )
    core = GitCore(
        root=options["root"],
        policy=Policy(
            configs=configs,
            anonymousPush=options["anonymous-push"],
            requireExportOk=options["require-export-ok"],
            private=options["private"],
            access=access,
            root=options["root"],
            canAuthenticate=bool(options["credCheckers"]),
        ),
        backend=backend,
        clock=reactor,
        configs=configs,
        capabilities=CapabilityCache(
            gitPath=gitPath, environment=backend.environment(Caller(remoteAddr=""))
        ),
        runBlocking=runInThread,
        jobs=jobs,
        metrics=metrics,
    )
    metrics.watchJobs(jobs)
    if core.capabilities is not None:
        metrics.watchCache("advertisement", core.capabilities)
    if options["pack-cache"] is not None:
        core.packCache = PackCache(
            Path(options["pack-cache"]),
            options["pack-cache-size"],
            inputs=core.capabilities,  # type: ignore[arg-type]
            clock=reactor,
            runBlocking=runInThread,
            # A flight splices git's pipe into its file, unless told not to
            # or the platform has no splice(2).
            pipeReactor=None if options["no-splice"] or not hasattr(os, "splice") else reactor,
        )
        core.packCache.open()
        metrics.watchCache("pack", core.packCache)
    context = HTTPContext(
        core,
        maxPushSize=options["max-push-size"],
        # git's output goes from its pipe to a plain socket with splice(2)
        # (gitserve.http.relay), and dumb files with sendfile(2)
        # (gitserve.http.dumb), unless told not to.
        pipeReactor=None if options["no-splice"] else reactor,
    )
    if not options["no-browse"]:
        context.browse = BrowsePages(context, BrowseData(core.root, core.policy))
    checkers = options["credCheckers"]
    if checkers:
        authenticator = BasicAuthenticator(
            makePortal(checkers, runInThread), options["realm"], metrics
        )
        context.authenticate = lambda request: authenticator.authenticate(
            request.getHeader(b"Authorization"),
            str(getattr(request.getClientAddress(), "host", "-")),
        )
        context.challenge = authenticator.challenge
    site = GitSite(
        RootResource(context),
        idleTimeout=options["idle-timeout"],
        headerTimeout=options["header-timeout"],
        logPath=options["access-log"],
        logFormatter=accessLogFormatter,
        reactor=reactor,
        metrics=metrics,
    )
    metrics.watchConnections("http", lambda: len(site.channels))
    # On SIGTERM, /-/health says 503 first; listeners close after --drain-delay.
    announcement = DrainAnnouncement(context.health, options["drain-delay"], reactor)
    top = MultiService()
    if backend.accessHooks is not None:
        from gitserve.core.accesscontrol import HooksDirectoryService

        HooksDirectoryService(backend.accessHooks).setServiceParent(top)
    listeners = []
    for description, endpoint, tls in endpoints:
        listener = ListeningService(description, endpoint, site, reactor, announcement.begin)
        listener.setServiceParent(top)
        listeners.append((listener, tls))
    for description, endpoint, _ in metricsEndpoints:
        # After the git listeners, whose readiness line comes first.
        from gitserve.app.metrics import metricsSite

        assert prometheus is not None
        ListeningService(
            f"--metrics {description}",
            endpoint,
            metricsSite(prometheus, context.health),
            reactor,
            announcement.begin,
        ).setServiceParent(top)

    def whenListening() -> Deferred[None]:
        def check(_: object) -> None:
            for listener, tls in listeners:
                if listener.port is None:
                    raise RuntimeError(f"not listening on {listener.description}")
                if checkers:
                    warnIfPlaintextAuth(listener.description, listener.port.getHost(), tls)
                warnIfProxyUntrusted(
                    listener.description, listener.port.getHost(), options["trusted-proxy"]
                )

        # Asked once the services have started, when every listener has begun.
        started = [listener.listening for listener, _ in listeners if listener.listening]
        return gatherResults(started).addCallback(check)

    # The SSH and git:// doors: the same core, their own listeners.
    doors: list[Any] = []
    if hostKey is not None:
        from gitserve.ssh.keys import KeyDirectory
        from gitserve.ssh.server import GitSSHFactory

        doors += [
            (
                endpoint,
                description,
                GitSSHFactory(
                    core,
                    hostKey,
                    KeyDirectory(options["ssh-keys"]),
                    reactor,
                    options["idle-timeout"],
                ),
            )
            for description, endpoint in sshEndpoints
        ]
    if gitEndpoints:
        gitDaemon = GitDaemonFactory(core, reactor, options["idle-timeout"])
        doors += [(endpoint, description, gitDaemon) for description, endpoint in gitEndpoints]
    doorListeners: dict[str, list[ListeningService]] = {"ssh": [], "git": []}
    for endpoint, description, factory in doors:
        listener = ListeningService(description, endpoint, factory, reactor)
        listener.setServiceParent(top)
        listeners.append((listener, None))
        kind = "ssh" if (description, endpoint) in sshEndpoints else "git"
        doorListeners[kind].append(listener)
    if context.browse is not None:
        # The pages show these clone URLs once the doors listen.
        context.browse.sshPort = partial(_portOf, doorListeners["ssh"])
        context.browse.gitPort = partial(_portOf, doorListeners["git"])
    CertificateReloadService(
        [tls for _, tls in listeners if tls is not None], reactor.callFromThread
    ).setServiceParent(top)
    GracefulShutdownService(
        jobs,
        site,
        options["shutdown-grace"],
        backend.killGrace,
        reactor,
        doors=list({id(factory): factory for _, _, factory in doors}.values()),
        announcement=announcement,
    ).setServiceParent(top)
    # Last, so that it is stopped first: STOPPING=1 before anything else.
    SystemdNotifyService(
        SystemdNotifier(os.environ),
        whenListening,
        f"serving {options['root']} (up to {options['max-jobs']} git jobs)",
    ).setServiceParent(top)
    log.info("gitserve serving {root}", root=str(options["root"]))
    return top


def _portOf(listeners: list[ListeningService]) -> int | None:
    """The port the first of C{listeners} listens on, once it does (for clone URLs)."""
    for listener in listeners:
        if listener.port is not None:
            port = getattr(listener.port.getHost(), "port", None)
            if isinstance(port, int):
                return port
    return None


__all__ = ["Options", "makeService", "MAX_PUSH_SIZE"]
