"""MQTT ingest: device messages from the broker into the store, validated, de-duplicated, batched.

``worker.Ingest`` is one worker (validation, batching, commit-then-acknowledge);
``client.Connection`` is its MQTT connection, the only code that knows paho (public API
only); ``metrics.Metrics`` holds the counters /metrics renders; ``pool.WorkerPool`` runs
``serve --ingest-workers``'s extra worker processes and starts a dead one again.
"""

from .metrics import Metrics
from .worker import INGEST_KINDS, SHARE_GROUP, Ingest

__all__ = ["INGEST_KINDS", "SHARE_GROUP", "Ingest", "Metrics"]
