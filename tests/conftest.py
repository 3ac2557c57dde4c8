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
