"""The dashboard's pages, one module per page family.

login.py (the landing redirect, log in, log out), rooms.py (a teacher's rooms, the live
room view with the teacher's controls, and its event stream), office.py (the office board:
every room's open alerts and live receivers), cover.py (the office's cover: who teaches in a
room instead), incidents.py (the DSL's incident records), devices.py (the technician's
device list), rollout.py (publish, roll back, audit), reports.py (the weekly report),
deliveries.py (escalation e-mails and webhooks, every attempt), concerns.py (the staff
concern form, the IT queue), guard.py (the guard log), allowlist.py (allowlist changes,
their approval, the change log and override history), exports.py (the DSL's exports),
reviews.py (the annual review record, the check log and SWGfL test runs), aup.py
(acceptable use per pupil).  base.py has what they share: the ``page(...)`` role check and
``render``.  Each module has ``router() -> APIRouter`` and ``PUBLIC`` (its routes anyone
may call); server/web/__init__.py includes them in ``PAGES`` order.
"""
