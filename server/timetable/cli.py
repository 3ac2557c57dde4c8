"""``classroom-server timetable import FILE`` and ``timetable show``: the timetable from the command line.

``import`` checks FILE against the config tree (``--config``, else the published live
version) and the staff accounts; every problem is printed as ``FILE:LINE: COLUMN:
message`` and nothing changes (the timetable in use is kept); a good file replaces the
school's timetable at once (the dashboard follows), and says to re-run ``broker-config
--db`` for the alert clients.
"""

from __future__ import annotations

from agent.config import ConfigInvalid

from .mis import DAY_NAMES, import_file


def add_parser(sub) -> None:
    """Register ``timetable import|show`` on classroom-server's subcommands."""
    from ..serve import DEFAULT_DB

    p = sub.add_parser("timetable", help="import the school timetable (MIS export) so alerts reach the teacher "
                                         "in the room")
    tsub = p.add_subparsers(dest="timetable_command", metavar="ACTION")
    tsub.required = True
    p = tsub.add_parser("import", help="check FILE (CSV: day, period or start/end, room, staff) and make it the "
                                       "timetable; any problem changes nothing")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL", help="the collector's store (as serve --db)")
    p.add_argument("--config", metavar="DIR", help="the config tree (default: the published live version)")
    p.add_argument("--map", metavar="FILE", help="YAML: staff: {MIS value: username}, rooms: {MIS room: room id or -}")
    p.add_argument("--periods", metavar="FILE", help="CSV of period, start, end: the bell times, for an export "
                                                     "with periods and no times")
    p.set_defaults(func=cmd_import)
    p = tsub.add_parser("show", help="print the timetable in use (one room or one member of staff)")
    p.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    p.add_argument("--config", metavar="DIR", help="the config tree (default: the published live version)")
    p.add_argument("--room")
    p.add_argument("--staff")
    p.set_defaults(func=cmd_show)


def _tree_and_store(args):
    from agent.errors import UserError

    from ..rollout import Rollouts
    from ..serve import _load_tree, _open_store

    store = _open_store(args.db)
    tree = _load_tree(args.config) if args.config else Rollouts(store).live_tree()
    if tree is None:
        store.close()
        raise UserError("no config: give --config DIR, or publish one first (`classroom-server config publish`)")
    return tree, store


def cmd_import(args) -> int:
    from agent.errors import print_problems

    tree, store = _tree_and_store(args)
    try:
        before = store.last_timetable_import(tree.site.site)
        kept = (f"the timetable in use was kept ({before['lessons']} lessons from {before['source']}, "
                f"imported {before['ts'][:16].replace('T', ' ')} UTC)" if before else "no timetable was imported")
        try:
            parsed, _ = import_file(store, tree, args.file, by="cli", map_file=args.map, periods_file=args.periods)
        except ConfigInvalid as exc:
            return print_problems("classroom-server", exc.errors, args.file, kept)
    finally:
        store.close()
    lessons = parsed.lessons
    print(f"{args.file}: ok: {len(lessons)} lessons, {len({x.staff for x in lessons})} staff in "
          f"{len({x.room for x in lessons})} rooms (site {tree.site.site}); it replaces "
          + (f"the {before['lessons']} lessons from {before['source']}" if before else "no earlier timetable"))
    if parsed.empty_rows:
        print(f"  {parsed.empty_rows} row(s) without a room or staff were left out (nobody to alert there)")
    if parsed.skipped_rooms:
        print("  not classrooms (mapped to '-'): " + ", ".join(f"{k} ({n})" for k, n in sorted(parsed.skipped_rooms.items())))
    print("  the dashboard follows now; re-run `classroom-server broker-config --db ...` (and reload mosquitto) "
          "so timetabled staff's alert clients may read their rooms")
    return 0


def cmd_show(args) -> int:
    tree, store = _tree_and_store(args)
    try:
        rows = store.timetable(tree.site.site, room=args.room, staff=args.staff)
        last = store.last_timetable_import(tree.site.site)
    finally:
        store.close()
    if last is None:
        print(f"no timetable imported for {tree.site.site}")
        return 0
    print(f"{tree.site.site}: {last['lessons']} lessons from {last['source']} (imported "
          f"{last['ts'][:16].replace('T', ' ')} UTC by {last['by_whom']})")
    for row in rows:
        print(f"{DAY_NAMES[row['day']]} {row['start_time']}-{row['end_time']}  {row['room']:<12} {row['staff']:<20} "
              f"{row['period'] or ''} {row['label'] or ''}".rstrip())
    return 0
