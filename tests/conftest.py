"""Shared pytest wiring.  Keep each block short and sectioned; add yours below."""

import sys
from pathlib import Path

# tests/ on sys.path so test modules can `from services import ...` (works with or
# without a tests/__init__.py).
_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

# ---------------------------------------------------------------------------
# Real services (tests/services.py): mosquitto, mosquitto_factory, dnsmasq_factory,
# postgres (session), postgres_dsn, netns.  Helpers: from services import
# free_port, wait_until, require_binary, require_root, mqtt_client, dig, ...
# ---------------------------------------------------------------------------
from services import (  # noqa: E402,F401
    dnsmasq_factory,
    mosquitto,
    mosquitto_factory,
    netns,
    postgres,
    postgres_dsn,
)

# ---------------------------------------------------------------------------
# The suite writes nothing machine-wide.  Chromium and Firefox read their policies and
# native hosts only from /etc, so a test that forgets to point the agent at its own folder
# leaves a real policy behind for the next run (and for whoever uses this machine).  Tests
# that must use the real folders (test_blockpage's chromium_dirs) put them back as they were.
# ---------------------------------------------------------------------------
import hashlib  # noqa: E402

import pytest  # noqa: E402


def _machine_wide_dirs() -> list[Path]:
    from agent.config.schema import AgentBootstrap

    defaults = AgentBootstrap(device="x", site="y", broker_url="mqtt://b", collector_url="http://c")
    return [Path(p) for p in (defaults.chromium_policy_dir, defaults.chromium_native_hosts_dir,
                              defaults.blockpage_dir, defaults.firefox_policy_dir, defaults.dnsmasq_dir) if p]


def _files_in(dirs: list[Path]) -> dict[str, str]:
    out = {}
    for d in dirs:
        for path in (d.rglob("*") if d.is_dir() else []):
            if path.is_file():
                try:
                    out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                except OSError:
                    out[str(path)] = "unreadable"
    return out


@pytest.fixture(scope="session", autouse=True)
def nothing_written_machine_wide():
    dirs = _machine_wide_dirs()
    before = _files_in(dirs)
    yield
    after = _files_in(dirs)
    changed = sorted(p for p in after if before.get(p) != after[p])
    assert not changed, f"the tests left files in the machine's own folders: {', '.join(changed)}"


# ---------------------------------------------------------------------------
# No process the suite started outlives it as an orphan.  An ingest worker once hung on
# SIGTERM and went on running after its test, reconnecting with its client id to whatever
# broker a later test started on the same port (agent/signals.py tells the story).
# ---------------------------------------------------------------------------
def _orphaned_workers() -> dict[int, str]:
    """Python multiprocessing children of this interpreter whose parent has gone."""
    import psutil

    found = {}
    for proc in psutil.process_iter(["ppid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["ppid"] == 1 and "multiprocessing.spawn" in cmdline and cmdline.startswith(sys.executable):
            found[proc.pid] = cmdline[:200]
    return found


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_workers():
    import os
    import signal

    from services import wait_until

    before = set(_orphaned_workers())
    yield

    def new_orphans() -> dict[int, str]:
        return {p: c for p, c in _orphaned_workers().items() if p not in before}

    try:
        wait_until(lambda: not new_orphans(), 15)  # a worker whose serve just stopped is on its way out
    except TimeoutError:
        pass
    left = new_orphans()
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)  # not for the next run to meet
        except ProcessLookupError:
            pass
    assert not left, f"the tests left orphaned worker processes running: {left}"
