"""Real service processes for tests: mosquitto, dnsmasq, PostgreSQL, network namespaces.

DESIGN rule 3: tests start REAL mosquitto / dnsmasq / postgres processes on free
loopback ports.  Everything here binds 127.0.0.1 only, on ports picked by
``free_port()`` (never a standard port), keeps its files in a temp dir and is
stopped by a pytest finalizer.  Child processes get PR_SET_PDEATHSIG so they also
die if pytest itself is killed.

Import from test modules with ``from services import ...`` (tests/ is on sys.path,
conftest.py makes sure of it).

When a needed binary is missing, ``require_binary`` skips the test -- except when
the environment has ``CI=true``, where it fails it (a skipped test must not hide a
missing component in CI).
"""

from __future__ import annotations

import atexit
import ctypes
import glob
import itertools
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

# --------------------------------------------------------------------------- basics


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_or_fail(reason: str) -> None:
    """pytest.skip normally, pytest.fail when CI=true."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: missing components are failures)", pytrace=False)
    pytest.skip(reason)


_EXTRA_BIN_DIRS = ["/usr/local/sbin", "/usr/sbin", "/sbin"]


def _postgres_bin_dirs() -> list[str]:
    def ver(d: str) -> tuple:
        m = re.search(r"/postgresql/(\d+)", d)
        return (int(m.group(1)),) if m else (0,)

    return sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=ver, reverse=True)


def find_binary(name: str) -> str | None:
    """Absolute path of an executable, also looking in sbin dirs and PostgreSQL's bin dir."""
    found = shutil.which(name)
    if found:
        return found
    for d in _EXTRA_BIN_DIRS + _postgres_bin_dirs():
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


def require_binary(name: str) -> str:
    """Return the path of ``name``; skip the test if missing (fail when CI=true)."""
    path = find_binary(name)
    if path is None:
        skip_or_fail(f"required program {name!r} is not installed (run scripts/setup.sh)")
    return path  # type: ignore[return-value]


def require_root(why: str = "network namespaces / nftables") -> None:
    if os.geteuid() != 0:
        skip_or_fail(f"this test needs root ({why})")


def _below_ephemeral() -> tuple[int, int]:
    """Ports the kernel never hands out as a connection's local port."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10000, low - 1) if low > 11000 else (0, 0)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now, also free for UDP (dnsmasq listens on both).

    Picked at random below the kernel's ephemeral range, not with bind(0): a port kept for a
    later start (a receiver that comes back, a broker restarted) is then never taken in the
    meantime by some connection's local port -- nor by a client retrying that very port,
    which Linux can connect to itself (a failed run: "Address already in use" when the test's
    webhook receiver came back) -- and ports are not handed out again soon, so nothing left
    over from one test reaches the next one's service."""
    low, high = _below_ephemeral()
    for _ in range(200):
        port = random.randint(low, high) if high else 0
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind((host, port))
                port = s.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("could not find a free port")


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Exceptions raised by the predicate count as "not yet".  Raises TimeoutError
    (with ``message`` and the last exception) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except _StopWaiting:
            raise
        except Exception as exc:  # noqa: BLE001 - "not ready yet"
            last_exc = exc
        if time.monotonic() >= deadline:
            msg = message() if callable(message) else message
            msg = msg or f"condition not met within {timeout:.1f}s"
            if last_exc is not None:
                msg += f" (last error: {last_exc!r})"
            raise TimeoutError(msg)
        time.sleep(interval)


class _StopWaiting(RuntimeError):
    """Raised by a predicate to abort wait_until immediately (e.g. process died)."""


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path | str | None, n: int = 40) -> str:
    if not path:
        return ""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


# ------------------------------------------------------------- process management

try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc
    _libc = None

_PR_SET_PDEATHSIG = 1
_live: "set[subprocess.Popen]" = set()
_live_lock = threading.Lock()

# A tiny guardian process per test process: it is told the process group of every
# service we start and signals the groups that are still registered when its stdin
# reaches EOF, i.e. when this (pytest) process dies, even by SIGKILL.  PDEATHSIG alone
# is not enough: it is cleared when a daemon such as dnsmasq changes credentials.
_GUARDIAN_CODE = r"""
import os, signal, sys, time
groups = {}
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 3 and parts[0] == "add":
        groups[int(parts[1])] = int(parts[2])
    elif len(parts) == 2 and parts[0] == "del":
        groups.pop(int(parts[1]), None)
for pgid, sig in groups.items():
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass
deadline = time.monotonic() + 5
while groups and time.monotonic() < deadline:
    for pgid in list(groups):
        try:
            os.killpg(pgid, 0)
        except OSError:
            groups.pop(pgid)
    time.sleep(0.1)
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""
_guardian: "subprocess.Popen | None" = None
_guardian_pid_owner: int | None = None


def _guard(cmd: str) -> None:
    global _guardian, _guardian_pid_owner
    try:
        if _guardian is None or _guardian_pid_owner != os.getpid() or _guardian.poll() is not None:
            import sys

            _guardian = subprocess.Popen(
                [sys.executable, "-c", _GUARDIAN_CODE],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, text=True, bufsize=1,
            )
            _guardian_pid_owner = os.getpid()
        _guardian.stdin.write(cmd + "\n")
        _guardian.stdin.flush()
    except (OSError, ValueError):
        pass


def _preexec(death_signal: int) -> Callable[[], None]:
    def fn() -> None:
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)

    return fn


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path | str | None = None,
    death_signal: int = signal.SIGTERM,
    **kwargs: Any,
) -> subprocess.Popen:
    """Popen in a new session that dies with pytest (PDEATHSIG) and is killed at exit.

    stdout+stderr go to ``log_path`` (appended) unless given in kwargs."""
    if log_path is not None and "stdout" not in kwargs:
        fh = open(log_path, "ab")
        kwargs["stdout"] = fh
        kwargs.setdefault("stderr", subprocess.STDOUT)
    else:
        fh = None
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(
        list(argv), start_new_session=True, preexec_fn=_preexec(death_signal), **kwargs
    )
    if fh is not None:
        fh.close()
    with _live_lock:
        _live.add(proc)
        _guard(f"add {proc.pid} {int(death_signal)}")  # start_new_session: pgid == pid
    return proc


def terminate(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Send ``sig``, wait up to ``timeout`` s, then SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    with _live_lock:
        if proc in _live:
            _live.discard(proc)
            _guard(f"del {proc.pid}")
    return proc.returncode


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            p.kill()


class ServiceError(RuntimeError):
    pass


# ---------------------------------------------------------------------- mosquitto


class Mosquitto:
    """A mosquitto broker on 127.0.0.1:<free port>, with persistence in its own dir.

    Attributes: host, port, dir, conf_path, log_path, data_dir, proc.
    Methods: start(), stop(), restart(), kill() (SIGKILL, no persistence save),
    is_running (property)."""

    host = "127.0.0.1"

    def __init__(
        self,
        directory: Path,
        *,
        extra_config: str = "",
        password_file: str | Path | None = None,
        acl_file: str | Path | None = None,
        allow_anonymous: bool | None = None,
        persistence: bool = True,
        port: int | None = None,
        conf_file: str | Path | None = None,
        log_file: str | Path | None = None,
    ) -> None:
        """With *conf_file* (a generated mosquitto.conf: ``broker-config``), that file is run
        as it is; give the *port* it listens on and the *log_file* it names."""
        self.binary = require_binary("mosquitto")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.stdout_path = self.dir / "mosquitto.stdout"
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.proc: subprocess.Popen | None = None
        if conf_file is not None:
            assert port, "a generated mosquitto.conf names its own port: pass it"
            self.conf_path = Path(conf_file)
            self.log_path = Path(log_file) if log_file else self.stdout_path
            return
        if allow_anonymous is None:
            allow_anonymous = password_file is None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if allow_anonymous else 'false'}",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # stay root: the temp dir is root-only
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if acl_file is not None:
            lines.append(f"acl_file {acl_file}")
        self.conf_path.write_text("\n".join(lines) + "\n" + extra_config + "\n")
        self.proc: subprocess.Popen | None = None

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Mosquitto":
        if self.is_running:
            return self
        self.proc = spawn([self.binary, "-c", str(self.conf_path)], log_path=self.stdout_path)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise _StopWaiting(self._died_message())
            return port_open(self.port)

        try:
            wait_until(ready, timeout, message=lambda: "mosquitto did not listen\n" + self._logs())
        except _StopWaiting as exc:
            raise ServiceError(str(exc)) from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (mosquitto saves its persistence db) and wait."""
        terminate(self.proc, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: simulates a crash / power loss (no final persistence save)."""
        terminate(self.proc, signal.SIGKILL)

    def restart(self) -> "Mosquitto":
        self.stop()
        return self.start()

    def _logs(self) -> str:
        return f"--- {self.log_path}\n{_tail(self.log_path)}\n--- {self.stdout_path}\n{_tail(self.stdout_path)}"

    def _died_message(self) -> str:
        return f"mosquitto exited with {self.proc.returncode}\n{self._logs()}"

    def __repr__(self) -> str:
        return f"<Mosquitto {self.host}:{self.port} running={self.is_running}>"


def mosquitto_passwd(path: str | Path, users: dict[str, str]) -> Path:
    """Create a mosquitto password file with the given {username: password}."""
    tool = require_binary("mosquitto_passwd")
    path = Path(path)
    path.unlink(missing_ok=True)
    first = True
    for user, password in users.items():
        argv = [tool, "-b"] + (["-c"] if first else []) + [str(path), user, password]
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
        first = False
    os.chmod(path, 0o600)
    return path


def mqtt_client(
    broker: Mosquitto,
    client_id: str = "",
    *,
    username: str | None = None,
    password: str | None = None,
    clean_start: bool = True,
    timeout: float = 10.0,
    **connect_kwargs: Any,
):
    """A connected paho-mqtt 2.x MQTTv5 client with loop_start() running.

    Call ``client.loop_stop(); client.disconnect()`` (or use ``close_client``)."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id or f"test-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    if username is not None:
        c.username_pw_set(username, password)
    connected = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["rc"] = reason_code
        connected.set()

    c.on_connect = on_connect
    c.connect(broker.host, broker.port, keepalive=30, clean_start=clean_start, **connect_kwargs)
    c.loop_start()
    if not connected.wait(timeout):
        c.loop_stop()
        raise TimeoutError(f"MQTT connect to {broker!r} timed out")
    if result["rc"].is_failure:
        c.loop_stop()
        c.disconnect()
        raise ServiceError(f"MQTT connect refused: {result['rc']}")
    c.on_connect = None
    return c


def close_client(client) -> None:
    try:
        client.disconnect()
    finally:
        client.loop_stop()


# ------------------------------------------------------------------------ dnsmasq

_DIG_STATUS = re.compile(r"status:\s*([A-Z]+)")


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<free port> (UDP+TCP), in the foreground, from given config text.
    With netns=NetNS it runs inside that namespace, listening on listen_address.

    Attributes: host, port, pid, dir, conf_path, log_path, pid_file, proc, netns.
    Methods: start(), stop(), reload() (SIGHUP), restart(config=None),
    query(name, qtype='A', tcp=False) -> (rcode, answers)."""

    host = "127.0.0.1"
    # keys we set ourselves unless the test's config text sets them
    _BASE_KEYS = ("port", "listen-address", "bind-interfaces", "no-resolv", "no-hosts", "user", "pid-file", "log-facility")

    def __init__(
        self,
        directory: Path,
        config: str = "",
        *,
        port: int | None = None,
        netns: "NetNS | None" = None,
        listen_address: str = "127.0.0.1",
    ) -> None:
        self.binary = require_binary("dnsmasq")
        self.netns = netns
        self.host = listen_address
        self.dig = require_binary("dig")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf_path = self.dir / "dnsmasq.conf"
        self.log_path = self.dir / "dnsmasq.log"
        self.stdout_path = self.dir / "dnsmasq.stdout"
        self.pid_file = self.dir / "dnsmasq.pid"
        self.proc: subprocess.Popen | None = None
        self.write_config(config)

    def write_config(self, config: str) -> None:
        """(Re)write the config file; takes effect on restart(), not reload()."""
        user_keys = {
            line.split("=", 1)[0].strip()
            for line in config.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        }
        base = {
            "port": f"port={self.port}",
            "listen-address": f"listen-address={self.host}",
            "bind-interfaces": "bind-interfaces",
            "no-resolv": "no-resolv",
            "no-hosts": "no-hosts",
            "user": f"user={pwd.getpwuid(os.geteuid()).pw_name}",
            "pid-file": f"pid-file={self.pid_file}",
            "log-facility": f"log-facility={self.log_path}",
        }
        lines = [v for k, v in base.items() if k not in user_keys]
        if "port" in user_keys:
            raise ValueError("do not set port= in dnsmasq test config; use the port argument")
        self.conf_path.write_text("\n".join(lines) + "\n" + config + "\n")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 10.0) -> "Dnsmasq":
        if self.is_running:
            return self
        argv = [self.binary, "--keep-in-foreground", f"--conf-file={self.conf_path}"]
        if self.netns is not None:
            self.proc = self.netns.popen(argv, log_path=self.stdout_path)
        else:
            self.proc = spawn(argv, log_path=self.stdout_path)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise _StopWaiting(f"dnsmasq exited with {self.proc.returncode}\n{self._logs()}")
            return self.query("ready.invalid", timeout=1)[0] != "TIMEOUT"

        try:
            wait_until(ready, timeout, message=lambda: "dnsmasq did not answer\n" + self._logs())
        except _StopWaiting as exc:
            raise ServiceError(str(exc)) from None
        return self

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.proc, signal.SIGTERM, timeout)

    def reload(self) -> None:
        """SIGHUP: dnsmasq clears its cache and re-reads hosts/addn-hosts/servers-file etc.
        (NOT the main config: use restart() for that)."""
        assert self.proc is not None and self.proc.poll() is None, "dnsmasq not running"
        self.proc.send_signal(signal.SIGHUP)

    def restart(self, config: str | None = None) -> "Dnsmasq":
        self.stop()
        if config is not None:
            self.write_config(config)
        return self.start()

    def query(
        self, name: str, qtype: str = "A", *, tcp: bool = False, timeout: float = 2
    ) -> tuple[str, list[str]]:
        """Ask this dnsmasq with dig. Returns (rcode, answers): rcode is dig's status
        ('NOERROR', 'NXDOMAIN', 'REFUSED', 'SERVFAIL', ...) or 'TIMEOUT'; answers are
        the rdata strings of the ANSWER section (e.g. ['192.0.2.1'])."""
        return dig(
            name, qtype, port=self.port, server=self.host, tcp=tcp, timeout=timeout,
            netns=self.netns.name if self.netns else None,
        )

    def _logs(self) -> str:
        return f"--- {self.log_path}\n{_tail(self.log_path)}\n--- {self.stdout_path}\n{_tail(self.stdout_path)}"

    def __repr__(self) -> str:
        return f"<Dnsmasq {self.host}:{self.port} running={self.is_running}>"


def dig(
    name: str,
    qtype: str = "A",
    *,
    port: int,
    server: str = "127.0.0.1",
    tcp: bool = False,
    timeout: float = 2,
    netns: str | None = None,
) -> tuple[str, list[str]]:
    """Run dig against server:port; returns (rcode, answers) as in Dnsmasq.query."""
    argv = [
        find_binary("dig") or "dig",
        f"@{server}",
        "-p",
        str(port),
        "+tries=1",
        f"+time={max(1, int(timeout))}",
        "+nocookie",
        "+tcp" if tcp else "+notcp",
        name,
        qtype,
    ]
    if netns:
        argv = [find_binary("ip") or "ip", "netns", "exec", netns] + argv
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10).stdout
    m = _DIG_STATUS.search(out)
    if not m:
        return "TIMEOUT", []
    answers: list[str] = []
    in_answer = False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            in_answer = True
            continue
        if in_answer:
            if not line.strip() or line.startswith(";"):
                break
            fields = line.split(None, 4)
            if len(fields) == 5:
                answers.append(fields[4].strip())
    return m.group(1), answers


# ---------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A throw-away PostgreSQL cluster on 127.0.0.1:<free port>, trust auth, fsync off.

    Attributes: host, port, user ('postgres'), dbname, dsn, dir, data_dir, socket_dir,
    log_path.  Methods: new_database(prefix='t') -> dsn, dsn_for(dbname), stop()."""

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self) -> None:
        self.initdb = require_binary("initdb")
        bindir = os.path.dirname(os.path.realpath(self.initdb))
        self.postgres_bin = os.path.join(bindir, "postgres")
        self.pg_ctl = os.path.join(bindir, "pg_ctl")
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                skip_or_fail("running as root but there is no 'postgres' system user for initdb")
            self._as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            self._env = dict(os.environ, HOME=pw.pw_dir, USER="postgres", LOGNAME="postgres")
        else:
            pw = None
            self._as = {}
            self._env = dict(os.environ)
        self._env.pop("PGDATA", None)
        self.dir = Path(tempfile.mkdtemp(prefix="cs-pg-"))
        if pw is not None:
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.data_dir = self.dir / "data"
        self.socket_dir = self.dir / "sock"
        self.log_path = self.dir / "postgres.log"
        self.port = free_port()
        self.dbname = "classroom_test"
        self.proc: subprocess.Popen | None = None
        self._counter = itertools.count(1)

    def _run(self, argv: list[str], timeout: float = 120) -> None:
        r = subprocess.run(
            argv, cwd=self.dir, env=self._env, capture_output=True, text=True, timeout=timeout, **self._as
        )
        if r.returncode != 0:
            raise ServiceError(f"{argv[0]} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def start(self, timeout: float = 60.0) -> "Postgres":
        import psycopg

        if not self.data_dir.exists():
            self._run(
                [
                    self.initdb, "-D", str(self.data_dir), "-U", self.user,
                    "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
                ]
            )
            os.makedirs(self.socket_dir, exist_ok=True)
            if self._as:
                os.chown(self.socket_dir, self._as["user"], self._as["group"])
        self.proc = self._spawn_postgres()

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise _StopWaiting(f"postgres exited with {self.proc.returncode}\n{_tail(self.log_path)}")
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2):
                return True

        try:
            wait_until(ready, timeout, interval=0.1, message=lambda: "postgres not ready\n" + _tail(self.log_path))
        except _StopWaiting as exc:
            raise ServiceError(str(exc)) from None
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')
        return self

    def _spawn_postgres(self) -> subprocess.Popen:
        # stdout/stderr (the server log) go to a file opened here, before dropping privileges.
        log = open(self.log_path, "ab")
        if self._as:
            os.chown(self.log_path, self._as["user"], self._as["group"])
        try:
            return spawn(
                [
                    self.postgres_bin, "-D", str(self.data_dir),
                    "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                    "-k", str(self.socket_dir),
                    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env,
                death_signal=signal.SIGQUIT,  # immediate shutdown if pytest dies
                **self._as,
            )
        finally:
            log.close()

    def dsn_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.dbname)

    def new_database(self, prefix: str = "t") -> str:
        """Create a fresh, empty database and return its DSN."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}_{uuid.uuid4().hex[:6]}".lower()
        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn_for(name)

    @property
    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.is_running:
            try:
                self._run([self.pg_ctl, "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30"], timeout=60)
            except (ServiceError, subprocess.TimeoutExpired):
                pass
        terminate(self.proc, signal.SIGQUIT, timeout=10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<Postgres {self.host}:{self.port} running={self.is_running}>"


# -------------------------------------------------------------- network namespaces

# 198.18.0.0/15 (RFC 2544 benchmarking range), only ever assigned inside test namespaces.
_subnet_counter = itertools.count(0)


def _next_subnet() -> tuple[str, str]:
    n = (os.getpid() * 64 + next(_subnet_counter)) % (2 * 256 * 64)  # /30s in a /15
    base = n * 4
    b2, b3 = divmod(base, 256)
    return f"198.{18 + b2 // 256}.{b2 % 256}.{b3 + 1}", f"198.{18 + b2 // 256}.{b2 % 256}.{b3 + 2}"


class NetNS:
    """A named network namespace ``cs-test-<hex>`` with loopback up.

    Attributes: name, addresses (list of addresses assigned inside it).
    Methods: run(argv, check=True, **kw) -> CompletedProcess (text mode, output captured),
    popen(argv, **kw) -> Popen (killed at delete), link(other) -> (my_addr, other_addr),
    interface(address) -> the name of the link holding it, mosquitto(address, port, directory)
    (an anonymous broker listening there, started and answering), delete()."""

    def __init__(self) -> None:
        self.ip = require_binary("ip")
        self.name = f"cs-test-{uuid.uuid4().hex[:10]}"
        self.addresses: list[str] = []
        self._procs: list[subprocess.Popen] = []
        r = subprocess.run([self.ip, "netns", "add", self.name], capture_output=True, text=True)
        if r.returncode != 0:
            skip_or_fail(f"'ip netns add' is not supported here: {r.stderr.strip()}")
        self.run([self.ip, "link", "set", "lo", "up"])

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return [self.ip, "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        r = subprocess.run(self.exec_argv(argv), timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise ServiceError(f"in netns {self.name}: {' '.join(argv)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen:
        p = spawn(self.exec_argv(argv), **kw)
        self._procs.append(p)
        return p

    def link(self, other: "NetNS") -> tuple[str, str]:
        """Connect two test namespaces with a veth pair on a fresh 198.18.0.0/15 /30.
        Never touches the host namespace. Returns (address here, address in other)."""
        mine, theirs = _next_subnet()
        tag = uuid.uuid4().hex[:8]
        a, b = f"csv{tag}a", f"csv{tag}b"
        subprocess.run(
            [self.ip, "link", "add", a, "netns", self.name, "type", "veth", "peer", "name", b, "netns", other.name],
            check=True, capture_output=True,
        )
        self.run([self.ip, "addr", "add", f"{mine}/30", "dev", a])
        self.run([self.ip, "link", "set", a, "up"])
        other.run([self.ip, "addr", "add", f"{theirs}/30", "dev", b])
        other.run([self.ip, "link", "set", b, "up"])
        self.addresses.append(mine)
        other.addresses.append(theirs)
        return mine, theirs

    def interface(self, address: str) -> str:
        """The interface (a veth end) that has *address* here: what a test takes down for a partition."""
        for line in self.run([self.ip, "-o", "-4", "addr", "show"]).stdout.splitlines():
            if f" {address}/" in line:
                return line.split()[1]
        raise ServiceError(f"no interface with {address} in {self.name}")

    def mosquitto(self, address: str, port: int, directory: Path) -> Path:
        """An anonymous mosquitto on *address*:*port* in this namespace (killed at delete),
        answering before this returns; its config and log go in *directory*, which it returns."""
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "mosquitto.conf"
        conf.write_text(f"listener {port} {address}\nallow_anonymous true\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        self.popen([require_binary("mosquitto"), "-c", str(conf)], log_path=directory / "mosquitto.log")
        probe = [sys.executable, "-c", f"import socket; socket.create_connection(({address!r}, {port}), 1)"]
        wait_until(lambda: self.run(probe, check=False).returncode == 0, 10, interval=0.1)
        return directory

    def delete(self) -> None:
        for p in self._procs:
            terminate(p, signal.SIGTERM, timeout=5)
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True)

    def __repr__(self) -> str:
        return f"<NetNS {self.name} {self.addresses}>"


# ------------------------------------------------------------- pytest fixtures
# (wired into pytest by tests/conftest.py)


@pytest.fixture
def mosquitto_factory(tmp_path):
    """factory(extra_config='', password_file=None, acl_file=None, allow_anonymous=None,
    persistence=True, port=None, start=True) -> Mosquitto (started)."""
    brokers: list[Mosquitto] = []
    counter = itertools.count(1)

    def factory(extra_config: str = "", *, start: bool = True, **kw: Any) -> Mosquitto:
        b = Mosquitto(tmp_path / f"mosquitto-{next(counter)}", extra_config=extra_config, **kw)
        brokers.append(b)
        if start:
            b.start()
        return b

    yield factory
    for b in brokers:
        b.stop()


@pytest.fixture
def mosquitto(mosquitto_factory) -> Mosquitto:
    """A default anonymous broker on 127.0.0.1:<free port>."""
    return mosquitto_factory()


@pytest.fixture
def dnsmasq_factory(tmp_path):
    """factory(config='', port=None, start=True, netns=None, listen_address='127.0.0.1') -> Dnsmasq (started)."""
    servers: list[Dnsmasq] = []
    counter = itertools.count(1)

    def factory(config: str = "", *, start: bool = True, **kw: Any) -> Dnsmasq:
        d = Dnsmasq(tmp_path / f"dnsmasq-{next(counter)}", config, **kw)
        servers.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in servers:
        d.stop()


@pytest.fixture(scope="session")
def postgres():
    """Session-wide PostgreSQL: .dsn, .new_database() -> dsn."""
    require_binary("initdb")
    pg = Postgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.cleanup()


@pytest.fixture
def postgres_dsn(postgres) -> str:
    """DSN of a fresh, empty database for this test."""
    return postgres.new_database()


@pytest.fixture
def netns():
    """factory() -> NetNS; every namespace (and processes started with .popen) is removed after the test."""
    require_root()
    require_binary("ip")
    made: list[NetNS] = []

    def factory() -> NetNS:
        ns = NetNS()
        made.append(ns)
        return ns

    yield factory
    for ns in reversed(made):
        ns.delete()
