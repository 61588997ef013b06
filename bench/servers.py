"""
The servers under comparison, started on this machine on free loopback ports.

  - L{GitserveServer}: C{twistd -n gitserve} from this checkout;
  - L{ApacheReference}: C{git http-backend} as a CGI under Apache 2 with
    mpm_prefork and mod_cgi, configured as git-http-backend(1) shows.

Both serve the same directory, and both expose the pids that make up "the
server" (without its git children) so that memory and CPU can be sampled.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.procfs import childPids, processName, proportionalSetKiB
from tests.conftest import freePort

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent

APACHE_PACKAGE_HINT = "Apache 2 is missing: install it with `apt-get install apache2`."

_APACHE_MODULES = {
    "mpm_prefork_module": "mod_mpm_prefork.so",
    "cgi_module": "mod_cgi.so",
    "alias_module": "mod_alias.so",
    "env_module": "mod_env.so",
    "setenvif_module": "mod_setenvif.so",
    "authz_core_module": "mod_authz_core.so",
}


class MissingDependency(Exception):
    """A program the benchmark needs is not installed; the message says how to get it."""


def waitForHTTP(url: str, process: subprocess.Popen, log: Path, timeout: float = 30.0) -> None:
    """
    Wait until C{url} answers 200, or fail with the server's log if it exits
    or never does.
    """
    deadline = time.monotonic() + timeout
    lastError: object = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError) as error:
            lastError = error
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise RuntimeError(f"server did not answer {url} ({lastError!r}); log:\n{tail}")


def _stopProcess(process: subprocess.Popen | None, grace: float = 10.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Server:
    """
    What the benchmark needs from a server: URLs, push targets and the pids
    whose memory and CPU count as the server's own.
    """

    name: str
    root: Path
    _process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and return when it answers requests."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        _stopProcess(self._process)
        self._process = None

    def _waitUntilServing(self, log: Path) -> None:
        assert self._process is not None
        waitForHTTP(self.url("tiny.git") + "/info/refs?service=git-upload-pack", self._process, log)

    def url(self, repository: str) -> str:
        """The clone URL of the repository at C{root / repository}."""
        raise NotImplementedError

    def serverPids(self) -> list[int]:
        """The processes of the server itself, excluding the git children."""
        raise NotImplementedError

    def memoryKiB(self) -> int:
        """The server's resident memory now, excluding its git children."""
        raise NotImplementedError

    def preparePushTarget(self, path: Path, env: dict[str, str]) -> None:
        """Create an empty bare repository at C{path} that this server accepts pushes into."""
        subprocess.run(["git", "init", "-q", "--bare", str(path)], check=True, env=env)


class GitserveServer(Server):
    """
    C{twistd -n gitserve} from this checkout, pushes allowed anonymously.

    The server runs with a private C{TMPDIR} so that any temporary file it
    writes (a spooled request body, say) shows up where the benchmark watches.
    """

    name = "gitserve"

    def __init__(self, root: Path, workDir: Path, extraArgs: list[str] | None = None) -> None:
        self.root = root
        self.workDir = workDir / "gitserve"
        self.tmpDir = self.workDir / "tmp"
        self.log = self.workDir / "twistd.log"
        self.stderrLog = self.workDir / "stderr.log"
        self.accessLog = self.workDir / "access.log"
        self.extraArgs = extraArgs if extraArgs is not None else ["--anonymous-push"]
        self.port = 0
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        shutil.rmtree(self.workDir, ignore_errors=True)
        self.tmpDir.mkdir(parents=True)
        self.port = freePort()
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            found = shutil.which("twistd")
            if found is None:
                raise MissingDependency("twistd is missing: pip install twisted")
            twistd = Path(found)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            # twistd finds the gitserve plugin by scanning sys.path for twisted/plugins.
            "PYTHONPATH": str(REPOSITORY_ROOT),
            "TMPDIR": str(self.tmpDir),
            "HOME": str(self.workDir),
        }
        args = [
            str(twistd),
            "-n",
            "--pidfile=",
            f"--logfile={self.log}",
            "gitserve",
            "--root",
            str(self.root),
            "--listen",
            f"tcp:{self.port}:interface=127.0.0.1",
            # Apache writes one too: the same work on both sides.
            f"--access-log={self.accessLog}",
            *self.extraArgs,
        ]
        # The twistd script execs the interpreter, so this pid is the server's.
        self._process = subprocess.Popen(
            args,
            env=env,
            cwd=self.workDir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.stderrLog, "wb"),
        )
        self._waitUntilServing(self.log)

    def url(self, repository: str) -> str:
        return f"http://127.0.0.1:{self.port}/{repository}"

    @property
    def pid(self) -> int:
        """The pid of the twistd process."""
        assert self._process is not None
        return self._process.pid

    def serverPids(self) -> list[int]:
        return [self.pid]

    def logFiles(self) -> set[str]:
        """The files the server writes on purpose: not temporary files."""
        return {str(self.log), str(self.stderrLog), str(self.accessLog)}

    def memoryKiB(self) -> int:
        # One process: its RSS is what it costs.
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0


class ApacheReference(Server):
    """
    git http-backend under Apache 2 (mpm_prefork + mod_cgi), configured as
    git-http-backend(1) shows, on a free loopback port.

    Run as root, Apache's workers switch to an unprivileged user (www-data),
    which then runs git: it must read the corpora (world-readable as generated)
    and write the push targets (L{preparePushTarget} hands them over), and git
    must not refuse the root-owned repositories as "dubious ownership", which
    a private global git config with C{safe.directory=*} settles. Run as an
    ordinary user, Apache keeps that user and none of this matters.
    """

    name = "http-backend"

    def __init__(self, root: Path, workDir: Path) -> None:
        self.root = root
        self.workDir = workDir / "apache"
        self.config = self.workDir / "httpd.conf"
        self.errorLog = self.workDir / "error.log"
        self.port = 0
        self._process: subprocess.Popen | None = None
        self.runUser = self._pickRunUser()

    @staticmethod
    def _pickRunUser() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for candidate in ("www-data", "apache", "nobody"):
            try:
                return pwd.getpwnam(candidate)
            except KeyError:
                continue
        raise RuntimeError("running as root, but there is no unprivileged user for Apache")

    @staticmethod
    def findApache() -> tuple[Path, Path]:
        """The Apache binary and its modules directory, or L{MissingDependency}."""
        binary = shutil.which("apache2") or shutil.which("apache2", path="/usr/sbin:/usr/bin")
        modules = Path("/usr/lib/apache2/modules")
        if binary is None or not modules.is_dir():
            raise MissingDependency(APACHE_PACKAGE_HINT)
        missing = [name for name in _APACHE_MODULES.values() if not (modules / name).exists()]
        if missing:
            raise MissingDependency(f"Apache modules {missing} are missing. {APACHE_PACKAGE_HINT}")
        backend = Path("/usr/lib/git-core/git-http-backend")
        if not backend.exists():
            raise MissingDependency("git-http-backend is missing: apt-get install git")
        return Path(binary), modules

    def writeConfig(self, modules: Path) -> None:
        """Write the Apache configuration for the current port."""
        loads = "\n".join(
            f"LoadModule {name} {modules / fileName}" for name, fileName in _APACHE_MODULES.items()
        )
        userLines = ""
        if self.runUser is not None:
            userLines = f"User {self.runUser.pw_name}\nGroup #{self.runUser.pw_gid}"
        gitConfig = self.workDir / "gitconfig"
        gitConfig.write_text("[safe]\n\tdirectory = *\n")
        self.config.write_text(f"""\
# Written by bench/servers.py: git http-backend as git-http-backend(1) shows it.
ServerRoot {self.workDir}
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
PidFile {self.workDir}/httpd.pid
DefaultRuntimeDir {self.workDir}/run
ErrorLog {self.errorLog}
LogLevel warn
LogFormat "%h %l %u %t \\"%r\\" %>s %b \\"%{{Referer}}i\\" \\"%{{User-Agent}}i\\"" combined
CustomLog {self.workDir}/access.log combined
{loads}
{userLines}

# Enough idle workers for 16 concurrent clients, and none reaped mid-run (their
# CPU time would vanish from the figures).
StartServers 20
MinSpareServers 20
MaxSpareServers 64
ServerLimit 64
MaxRequestWorkers 64
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
LimitRequestBody 0
Timeout 300

SetEnv GIT_PROJECT_ROOT {self.root}
SetEnv GIT_HTTP_EXPORT_ALL
SetEnv GIT_CONFIG_NOSYSTEM 1
SetEnv GIT_CONFIG_GLOBAL {gitConfig}
SetEnvIf Git-Protocol ".*" GIT_PROTOCOL=$0
ScriptAlias /git/ /usr/lib/git-core/git-http-backend/

<Directory "/usr/lib/git-core">
    Options +ExecCGI
    Require all granted
</Directory>
""")

    def start(self) -> None:
        binary, modules = self.findApache()
        shutil.rmtree(self.workDir, ignore_errors=True)
        (self.workDir / "run").mkdir(parents=True)
        self.port = freePort()
        self.writeConfig(modules)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        # A session of its own: on SIGTERM, prefork's parent signals its whole
        # process group, which would otherwise include this benchmark.
        self._process = subprocess.Popen(
            [str(binary), "-f", str(self.config), "-DFOREGROUND"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workDir / "stderr.log", "wb"),
            start_new_session=True,
        )
        self._waitUntilServing(self.errorLog)

    def url(self, repository: str) -> str:
        return f"http://127.0.0.1:{self.port}/git/{repository}"

    def serverPids(self) -> list[int]:
        assert self._process is not None
        master = self._process.pid
        # The workers, not the CGI processes they fork (those run git).
        return [master] + [pid for pid in childPids(master) if processName(pid) == "apache2"]

    def memoryKiB(self) -> int:
        # Prefork workers share most pages with the parent: the sum of their
        # proportional set sizes is what the server as a whole costs.
        return sum(proportionalSetKiB(pid) for pid in self.serverPids())

    def preparePushTarget(self, path: Path, env: dict[str, str]) -> None:
        super().preparePushTarget(path, env)
        subprocess.run(
            ["git", "-C", str(path), "config", "http.receivepack", "true"], check=True, env=env
        )
        if self.runUser is not None:
            for directory, _, files in os.walk(path):
                os.chown(directory, self.runUser.pw_uid, self.runUser.pw_gid)
                for name in files:
                    os.chown(
                        os.path.join(directory, name), self.runUser.pw_uid, self.runUser.pw_gid
                    )
