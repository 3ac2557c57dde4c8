"""YAML loading that remembers where every value came from.

PyYAML's composed node tree carries line marks; we build the plain Python data from it
ourselves so that every key path (``("devices", 0, "hardware", "button_pin")``) maps
to the line a technician should look at.  We also refuse duplicate keys, which PyYAML
would otherwise silently resolve to the last one.

Aliases (``*name``) are refused, and nesting is bounded, before anything is built: a
423-byte file of nested aliases expands to gigabytes ("billion laughs"), and one that
refers to itself never ends.  Config files never need them; a technician repeats the
value.  The check reads PyYAML's event stream, which never expands anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[Any, ...]

MAX_BYTES = 1_000_000   # a whole school's rooms fit in a few kB
MAX_DEPTH = 40          # site.yaml nests 5 levels; PyYAML's composer recurses per level


@dataclass
class SourceError:
    """One problem in one file, printed as ``file:line: key.path: message``."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


@dataclass
class Source:
    """Parsed YAML data plus a map from key path to 1-based line number."""

    file: str
    data: Any
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int:
        """Line of *path*, or of its nearest ancestor that we know about."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get((), 1)


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.errors: list[SourceError] = []
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._constructor.flatten_mapping(node)
            result: dict[Any, Any] = {}
            first_seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node)
                key_line = key_node.start_mark.line + 1
                if not isinstance(key, (str, int, bool)) or key is None:
                    self.errors.append(SourceError(self.file, key_line, format_path(path),
                                                   f"keys must be plain words, not {key!r}"))
                    continue
                if key in first_seen:
                    self.errors.append(SourceError(
                        self.file, key_line, format_path(path + (key,)),
                        f"duplicate key '{key}' (first given at line {first_seen[key]})"))
                    continue
                first_seen[key] = key_line
                self.lines[path + (key,)] = key_line
                result[key] = self.build(value_node, path + (key,))
                # A key's own line is more useful than where its (block) value begins.
                self.lines[path + (key,)] = key_line
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            return self.build(node, ())
        # YAML 1.1 reads 08:30 as a base-60 integer (510); technicians mean a time.
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in node.value:
            return node.value
        return self._constructor.construct_object(node, deep=True)


def load_yaml(path: str | Path, display_name: str | None = None) -> tuple[Source | None, list[SourceError]]:
    """Parse one YAML file; returns (source, errors).  source is None if unusable."""
    name = display_name or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return None, [SourceError(name, 0, "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")]
    except OSError as exc:
        return None, [SourceError(name, 0, "", f"cannot read: {exc.strerror or exc}")]
    return load_yaml_text(text, name)


def _refuse_expansion(text: str, name: str) -> SourceError | None:
    """The first alias or over-deep nesting in *text*, from the event stream (nothing expanded)."""
    if len(text) > MAX_BYTES:
        return SourceError(name, 0, "", f"file is {len(text)} bytes; the limit is {MAX_BYTES}")
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            return SourceError(name, event.start_mark.line + 1, "",
                               f"YAML alias '*{event.anchor}' is not allowed: write the value out in full")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                return SourceError(name, event.start_mark.line + 1, "", f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1
    return None


def load_yaml_text(text: str, name: str) -> tuple[Source | None, list[SourceError]]:
    try:
        refused = _refuse_expansion(text, name)
        if refused is not None:
            return None, [refused]
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        problem = exc.problem or exc.context or "cannot parse"
        return None, [SourceError(name, line, "", f"YAML syntax error: {problem}")]
    except yaml.YAMLError as exc:
        return None, [SourceError(name, 0, "", f"YAML syntax error: {exc}")]
    if node is None:
        return None, [SourceError(name, 1, "", "file is empty")]
    builder = _Builder(name)
    try:
        data = builder.build(node, ())
    except yaml.YAMLError as exc:  # e.g. a bad !!tag or unhashable key
        mark = getattr(exc, "problem_mark", None)
        return None, [SourceError(name, mark.line + 1 if mark else 0, "", f"YAML error: {exc}")]
    return Source(name, data, builder.lines), builder.errors
