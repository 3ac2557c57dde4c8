"""The school timetable: who teaches in which room when, so a press alerts the teacher in the room.

``alert_staff`` (rooms/*.yaml) is a fixed list.  The timetable, imported from the school's
MIS export (a CSV: day, period or start/end, room, staff), and the cover the office enters
on ``/cover`` add the teacher actually in the room: during their lesson (from
``CHANGEOVER`` before it starts until ``CHANGEOVER`` after it ends, so a teacher walking
in early or a lesson running late is covered) they see the room on the dashboard, get its
alerts live and may answer them and use its room commands, exactly like its ``alert_staff``.
The broker's ACL follows through ``broker-config --db`` (server/broker_config.py;
docs/broker.md has the trade-off).

* mis.py -- reading and checking the MIS export (SIMS, Arbor, Wonde layouts), the import;
* now.py -- who is teaching in a room now, where a teacher is now, when the lesson ends
  (server/http/auth.py asks ``rooms_now`` for every request);
* cli.py -- ``classroom-server timetable import FILE`` and ``show``.

Nothing is imported here, so the collector's web side can use now.py without the CLI.
"""
