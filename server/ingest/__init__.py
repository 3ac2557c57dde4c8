"""MQTT ingest: device messages from the broker into the store (see worker.py)."""

from .metrics import Metrics
from .worker import INGEST_KINDS, SHARE_GROUP, Ingest

__all__ = ["INGEST_KINDS", "SHARE_GROUP", "Ingest", "Metrics"]
