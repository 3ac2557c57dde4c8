"""The agent's runtime and its plumbing: the event-queue thread and scheduler, clocks, the
control socket, systemd notification, and the interfaces every component is written
against (``interfaces``).  docs/architecture.md draws the threads and the press path."""
