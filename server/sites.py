"""The schools (sites) one collector serves, each with its own config tree.

A school runs a collector for itself; a trust or local authority runs one for many
schools (DESIGN.md "Growing past one school").  Either way the collector holds one live
config tree per site: the trees given with ``serve --config`` at start (one per school),
replaced site by site by what technicians publish (server/rollout.py).  ``Sites`` is that
set, shared by the HTTP app (``app.state.sites``), rollout, and the background work
(dark-device checks, retention, the weekly digest), which run once per site.

Room ids are a school's own ("5b" exists in most primary schools), so anything keyed by
room is keyed by (site, room); device ids are the broker's usernames and must be unique
across the collector, which ``conflicts`` checks before a tree is published.
"""

from __future__ import annotations

import threading
from typing import Iterable, Iterator

from agent.config import ConfigTree


class Sites:
    """Thread-safe {site id: live ConfigTree}."""

    def __init__(self, trees: Iterable[ConfigTree] = ()) -> None:
        self._trees: dict[str, ConfigTree] = {}
        self._lock = threading.Lock()
        for tree in trees:
            self.set(tree)

    def set(self, tree: ConfigTree) -> None:
        """Make *tree* the live tree of its site (``site.yaml`` ``site:``)."""
        with self._lock:
            self._trees = {**self._trees, tree.site.site: tree}

    def tree(self, site: str | None) -> ConfigTree | None:
        return self._trees.get(site) if site else None

    def ids(self) -> list[str]:
        return sorted(self._trees)

    def trees(self) -> list[ConfigTree]:
        snapshot = self._trees
        return [snapshot[k] for k in sorted(snapshot)]

    def __iter__(self) -> Iterator[ConfigTree]:
        return iter(self.trees())

    def __len__(self) -> int:
        return len(self._trees)

    def single(self) -> str | None:
        """The site id when the collector serves exactly one school (the common case)."""
        snapshot = self._trees
        return next(iter(snapshot)) if len(snapshot) == 1 else None

    def tree_for_device(self, device: str) -> ConfigTree | None:
        """The live tree whose rooms list *device* (device ids are unique across sites)."""
        for tree in self.trees():
            if device in tree.device_ids():
                return tree
        return None

    def conflicts(self, tree: ConfigTree) -> list[str]:
        """Why *tree* cannot be live next to the other sites' trees: a device id another
        school already uses (it is that device's broker and collector username)."""
        problems = []
        mine = set(tree.device_ids())
        for other in self.trees():
            if other.site.site == tree.site.site:
                continue
            for device in sorted(mine & set(other.device_ids())):
                # The other school is not named: a technician sees only their own school.
                problems.append(f"rooms: device {device!r} is already used by another school on this collector; "
                                "device ids must be unique across its schools (they are broker usernames)")
        return problems


def trees_of(source) -> list[ConfigTree]:
    """The trees a background task runs over: *source* is one live tree, None, or every
    school's (an iterable of trees, e.g. ``Sites``)."""
    if source is None:
        return []
    if hasattr(source, "site"):
        return [source]
    return list(source)


def tree_of_site(source, site: str | None) -> ConfigTree | None:
    """*site*'s live tree from *source* (as ``trees_of``), or None: work about one school's
    record (an alert's escalation) uses that school's tree, never another's."""
    if source is None or not site:
        return None
    if isinstance(source, Sites):
        return source.tree(site)
    return next((tree for tree in trees_of(source) if tree.site.site == site), None)
