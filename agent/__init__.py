"""classroom-agent: the on-device half of classroom-safety.

The agent owns the report button, the blank screen, the key-stage filter, the lock
policy and the durable outbox that carries events to the collector. See docs/ for the
protocol and config reference.
"""

__version__ = "0.1.0"
