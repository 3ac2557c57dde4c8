"""Everything that touches the pupil's display: screen blank, lock, idle time, sessions, AUP windows.

One module per backend (``headless``, ``x11``, ``wayland``) behind the abstract bases of
``base`` (``ScreenBackend``, ``LockBackend``, ``IdleSource``, ``Presenter``), the way
gpiozero puts pins behind a ``Factory``; ``backends.make_desktop`` is the one place a
backend is chosen.  ``session`` knows who is logged in and is the one way to run a
program as that user; ``overlay`` manages the overlay child process; ``programs/`` holds
the child processes themselves.

This package imports nothing from the runtime or the components that use it
(agent.core, report, uplink, policy, filter, cli): they pass in what it needs (a
``session_fn``, a PIN hash).  And this ``__init__`` imports nothing at all: the child
programs run as ``python -m agent.desktop.programs.X`` on Debian's /usr/bin/python3,
which has only the standard library and gi, and every package ``__init__`` on that path
runs first.
"""
