"""What a device enforces besides the web filter: the lock (``lock``), logins and shared
accounts (``sessions``), the acceptable-use rules and monitoring notice (``aup``), and the
tamper/bypass guard (``guard``).  Each is a runtime component (agent/core/interfaces.py)."""
