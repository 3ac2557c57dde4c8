"""The starter config tree a new school begins from, and copying a config tree.

The starter ships inside the config contract (``agent/config/starter``: site.yaml,
keystages/, rooms/) as package data, so it is found with ``importlib.resources``, not a
path relative to this checkout: a non-editable install has it too.
``classroom-server init`` writes it out; ``classroom-server demo`` runs on it when there is
no example tree of a checkout to use.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path


def starter_tree() -> Traversable:
    """The starter tree (a folder, possibly inside a zip or wheel)."""
    return resources.files("agent.config") / "starter"


def copy_tree(source: Traversable | Path, target: Path, ignore: tuple[str, ...] = ()) -> None:
    """Copy the files of *source* into *target* (created; existing files are overwritten),
    skipping names in *ignore* and ``__pycache__``."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name in ignore or item.name == "__pycache__":
            continue
        if item.is_dir():
            copy_tree(item, target / item.name, ignore)
        else:
            (target / item.name).write_bytes(item.read_bytes())
