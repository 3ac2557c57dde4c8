"""Reading the school's MIS timetable export, checking it, and importing it.

``parse`` checks the whole file first and raises ``ConfigInvalid`` with every problem, each
``FILE:LINE: COLUMN: message`` (with a did-you-mean), printed by
``agent.errors.print_problems`` like the config's; ``import_file`` changes the store only
when every row is good, so the last good timetable stays in force otherwise.  The column
layouts of SIMS, Arbor and Wonde exports are recognised by their header names
(``HEADERS``; docs/server.md shows each); MIS staff codes and room names that are not the
dashboard's usernames and the config's room ids or names are mapped with a map file (YAML
``staff:`` and ``rooms:``).
"""


from __future__ import annotations

import csv
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from agent.config import ConfigInvalid, did_you_mean
from agent.config.yamlsrc import SourceError

MAX_BYTES = 5 * 1024 * 1024
MAX_ROWS = 20_000
MAX_PROBLEMS = 100
SKIP = "-"  # in the map file: an MIS room that is not a classroom of the config (the hall, the field)

# The header names each column is recognised by, compared with case, spaces, "_", "." and
# "-" ignored.  SIMS: Period ("Mon:1"), Start Time, End Time, Room, Staff Code, Class.
# Arbor: Day, Period, Start Time, End Time, Room, Staff, Class.  Wonde: Period Day, Period
# Start Time, Period End Time, Room Name, Employee Email, Class Name.
HEADERS: dict[str, tuple[str, ...]] = {
    "day": ("day", "weekday", "day of week", "day name", "period day"),
    "period": ("period", "period name", "period code", "lesson", "timetable period"),
    "start": ("start", "start time", "starttime", "time from", "from", "period start time", "period start"),
    "end": ("end", "end time", "endtime", "time to", "to", "period end time", "period end"),
    "room": ("room", "room name", "room code", "room short name", "location"),
    "staff": ("staff", "staff code", "staff name", "staff username", "staff email", "username", "teacher",
              "teachers", "teacher code", "teacher name", "main teacher", "employee", "employees",
              "employee email", "employee code", "email"),
    "label": ("class", "class name", "class code", "group", "subject", "description"),
}
DAYS = {
    **{name: i for i, names in enumerate((
        ("mon", "monday", "llun"), ("tue", "tues", "tuesday", "mawrth"), ("wed", "weds", "wednesday", "mercher"),
        ("thu", "thur", "thurs", "thursday", "iau"), ("fri", "friday", "gwener"), ("sat", "saturday", "sadwrn"),
        ("sun", "sunday", "sul")))
       for name in names},
    **{str(i + 1): i for i in range(7)},
}
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# SIMS puts the day in the period: "Mon:1", "Mon 1", and for a two-week timetable "1Mon:1".
_DAY_PERIOD = re.compile(r"^(?:(?P<week>\d)\s*)?(?P<day>[a-z]+)\s*[:\-. ]?\s*(?P<period>[a-z0-9]+)$", re.I)
_TIME = re.compile(r"^(?P<h>\d{1,2})(?:[:.](?P<m>\d{2}))?(?::\d{2}(?:\.\d+)?)?\s*(?P<ampm>[ap]\.?m\.?)?$", re.I)
_STAFF_SPLIT = re.compile(r"\s*[;|]\s*")


@dataclass(frozen=True)
class Lesson:
    day: int
    start_time: str
    end_time: str
    room: str
    staff: str
    period: str | None = None
    label: str | None = None
    line: int = 0

    def to_row(self) -> dict:
        return {"day": self.day, "start_time": self.start_time, "end_time": self.end_time, "room": self.room,
                "staff": self.staff, "period": self.period, "label": self.label}


@dataclass
class Parsed:
    lessons: list[Lesson]
    skipped_rooms: dict[str, int]
    empty_rows: int
    sha256: str


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[_.\-]+", " ", text.strip().lower().lstrip("\ufeff")).split())


def clock_text(value: str) -> str | None:
    """'9:05', '09:05:00', '0905', '9.05', '2:15 pm', '2026-09-07T09:05:00' -> '09:05'; None if not a time."""
    text = value.strip()
    found = re.search(r"\d{4}-\d{2}-\d{2}[T ](\d{1,2}:\d{2})", text)
    if found:
        text = found.group(1)
    if re.fullmatch(r"\d{4}", text):
        text = f"{text[:2]}:{text[2:]}"
    match = _TIME.match(text)
    if not match or match.group("m") is None and not match.group("ampm"):
        return None
    hour, minute = int(match.group("h")), int(match.group("m") or 0)
    ampm = (match.group("ampm") or "").lower().replace(".", "")
    if ampm:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def _day(value: str) -> int | None:
    text = _norm(value)
    text = text[5:] if text.startswith("dydd ") else text  # Welsh: "Dydd Llun"
    return DAYS.get(text)


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if len(raw) > MAX_BYTES:
        raise ConfigInvalid([SourceError(str(path), 0, "", f"is {len(raw)} bytes; the limit is {MAX_BYTES}")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")  # SIMS and Excel on Windows save in it


def _rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    sample = text[:8192]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for record in reader:
        if header is None:
            if any(cell.strip() for cell in record):
                header = record
            continue
        rows.append((reader.line_num, record))
        if len(rows) > MAX_ROWS:
            raise ConfigInvalid([SourceError(str(path), reader.line_num, "", f"more than {MAX_ROWS} rows")])
    if header is None:
        raise ConfigInvalid([SourceError(str(path), 1, "", "no header row (day, period or start/end, room, staff)")])
    return header, rows


def _columns(path: Path, header: list[str]) -> dict[str, tuple[int, str]]:
    """{field: (index, header as written)} for the fields the header row names."""
    found: dict[str, tuple[int, str]] = {}
    names = {alias: field for field, aliases in HEADERS.items() for alias in aliases}
    for index, name in enumerate(header):
        field = names.get(_norm(name))
        if field is not None and field not in found:
            found[field] = (index, name.strip().lstrip("\ufeff"))
    problems = []
    for field in ("room", "staff"):
        if field not in found:
            close = next((f" (is {h.strip()!r} meant to be {field!r}?)" for h in header
                          if did_you_mean(_norm(h), HEADERS[field])), "")
            problems.append(SourceError(str(path), 1, "header", f"no {field} column: name one "
                                        f"{', '.join(HEADERS[field][:5])} ...{close}"))
    if "period" not in found and not ("start" in found and "end" in found):
        problems.append(SourceError(str(path), 1, "header", "needs a period column or start and end columns"))
    if "day" not in found and "period" not in found:
        problems.append(SourceError(str(path), 1, "header", "needs a day column (or SIMS periods such as 'Mon:1')"))
    if problems:
        raise ConfigInvalid(problems)
    return found


def load_map(path: str | Path | None) -> tuple[dict[str, str], dict[str, str]]:
    """The ``--map`` file: ``staff: {MIS value: username}``, ``rooms: {MIS room: room id or "-"}``."""
    if not path:
        return {}, {}
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigInvalid([SourceError(str(path), 0, "", f"cannot read ({exc.strerror})")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigInvalid([SourceError(str(path), mark.line + 1 if mark else 0, "",
                                         f"not valid YAML ({getattr(exc, 'problem', None) or 'syntax error'})")]) from None
    problems = []
    if not isinstance(data, dict) or set(data) - {"staff", "rooms"}:
        problems.append(SourceError(str(path), 1, "", "must be a mapping with staff: and rooms:"))
        raise ConfigInvalid(problems)
    out = []
    for key in ("staff", "rooms"):
        section = data.get(key) or {}
        if not isinstance(section, dict):
            raise ConfigInvalid([SourceError(str(path), 1, key, "must map MIS values to names")])
        out.append({_norm(str(k)): (SKIP if v is None else str(v)) for k, v in section.items()})
    return out[0], out[1]


def parse(path: str | Path, tree, accounts: list[dict], *, map_file: str | Path | None = None,
          periods_file: str | Path | None = None) -> Parsed:
    """Every lesson of the CSV at *path*, checked against the config *tree* (rooms) and the
    staff *accounts* (``list_users()``); ConfigInvalid with every problem found."""
    path = Path(path)
    staff_map, room_map = load_map(map_file)
    periods = _periods(periods_file) if periods_file else {}
    try:
        text = _read_text(path)
    except OSError as exc:
        raise ConfigInvalid([SourceError(str(path), 0, "", f"cannot read ({exc.strerror})")]) from None
    header, rows = _rows(path, text)
    cols = _columns(path, header)
    usernames = {a["username"].lower(): a["username"] for a in accounts}
    by_name = {_norm(a["display_name"]): a["username"] for a in accounts if a.get("display_name")}
    rooms = {room_id: room_id for room_id in tree.rooms}
    rooms.update({_norm(room.name): room_id for room_id, room in tree.rooms.items() if room.name})
    rooms.update({_norm(room_id): room_id for room_id in tree.rooms})
    problems: list[SourceError] = []
    pending: list[dict] = []
    skipped: dict[str, int] = {}
    empty = 0

    def cell(record: list[str], field: str) -> str:
        if field not in cols:
            return ""
        index = cols[field][0]
        return record[index].strip() if index < len(record) else ""

    def problem(line: int, field: str, message: str) -> None:
        problems.append(SourceError(str(path), line, cols.get(field, (0, field))[1], message))

    for line, record in rows:
        if not any(c.strip() for c in record):
            continue
        room_text, staff_text = cell(record, "room"), cell(record, "staff")
        if not room_text or not staff_text:
            empty += 1  # a lesson with no room (PPA) or nobody (a study period): nobody to alert
            continue
        room = room_map.get(_norm(room_text)) or rooms.get(_norm(room_text))
        if room == SKIP:
            skipped[room_text] = skipped.get(room_text, 0) + 1
            continue
        if room is None or room not in tree.rooms:
            problem(line, "room", f"{room_text!r} is not a room of the config{did_you_mean(room_text, sorted(tree.rooms))}"
                                  " (map it in --map rooms:, or '-' if it has no classroom devices)")
            continue
        names = []
        for one in _STAFF_SPLIT.split(staff_text):
            key = _norm(one)
            name = staff_map.get(key) or usernames.get(one.lower()) or by_name.get(key)
            if name == SKIP:
                continue  # mapped away: a supply code, a cover placeholder
            if name is None and "@" in one:
                name = usernames.get(one.split("@", 1)[0].lower())  # Wonde: the school e-mail address
            if name is None or name.lower() not in usernames:
                choices = sorted(usernames.values()) + sorted(by_name)
                problem(line, "staff", f"{one!r} is not a staff account{did_you_mean(one, choices)} "
                                       "(add them with `classroom-server user add`, or map it in --map staff:)")
                continue
            names.append(usernames[name.lower()])
        day_text, period = cell(record, "day"), cell(record, "period") or None
        day = _day(day_text) if day_text else None
        if day_text and day is None:
            problem(line, "day", f"{day_text!r} is not a day of the week (Mon..Sun, Monday, 1..7)")
            continue
        if day is None and period:
            match = _DAY_PERIOD.match(period)
            if match and _day(match.group("day")) is not None:
                if match.group("week") not in (None, "1"):
                    problem(line, "period", f"{period!r} is in week {match.group('week')}: two-week timetables "
                                            "are not supported yet (export week 1)")
                    continue
                day, period = _day(match.group("day")), match.group("period")
        if day is None:
            problem(line, "day" if "day" in cols else "period", "no day of the week on this row")
            continue
        start_text, end_text = cell(record, "start"), cell(record, "end")
        start = clock_text(start_text) if start_text else None
        end = clock_text(end_text) if end_text else None
        if start_text and start is None:
            problem(line, "start", f"{start_text!r} is not a time (HH:MM)")
            continue
        if end_text and end is None:
            problem(line, "end", f"{end_text!r} is not a time (HH:MM)")
            continue
        if start is not None and end is not None and end <= start:
            problem(line, "end", f"{end} is not after the start, {start}")
            continue
        if not names:
            continue
        pending.append({"line": line, "day": day, "period": period, "start": start, "end": end, "room": room,
                        "staff": names, "label": cell(record, "label")[:200] or None})
    lessons = _times(path, pending, periods, problems, cols)
    if problems:
        raise ConfigInvalid(problems[:MAX_PROBLEMS])
    return Parsed(lessons, skipped, empty, hashlib.sha256(text.encode("utf-8")).hexdigest())


def _periods(path: str | Path) -> dict[str, tuple[str, str]]:
    """``--periods FILE``: a CSV of period, start, end (a school's bell times)."""
    path = Path(path)
    try:
        text = _read_text(path)
    except OSError as exc:
        raise ConfigInvalid([SourceError(str(path), 0, "", f"cannot read ({exc.strerror})")]) from None
    header, rows = _rows(path, text)
    names = {alias: field for field, aliases in HEADERS.items() for alias in aliases}
    index = {names.get(_norm(h)): i for i, h in enumerate(header)}
    if not {"period", "start", "end"} <= set(index):
        raise ConfigInvalid([SourceError(str(path), 1, "header", "needs period, start and end columns")])
    out, problems = {}, []
    for line, record in rows:
        get = lambda f: record[index[f]].strip() if index[f] < len(record) else ""  # noqa: E731
        if not get("period"):
            continue
        start, end = clock_text(get("start")), clock_text(get("end"))
        if start is None or end is None or end <= start:
            problems.append(SourceError(str(path), line, "start", f"{get('start')!r}-{get('end')!r} is not a start and "
                                                                   "a later end (HH:MM)"))
            continue
        out[_norm(get("period"))] = (start, end)
    if problems:
        raise ConfigInvalid(problems)
    return out


def _times(path: Path, pending: list[dict], periods: dict, problems: list, cols: dict) -> list[Lesson]:
    """Fill in a row's times from its period when the row has none: the --periods file, else
    another row of the same day and period, else every row of that period if they agree."""
    by_day: dict[tuple[int, str], tuple[str, str]] = {}
    by_period: dict[str, set[tuple[str, str]]] = {}
    for row in pending:
        if row["period"] and row["start"] and row["end"]:
            by_day[(row["day"], _norm(row["period"]))] = (row["start"], row["end"])
            by_period.setdefault(_norm(row["period"]), set()).add((row["start"], row["end"]))
    lessons = []
    for row in pending:
        start, end = row["start"], row["end"]
        if start is None or end is None:
            key = _norm(row["period"] or "")
            known = periods.get(key) or by_day.get((row["day"], key))
            if known is None and len(by_period.get(key, ())) == 1:
                known = next(iter(by_period[key]))
            if known is None:
                field = "period" if row["period"] else "start"
                problems.append(SourceError(str(path), row["line"], cols.get(field, (0, field))[1],
                                            f"no start and end time for period {row['period']!r}: add start/end "
                                            "columns or give --periods FILE (period, start, end)"))
                continue
            start, end = start or known[0], end or known[1]
        for staff in row["staff"]:
            lessons.append(Lesson(row["day"], start, end, row["room"], staff, row["period"], row["label"],
                                  row["line"]))
    return lessons


# --------------------------------------------------------------------------- importing


def import_file(store, tree, path: str | Path, *, by: str, map_file=None, periods_file=None) -> tuple[Parsed, str]:
    """Check *path* and, only if every row is good, make it *tree*'s school's timetable.
    Returns (what was read, the import id); ConfigInvalid (nothing changed) otherwise."""
    parsed = parse(path, tree, store.list_users(), map_file=map_file, periods_file=periods_file)
    import_id = store.replace_timetable(tree.site.site, [lesson.to_row() for lesson in parsed.lessons], by=by,
                                       source=Path(path).name, sha256=parsed.sha256)
    return parsed, import_id
