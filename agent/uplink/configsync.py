"""Config sync on the device: fetch the compiled config from the collector, keep last-known-good.

Owns ``state_dir/config.json`` (the cached compiled config and its ETag).  The collector
tells a device that a new version exists with a ``reload-config`` cmd; this component
then fetches ``GET {collector}/api/v1/devices/{id}/config`` with ``If-None-Match`` (a 304
costs nothing), validates the body with ``ConfigTree.from_dict`` and hands it to
``runtime.apply_config``.  Anything wrong (network, HTTP error, bad JSON, invalid tree,
a config for another device) leaves the cached config untouched, so a bad rollout can
never brick a room (DESIGN rule 7), and is reported as a ``config_rejected`` event.

HTTP runs on a worker thread, never on the runtime's queue thread: a slow collector must
not delay a button press.  Several triggers while a fetch is running collapse into one
more fetch.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import requests

from ..config import ConfigInvalid, ConfigTree
from ..files import atomic_write

log = logging.getLogger(__name__)

CACHE_FILE = "config.json"
ETAG_FILE = "config.etag"


class FetchResult:
    """What one fetch did: ``status`` is applied | unchanged | rejected | failed."""

    __slots__ = ("status", "version", "reason", "tree", "data")

    def __init__(self, status: str, version: str | None = None, reason: str = "",
                 tree: ConfigTree | None = None, data: dict | None = None):
        self.status, self.version, self.reason, self.tree, self.data = status, version, reason, tree, data

    def __repr__(self) -> str:
        return f"FetchResult({self.status!r}, version={self.version!r}, reason={self.reason!r})"


# --------------------------------------------------------------------------- cache


def cache_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / CACHE_FILE


def etag_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / ETAG_FILE


def load_cached(state_dir: str | Path) -> tuple[dict | None, str | None]:
    """The last-known-good compiled config and the ETag it came with, or (None, None).

    config.json is the plain compiled config (the runtime reads the same file at boot).
    A damaged file is treated as absent (and logged): the device then waits for the
    collector rather than crashing.  The ETag is only trusted if it belongs to the
    cached version; otherwise the fetch is unconditional."""
    path = cache_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ConfigTree.from_dict(data)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError, KeyError, TypeError, ConfigInvalid) as exc:
        log.warning("%s: ignoring damaged cached config (%s)", path, str(exc).splitlines()[0] if str(exc) else exc)
        return None, None
    etag = None
    try:
        meta = json.loads(etag_path(state_dir).read_text(encoding="utf-8"))
        if isinstance(meta, dict) and meta.get("version") == data.get("version") and isinstance(meta.get("etag"), str):
            etag = meta["etag"]
    except (OSError, ValueError):
        pass
    return data, etag


def save_cached(state_dir: str | Path, data: dict, etag: str | None) -> Path:
    """Keep the last-known-good config: durable, as a device may lose power at any moment."""
    path = cache_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(data, separators=(",", ":")), 0o600)
    atomic_write(etag_path(state_dir), json.dumps({"version": data.get("version"), "etag": etag}), 0o600)
    return path


# --------------------------------------------------------------------------- fetching


def config_url(collector_url: str, device: str) -> str:
    return f"{collector_url.rstrip('/')}/api/v1/devices/{device}/config"


def check_compiled(data: Any, device: str) -> ConfigTree:
    """Validate a compiled config body; raise ConfigInvalid with a one-line reason."""
    from ..config.yamlsrc import SourceError

    def bad(msg: str):
        return ConfigInvalid([SourceError("<compiled config>", 0, "", msg)])

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    if data.get("device") != device:
        raise bad(f"config is for device {data.get('device')!r}, not {device!r}")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise bad("version: is required")
    tree = ConfigTree.from_dict(data)
    try:
        tree.find_device(device)
    except KeyError as exc:
        raise bad(str(exc.args[0])) from None
    return tree


class ConfigSync:
    """Runtime component: fetch, validate, cache and apply the compiled config.

    Applying: ``on_apply(tree, data)`` if given (it may raise to refuse), else
    ``runtime.apply_config(data)``, which validates again, switches policy, keeps the
    last-known-good config if it returns False, and emits ``config_applied`` /
    ``config_rejected`` itself.  This component emits those events only for what the
    runtime never sees (a body that fails validation here) or when ``on_apply`` is used.
    """

    name = "configsync"

    def __init__(self, collector_url: str, device: str, state_dir: str | Path, *,
                 auth: tuple[str, str] | None = None, verify: bool | str = True, timeout: float = 10.0,
                 session: requests.Session | None = None,
                 on_apply: Callable[[ConfigTree, dict], Any] | None = None,
                 retry_initial: float = 5.0, retry_max: float = 300.0):
        self.url = config_url(collector_url, device)
        # After a failed fetch (collector or network down) try again, backing off: at
        # first boot there is no MQTT link yet to bring a reload-config.
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self._retry_delay = retry_initial
        self._retry_timer: threading.Timer | None = None
        self.device = device
        self.state_dir = Path(state_dir)
        self.timeout = timeout
        self.session = session or requests.Session()
        if auth is not None:
            self.session.auth = auth
        self.session.verify = verify
        self.on_apply = on_apply
        self.runtime = None
        self.last_result: FetchResult | None = None
        self.fetches = 0
        self._lock = threading.Lock()
        self._busy = False
        self._again = False
        self._idle = threading.Event()
        self._idle.set()
        self._stopped = False
        data, etag = load_cached(self.state_dir)
        self.cached = data
        self.etag = etag

    @classmethod
    def from_bootstrap(cls, bootstrap) -> "ConfigSync":
        """Built from agent.yaml: collector URL, device id, state dir, credentials file, CA."""
        from ..config.credentials import load_credentials

        username, password = load_credentials(bootstrap.credentials)
        auth = (username, password) if username and password else None
        return cls(str(bootstrap.collector_url), bootstrap.device, bootstrap.state_dir, auth=auth,
                   verify=bootstrap.ca_file or True)

    # -------------------------------------------------------------- properties
    @property
    def version(self) -> str | None:
        """The version of the last-known-good config, or None before the first one."""
        return self.cached.get("version") if self.cached else None

    # -------------------------------------------------------------- component API
    def start(self, runtime) -> None:
        self.runtime = runtime
        self.trigger()

    def stop(self) -> None:
        self._stopped = True
        timer = self._retry_timer
        if timer is not None:
            timer.cancel()

    def on_policy(self, policy) -> None:
        pass

    def on_command(self, cmd: dict) -> bool:
        if cmd.get("cmd") != "reload-config":
            return False
        log.info("reload-config requested by %s", cmd.get("by", "?"))
        self.trigger()
        return True

    # -------------------------------------------------------------- fetching
    def trigger(self) -> None:
        """Fetch on a worker thread; a trigger during a fetch queues exactly one more."""
        with self._lock:
            if self._busy:
                self._again = True
                return
            self._busy = True
            self._idle.clear()
        threading.Thread(target=self._worker, name="configsync", daemon=True).start()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    def _worker(self) -> None:
        while True:
            try:
                if not self._stopped:
                    self.fetch()
            except Exception:  # noqa: BLE001 - a bug here must not kill the agent
                log.exception("config fetch failed")
            with self._lock:
                if self._again and not self._stopped:
                    self._again = False
                    continue
                self._schedule_retry()
                self._busy = False
                self._idle.set()
                return

    def _schedule_retry(self) -> None:
        result = self.last_result
        if self._stopped or result is None:
            return
        if result.status != "failed":
            self._retry_delay = self.retry_initial
            return
        if self._retry_timer is not None:  # one already pending
            return
        delay, self._retry_delay = self._retry_delay, min(self._retry_delay * 2, self.retry_max)
        self._retry_timer = threading.Timer(delay, self._retry)
        self._retry_timer.daemon = True
        self._retry_timer.start()

    def _retry(self) -> None:
        with self._lock:
            self._retry_timer = None
        self.trigger()

    def fetch(self) -> FetchResult:
        """One synchronous fetch-validate-apply round (the worker calls this)."""
        self.fetches += 1
        headers = {"Accept": "application/json"}
        if self.cached is not None:
            headers["If-None-Match"] = self.etag or f'"{self.version}"'
        try:
            resp = self.session.get(self.url, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            # The network being down is normal on a Pi; keep running on the cache.
            return self._done(FetchResult("failed", reason=f"cannot reach the collector: {type(exc).__name__}"))
        if resp.status_code == 304:
            return self._done(FetchResult("unchanged", version=self.version))
        if resp.status_code != 200:
            return self._done(FetchResult("failed", reason=f"collector answered HTTP {resp.status_code}"))
        try:
            data = resp.json()
        except ValueError:
            return self._reject(None, "the collector sent a body that is not JSON", emit=True)
        version = data.get("version") if isinstance(data, dict) else None
        try:
            tree = check_compiled(data, self.device)
        except ConfigInvalid as exc:
            return self._reject(version, str(exc.errors[0]) if exc.errors else str(exc), emit=True)
        emit = self.on_apply is not None or getattr(self.runtime, "apply_config", None) is None
        try:
            ok = self._apply(tree, data)
        except Exception as exc:  # noqa: BLE001 - whatever apply refuses is a rejection
            return self._reject(version, f"could not apply: {exc}", emit=True)
        if ok is False:
            return self._reject(version, "the agent refused it", emit=emit)
        save_cached(self.state_dir, data, resp.headers.get("ETag"))
        self.cached, self.etag = data, resp.headers.get("ETag")
        if emit:
            self._emit("config_applied", version=tree.version)
        return self._done(FetchResult("applied", version=tree.version, tree=tree, data=data))

    def _apply(self, tree: ConfigTree, data: dict):
        if self.on_apply is not None:
            return self.on_apply(tree, data)
        apply = getattr(self.runtime, "apply_config", None)
        if apply is None:
            return True
        # Runtime.apply_config hops onto the queue thread and returns its verdict.
        return apply(data)

    def _reject(self, version: str | None, reason: str, *, emit: bool) -> FetchResult:
        log.warning("config %s rejected: %s (keeping %s)", version or "?", reason, self.version or "nothing")
        if emit:
            self._emit("config_rejected", version=version if isinstance(version, str) else None,
                       errors=[reason[:500]], kept=self.version)
        return self._done(FetchResult("rejected", version=version, reason=reason))

    def _emit(self, kind: str, **fields) -> None:
        emit = getattr(self.runtime, "emit_event", None)
        if emit is not None:
            try:
                emit(kind, **fields)
            except Exception:  # noqa: BLE001
                log.exception("could not emit %s", kind)

    def _done(self, result: FetchResult) -> FetchResult:
        if result.status == "failed":
            log.warning("config fetch: %s", result.reason)
        self.last_result = result
        return result
