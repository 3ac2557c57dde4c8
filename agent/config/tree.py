"""Loading and validating a whole config tree (site.yaml, keystages/, rooms/).

Every problem in every file is gathered in one run and reported as
``file:line: key.path: message`` (Mopidy-style, with a did-you-mean for unknown keys).
Cross-file rules (unknown key stage, duplicate device ids, overlapping schedules...)
are checked here, after each file has passed its own schema.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .schema import AgentBootstrap, Profile, Room, Site, hhmm_to_time
from .yamlsrc import Source, SourceError, format_path, load_yaml

SITE_FILE = "site.yaml"
PROFILE_DIR = "keystages"
ROOM_DIR = "rooms"


class ConfigInvalid(Exception):
    """Raised with every error found; str() is one line per error."""

    def __init__(self, errors: list[SourceError]):
        self.errors = sorted(errors, key=lambda e: (e.file, e.line, e.path))
        super().__init__("\n".join(str(e) for e in self.errors))


@dataclass(frozen=True)
class ConfigTree:
    """A validated config tree.  ``profiles`` are already merged along ``extends``."""

    site: Site
    profiles: dict[str, Profile]
    rooms: dict[str, Room]
    # Where things came from, for messages; not part of the content hash.
    origin: dict[str, str] = field(default_factory=dict, compare=False)
    # A compiled per-device config holds only part of the tree, so its own hash differs
    # from the published tree's: from_dict() keeps the version it was compiled from.
    compiled_from: str | None = field(default=None, compare=False)

    # ----------------------------------------------------------------- lookups
    def find_device(self, device_id: str):
        """Return (room, device) for *device_id*, or raise KeyError with a hint."""
        for room in self.rooms.values():
            for device in room.devices:
                if device.id == device_id:
                    return room, device
        known = [d.id for r in self.rooms.values() for d in r.devices]
        raise KeyError(f"unknown device {device_id!r}{did_you_mean(device_id, known)}")

    def device_ids(self) -> list[str]:
        return [d.id for r in self.rooms.values() for d in r.devices]

    # ----------------------------------------------------------------- wire form
    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site.model_dump(mode="json"),
            "profiles": {k: v.model_dump(mode="json") for k, v in sorted(self.profiles.items())},
            "rooms": {k: v.model_dump(mode="json") for k, v in sorted(self.rooms.items())},
        }

    @cached_property
    def version(self) -> str:
        """Content hash: the same tree always gets the same version, on every machine.

        Computed once per tree (it is frozen): hashing a 1,000-device tree takes ~3 ms,
        and the collector asks for it on every device's config fetch (for_device)."""
        if self.compiled_from:
            return self.compiled_from
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def for_device(self, device_id: str) -> dict[str, Any]:
        """The compiled config a device fetches: its site, its room, the profiles it can use."""
        room, device = self.find_device(device_id)
        wanted = {room.key_stage} | {s.key_stage for s in room.schedule if s.key_stage}
        if device.key_stage:
            wanted.add(device.key_stage)
        if self.site.staff.profile:
            wanted.add(self.site.staff.profile)  # a staff login on this device gets it
        return {
            "version": self.version,
            "device": device_id,
            "site": self.site.model_dump(mode="json"),
            "profiles": {k: self.profiles[k].model_dump(mode="json") for k in sorted(wanted)},
            "rooms": {room.room: room.model_dump(mode="json")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConfigTree":
        """Rebuild from to_dict()/for_device() output (e.g. the agent's cached copy)."""
        try:
            return cls(
                site=Site.model_validate(data["site"]),
                profiles={k: Profile.model_validate(v) for k, v in data["profiles"].items()},
                rooms={k: Room.model_validate(v) for k, v in data["rooms"].items()},
                compiled_from=data["version"] if isinstance(data.get("version"), str) else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigInvalid([SourceError("<compiled config>", 0, "", f"missing or malformed part: {exc}")]) from None
        except ValidationError as exc:
            raise ConfigInvalid([SourceError("<compiled config>", 0, format_path(e["loc"]), _message(e))
                                 for e in exc.errors()]) from None


# ---------------------------------------------------------------------- helpers


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation can hold (through Optional, list, Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple, set, typing.Union, types.UnionType, dict):
        out = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at *loc* inside *model* (for did-you-mean on unknown keys)."""
    models = [model]
    for part in loc:
        if isinstance(part, int):
            continue
        nxt = []
        for m in models:
            info = m.model_fields.get(part)
            if info is not None:
                nxt.extend(_unwrap(info.annotation))
        models = nxt
    return [name for m in models for name in m.model_fields]


def _message(error: dict) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key"
    msg = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if kind == "literal_error":
        msg = f"{error.get('input')!r} is not allowed; {msg[0].lower()}{msg[1:]}"
    elif kind in ("int_parsing", "int_type", "bool_parsing", "bool_type", "string_type", "list_type",
                  "dict_type", "model_type", "date_from_datetime_parsing", "date_parsing", "date_type",
                  "int_from_float", "float_parsing"):
        msg = f"{error.get('input')!r}: {msg[0].lower()}{msg[1:]}"
    elif kind in _LIMITS:
        # pydantic says "Input should be greater than or equal to 1": name the value and the
        # limit in a technician's words instead.
        word, key = _LIMITS[kind]
        msg = f"{error.get('input')!r} is {word} {(error.get('ctx') or {}).get(key)}"
    return msg


_LIMITS = {"greater_than_equal": ("too small: the least allowed is", "ge"),
           "less_than_equal": ("too large: the most allowed is", "le"),
           "greater_than": ("too small: it must be more than", "gt"),
           "less_than": ("too large: it must be less than", "lt")}


def validate_source(model: type[BaseModel], source: Source) -> tuple[BaseModel | None, list[SourceError]]:
    """Validate one parsed file against *model*, mapping errors to lines."""
    if not isinstance(source.data, dict):
        return None, [SourceError(source.file, source.line_of(()), "",
                                  f"expected a mapping of keys, got {type(source.data).__name__}")]
    try:
        return model.model_validate(source.data), []
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            # Union members add their own names to loc ("int", "str"): drop them.
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("int", "str", "function-after[_check_pin(), union[int,str]]"))
                        and not (isinstance(p, str) and p.startswith("function-")))
            msg = _message(err)
            if err["type"] == "extra_forbidden" and loc:
                msg = f"unknown key{did_you_mean(loc[-1], _fields_at(model, loc[:-1]))}"
            errors.append(SourceError(source.file, source.line_of(loc), format_path(loc), msg))
        return None, errors


# ---------------------------------------------------------------------- loading


def load_tree(root: str | Path) -> ConfigTree:
    """Load and validate a config tree; raise ConfigInvalid listing every problem."""
    root = Path(root)
    errors: list[SourceError] = []
    if not root.is_dir():
        raise ConfigInvalid([SourceError(str(root), 0, "", "not a directory")])

    def rel(path: Path) -> str:
        return str(Path(root.name) / path.relative_to(root)) if root.name else str(path)

    def parse(path: Path, model):
        source, errs = load_yaml(path, rel(path))
        errors.extend(errs)
        if source is None:
            return None, None
        obj, errs = validate_source(model, source)
        errors.extend(errs)
        return obj, source

    site_path = root / SITE_FILE
    site = site_src = None
    if not site_path.exists():
        errors.append(SourceError(rel(site_path), 0, "", "missing: every config tree needs a site.yaml"))
    else:
        site, site_src = parse(site_path, Site)

    raw_profiles: dict[str, tuple[Profile, Source]] = {}
    for path in sorted((root / PROFILE_DIR).glob("*.y*ml")) if (root / PROFILE_DIR).is_dir() else []:
        profile, src = parse(path, Profile)
        if profile is not None:
            raw_profiles[path.stem] = (profile, src)
        elif src is not None or path.stem not in raw_profiles:
            raw_profiles.setdefault(path.stem, None)  # type: ignore[arg-type]
    if not (root / PROFILE_DIR).is_dir():
        errors.append(SourceError(rel(root / PROFILE_DIR), 0, "", "missing: key-stage profiles go in keystages/"))

    rooms: dict[str, tuple[Room, Source]] = {}
    for path in sorted((root / ROOM_DIR).glob("*.y*ml")) if (root / ROOM_DIR).is_dir() else []:
        room, src = parse(path, Room)
        if room is None:
            continue
        if room.room != path.stem:
            errors.append(SourceError(src.file, src.line_of(("room",)), "room",
                                      f"room id {room.room!r} does not match the file name {path.name!r}"))
        rooms[room.room] = (room, src)

    profiles = _merge_profiles(raw_profiles, errors)
    known_profiles = sorted(raw_profiles)
    _check_site(site, site_src, errors, known_profiles)
    _check_rooms(rooms, known_profiles, errors)

    if errors:
        raise ConfigInvalid(errors)
    return ConfigTree(site=site, profiles=profiles, rooms={k: v[0] for k, v in rooms.items()},
                      origin={"root": str(root)})


def _merge_profiles(raw, errors) -> dict[str, Profile]:
    merged: dict[str, Profile] = {}
    failed: set[str] = set()

    def resolve(name: str, chain: tuple[str, ...]) -> Profile | None:
        if name in merged:
            return merged[name]
        if name in failed:
            return None
        entry = raw.get(name)
        if entry is None:
            return None
        profile, src = entry
        if profile.extends is None:
            merged[name] = profile
            return profile
        if profile.extends in chain + (name,):
            loop = chain[chain.index(profile.extends):] + (name, profile.extends) if profile.extends in chain \
                else (name, name)
            errors.append(SourceError(src.file, src.line_of(("extends",)), "extends",
                                      f"profiles extend each other in a loop: {' -> '.join(loop)}"))
            failed.update(loop)
            return None
        if profile.extends not in raw:
            errors.append(SourceError(src.file, src.line_of(("extends",)), "extends",
                                      f"unknown key stage {profile.extends!r}{did_you_mean(profile.extends, raw)}"))
            failed.add(name)
            return None
        parent = resolve(profile.extends, chain + (name,))
        if parent is None:
            failed.add(name)
            return None
        set_fields = profile.model_fields_set
        data = parent.model_dump()
        for key in set_fields - {"extends", "allow_domains", "allow_urls", "shared_accounts", "messages", "check",
                                 "translations", "block_domains"}:
            data[key] = getattr(profile, key)
        # Lists add to the parent's: KS2 is KS1 plus age-appropriate search, not a copy.
        for key in ("allow_domains", "allow_urls", "shared_accounts", "block_domains"):
            data[key] = list(dict.fromkeys(getattr(parent, key) + getattr(profile, key)))
        data["messages"] = {**parent.messages.model_dump(exclude_none=True),
                            **profile.messages.model_dump(exclude_none=True)}
        data["translations"] = {
            lang: {**(parent.translations[lang].model_dump(exclude_none=True) if lang in parent.translations else {}),
                   **(profile.translations[lang].model_dump(exclude_none=True) if lang in profile.translations else {})}
            for lang in {*parent.translations, *profile.translations}}
        data["check"] = {k: list(dict.fromkeys(getattr(parent.check, k) + getattr(profile.check, k)))
                         for k in ("allowed", "blocked")}
        data["extends"] = None
        merged[name] = Profile.model_validate(data)
        return merged[name]

    for name, entry in raw.items():
        if entry is not None:
            resolve(name, ())
    return merged


def _overlaps(ranges):
    ordered = sorted(ranges, key=lambda r: r[0])
    for a, b in zip(ordered, ordered[1:]):
        if b[0] <= a[1]:
            yield a, b


def _check_site(site: Site | None, src: Source | None, errors, known_profiles=()) -> None:
    if site is None:
        return
    if site.staff.profile and site.staff.profile not in known_profiles:
        name = site.staff.profile
        errors.append(SourceError(src.file, src.line_of(("staff", "profile")), "staff.profile",
                                  f"unknown key stage {name!r}{did_you_mean(name, known_profiles)}; "
                                  f"known: {', '.join(known_profiles) or 'none'}"))
    if site.offsite is not None:
        # Off-site reports go to a remote-learning contact (server/notify/notifier.py).
        if not any(c.role == "remote-learning" for c in site.escalation.contacts):
            errors.append(SourceError(src.file, src.line_of(("offsite",)), "offsite",
                                      "no escalation contact has role remote-learning (reports made off-site "
                                      "go to them); add one to escalation.contacts"))
        for i, resolver in enumerate(site.offsite.upstream_dns):
            if resolver in site.filtering.upstream_dns:
                # The school resolver must be missing off-site, or a device never leaves school.
                errors.append(SourceError(src.file, src.line_of(("offsite", "upstream_dns", i)),
                                          f"offsite.upstream_dns[{i}]",
                                          f"{resolver} is also the school's resolver (filtering.upstream_dns); "
                                          "give the resolver devices use away from school"))
    for a, b in _overlaps([(t.start, t.end, i) for i, t in enumerate(site.terms)]):
        errors.append(SourceError(src.file, src.line_of(("terms", b[2])), f"terms[{b[2]}]",
                                  f"overlaps terms[{a[2]}] ({site.terms[a[2]].name})"))


def _check_rooms(rooms, known_profiles, errors) -> None:
    seen_devices: dict[str, tuple[str, int]] = {}
    for room_id, (room, src) in sorted(rooms.items()):
        def need_profile(name, loc):
            if name not in known_profiles:
                errors.append(SourceError(src.file, src.line_of(loc), format_path(loc),
                                          f"unknown key stage {name!r}{did_you_mean(name, known_profiles)}; "
                                          f"known: {', '.join(known_profiles) or 'none'}"))
        need_profile(room.key_stage, ("key_stage",))
        for i, device in enumerate(room.devices):
            loc = ("devices", i, "id")
            if device.id in seen_devices:
                other_file, other_line = seen_devices[device.id]
                where = "this room" if other_file == src.file else other_file
                errors.append(SourceError(src.file, src.line_of(loc), format_path(loc),
                                          f"duplicate device id {device.id!r} (also in {where} at line {other_line})"))
            else:
                seen_devices[device.id] = (src.file, src.line_of(loc))
            if device.key_stage:
                need_profile(device.key_stage, ("devices", i, "key_stage"))
        for i, slot in enumerate(room.schedule):
            if slot.key_stage:
                need_profile(slot.key_stage, ("schedule", i, "key_stage"))
        for day in ("mon", "tue", "wed", "thu", "fri", "sat", "sun"):
            slots = [(hhmm_to_time(s.start), hhmm_to_time(s.end), i) for i, s in enumerate(room.schedule) if day in s.days]
            for a, b in _overlaps(slots):
                if b[0] < a[1]:
                    errors.append(SourceError(src.file, src.line_of(("schedule", b[2])), f"schedule[{b[2]}]",
                                              f"overlaps schedule[{a[2]}] ({room.schedule[a[2]].name}) on {day}"))


def load_bootstrap(path: str | Path) -> AgentBootstrap:
    """Load the device's own agent.yaml; raise ConfigInvalid with line-numbered errors."""
    source, errors = load_yaml(path)
    if source is None:
        raise ConfigInvalid(errors)
    obj, more = validate_source(AgentBootstrap, source)
    if errors or more:
        raise ConfigInvalid(errors + more)
    return obj
