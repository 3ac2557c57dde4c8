"""The DSL's record in the store (issue 15), on SQLite AND PostgreSQL: concerns and the IT
queue, the session user, guard-event search, allowlist changes, the export log, reviews and
check actions, test-filtering runs, AUP per pupil per term, the term figures, and retention
of each.  Every query is scoped to its site: another school's rows never come back."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from server.store import iso
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import SITE, make_alert, make_event

pytestmark = pytest.mark.timeout(120)
OTHER = "other-school"


def _topic(room="5b", device="5b-pi-01", site=SITE):
    return protocol.Topic(protocol.DEFAULT_PREFIX, site, room, device, "event")


def test_a_logged_concern_is_an_incident_with_a_timeline_and_the_it_queue_gets_its_domain(store):
    incident_id = store.log_concern(site=SITE, room="5b", logged_by="m.khan", what="Saw a game with violence",
                                    url="https://games.example.com/x", domain="games.example.com",
                                    device="5b-pi-01", tell_it=True)
    incident = store.get_incident(incident_id)
    assert incident["alert_state"] == "logged" and incident["status"] == "open" and incident["site"] == SITE
    assert [(t["state"], t["by"]) for t in incident["timeline"]] == [("logged", "m.khan")]
    assert incident["concern"]["what"] == "Saw a game with violence" and incident["concern"]["tell_it"] is True
    assert incident["session_user"] is None and incident["exports"] == []
    [item] = store.list_it_queue(SITE)
    assert (item["domain"], item["incident_id"], item["status"], item["asked_by"]) == \
        ("games.example.com", incident_id, "open", "m.khan")
    assert store.list_it_queue(OTHER) == [] and store.get_concern(incident_id, OTHER) is None
    assert not store.close_it_request(item["id"], OTHER, "tech", "blocked")  # another school's: no
    assert store.close_it_request(item["id"], SITE, "tech", "blocked upstream")
    assert store.list_it_queue(SITE, status="open") == []
    assert store.list_it_queue(SITE, status="done")[0]["note"] == "blocked upstream"
    # Without "tell IT", nothing is queued; an adult concern starts in its category.
    other = store.log_concern(site=SITE, room="1a", logged_by="s.patel", what="x", category="concern-about-adult")
    assert store.get_incident(other)["category"] == "concern-about-adult"
    assert len(store.list_it_queue(SITE)) == 1


def test_the_session_user_comes_from_the_incidents_own_device_evidence(store):
    alert = make_alert()
    store.record_alert(alert)
    store.ingest([(_topic(), make_event(type="report_evidence", alert_id=alert["id"], user="pupil5b", domains=[]))])
    # Another device naming the same alert id is refused, so cannot set the user either.
    store.ingest([(_topic("1a", "1a-pi-01"), make_event(room="1a", device="1a-pi-01", type="report_evidence",
                                                        alert_id=alert["id"], user="intruder", domains=[]))])
    assert store.get_incident(alert["id"])["session_user"] == "pupil5b"
    assert store.incidents_of_user(SITE, "pupil5b") == [alert["id"]]
    assert store.incidents_of_user(OTHER, "pupil5b") == [] and store.incidents_of_user(SITE, "intruder") == []


def test_guard_events_search_by_user_device_room_type_and_dates(store):
    now = datetime.now(timezone.utc)
    rows = [make_event(type="bypass_process", user="pupil5b", name="tor", action="ended",
                       ts=protocol.now_ts(now - timedelta(days=2))),
            make_event(type="tamper", path="/etc/dnsmasq.conf", action="restored", ts=protocol.now_ts(now)),
            make_event(room="1a", device="1a-pi-01", type="shared_login", user="reception", ts=protocol.now_ts(now)),
            make_event(type="login", user="pupil5b", session="s1", ts=protocol.now_ts(now)),
            make_event(type="blocked", ts=protocol.now_ts(now)),
            {**make_event(type="tamper", path="/x"), "site": OTHER}]
    store.insert_events(rows)
    assert {r["type"] for r in store.guard_events(SITE)} == {"bypass_process", "tamper", "shared_login", "login"}
    assert [r["type"] for r in store.guard_events(SITE, user="pupil5b")] == ["login", "bypass_process"]
    assert [r["type"] for r in store.guard_events(SITE, room="1a")] == ["shared_login"]
    assert [r["data"]["name"] for r in store.guard_events(SITE, types=("bypass_process",))] == ["tor"]
    recent = store.guard_events(SITE, since=iso(now - timedelta(days=1)), device="5b-pi-01")
    assert sorted(r["type"] for r in recent) == ["login", "tamper"]
    assert store.guard_events(SITE, until=iso(now - timedelta(days=1)))[0]["type"] == "bypass_process"
    assert store.guard_events(OTHER, types=("tamper",))[0]["data"]["path"] == "/x"
    counts = store.guard_counts_between(SITE, iso(now - timedelta(days=7)), iso(now + timedelta(days=1)))
    assert {(c["type"], c["room"], int(c["n"])) for c in counts} == \
        {("bypass_process", "5b", 1), ("tamper", "5b", 1), ("shared_login", "1a", 1)}


def test_allowlist_changes_from_proposal_to_published(store):
    change = store.add_allowlist_change(site=SITE, kind="domains", reason="Science lesson needs it",
                                        source="weekly-report", proposed_by="tech", key_stages=["ks2"],
                                        add_domains=["nasa.gov"], base_version="v1")
    assert change["status"] == "proposed" and change["add_domains"] == ["nasa.gov"] and change["files"] is None
    assert store.get_allowlist_change(change["id"], OTHER) is None
    assert store.decide_allowlist_change(change["id"], OTHER, actor="x", approve=True, note=None) is None
    decided = store.decide_allowlist_change(change["id"], SITE, actor="s.patel", approve=True, note="ok")
    assert (decided["status"], decided["decided_by"], decided["decision_note"]) == ("approved", "s.patel", "ok")
    # Decided once: a second decision changes nothing.
    assert store.decide_allowlist_change(change["id"], SITE, actor="s.patel", approve=False, note=None) is None
    store.mark_allowlist_published(change["id"], SITE, "v2")
    [row] = store.list_allowlist_changes(SITE)
    assert (row["status"], row["published_version"]) == ("published", "v2") and row["published_at"]
    assert store.list_allowlist_changes(OTHER) == []


def test_exports_reviews_check_actions_and_test_runs_are_kept_per_site(store):
    x = store.record_export(site=SITE, actor="s.patel", kind="incident", target="i-1", format="pdf",
                            with_evidence=True, incidents=["i-1"])
    store.record_export(site=SITE, actor="s.patel", kind="pupil", target="pupil5b", format="csv",
                        with_evidence=False, incidents=["i-1", "i-2"])
    assert [e["kind"] for e in store.list_exports(SITE, incident_id="i-2")] == ["pupil"]
    assert {e["kind"] for e in store.list_exports(SITE, incident_id="i-1")} == {"incident", "pupil"}
    assert store.list_exports(OTHER) == [] and x["with_evidence"] is True
    review = store.add_review(site=SITE, held_on="2026-10-01", attendees=[{"name": "Mrs Patel", "role": "dsl"}],
                              findings="Over-blocking of BBC", actions="Allow bbc.co.uk", next_review="2027-10-01",
                              recorded_by="s.patel")
    assert store.list_reviews(SITE)[0]["attendees"] == [{"name": "Mrs Patel", "role": "dsl"}]
    assert store.list_reviews(OTHER) == [] and review["next_review"] == "2027-10-01"
    check = make_event(type="filter_check", by="tech", ok=False, results=[])
    store.insert_events([check])
    assert store.is_check(SITE, check["id"]) and not store.is_check(OTHER, check["id"])
    store.add_check_action(site=SITE, check_id=check["id"], actor="tech", text="re-applied the config")
    assert store.check_actions_for(SITE, [check["id"]])[check["id"]][0]["text"] == "re-applied the config"
    run = store.start_filter_test(site=SITE, room="5b", device="5b-pi-01", domain="testfiltering.com",
                                  started_by="tech")
    assert store.is_check(SITE, run["id"])
    assert not store.record_filter_test(run["id"], OTHER, actor="x", result="pass", details=None)
    assert store.record_filter_test(run["id"], SITE, actor="tech", result="pass", details="all blocked")
    assert store.list_filter_tests(SITE)[0]["result"] == "pass"


def test_aup_acceptance_is_recorded_per_pupil_per_term_from_the_event(store):
    accepted = make_event(type="aup_accepted", user="pupil5b", term="Autumn 2026", key_stage="ks2", session="s1")
    again = make_event(device="5b-pi-02", type="aup_accepted", user="pupil5b", term="Autumn 2026", session="s2")
    store.ingest([(_topic(), accepted), (_topic(device="5b-pi-02"), again),
                  (_topic(), make_event(type="login", user="pupil5b", session="s1")),
                  (_topic(), make_event(type="login", user="pupil-new", session="s3"))])
    store.ingest([(_topic(), accepted)])  # a resend changes nothing
    [row] = store.aup_accepted(SITE, "Autumn 2026")
    assert (row["user_name"], row["device"], row["key_stage"]) == ("pupil5b", "5b-pi-01", "ks2")
    assert store.aup_accepted(SITE, "Spring 2027") == [] and store.aup_accepted(OTHER, "Autumn 2026") == []
    missing = store.aup_not_accepted(SITE, "Autumn 2026", "2000-01-01T00:00:00.000000Z")
    assert [m["user_name"] for m in missing] == ["pupil-new"]


def test_term_figures_count_without_pupil_identifiers(store):
    now = datetime.now(timezone.utc)
    alert = make_alert(ts=protocol.now_ts(now - timedelta(minutes=5)))
    store.record_alert(alert)
    store.record_alert({**alert, "state": "acknowledged", "by": "m.khan",
                        "ts": protocol.now_ts(now - timedelta(minutes=5) + timedelta(seconds=42))})
    store.update_incident(alert["id"], "s.patel", {"category": "cyberbullying", "tags": ["conduct"]})
    store.log_concern(site=SITE, room="1a", logged_by="a.jones", what="x")
    store.insert_events([make_event(type="override_opened", domain="nasa.gov", by="m.khan"),
                         make_event(type="filter_check", ok=True, results=[]), make_event(type="tamper", path="/x")])
    figures = store.term_figures(SITE, iso(now - timedelta(days=1)), iso(now + timedelta(days=1)))
    assert len(figures["incidents"]) == 2
    press = next(i for i in figures["incidents"] if i["alert_state"] == "acknowledged")
    assert press["category"] == "cyberbullying" and press["ack_at"]
    assert figures["events"]["override_opened"] == 1 and figures["events"]["tamper"] == 1
    assert figures["overrides"][0]["domain"] == "nasa.gov"
    assert "user_name" not in str(figures) and "m.khan" not in str(figures)
    assert store.term_figures(OTHER, iso(now - timedelta(days=1)), iso(now + timedelta(days=1)))["incidents"] == []


def test_retention_purges_the_new_records_on_their_own_clocks(store, tree):
    from server.retention import Retention

    later = datetime.now(timezone.utc) + timedelta(days=tree.site.retention.audit_days + 2)
    incident_id = store.log_concern(site=SITE, room="5b", logged_by="m.khan", what="x", domain="a.example.com",
                                    tell_it=True)
    [item] = store.list_it_queue(SITE)
    store.close_it_request(item["id"], SITE, "tech", None)
    store.record_export(site=SITE, actor="s.patel", kind="incident", target=incident_id, format="pdf",
                        with_evidence=False, incidents=[incident_id])
    store.add_review(site=SITE, held_on="2026-10-01", attendees=[], findings="f", actions="a",
                     next_review="2027-10-01", recorded_by="s.patel")
    store.insert_events([make_event(type="aup_accepted", user="p", term="Autumn 2026")])
    done = Retention(store, lambda: tree).run(later)
    assert done.get("it_queue") == 1 and done.get("exports") == 1 and done.get("reviews") == 1
    assert done.get("aup_acceptances") == 1
    assert store.count("it_queue") == store.count("exports") == store.count("aup_acceptances") == 0
    # An open incident (and its concern) stays until the DSL closes it.
    assert store.get_concern(incident_id) is not None
