"""High-risk blocked attempts reach the DSL at once, and never as a flood (issue 15 item 4).

* End to end, every piece real: a pupil's lookup on the device's dnsmasq, the agent's filter
  tagging it with its risk list, the outbox and mosquitto, the collector's ingest and store,
  ``RiskNotices`` and the notifier, and an SMTP server (aiosmtpd, STARTTLS + AUTH).  The DSL's
  message names the room, seat, device and list, never the domain or the pupil.  (How fast
  is bench/high_risk.py's business; this only proves it arrives.)
* An hour of simulated time (a fake clock) with 10,000 attempts from several devices on
  several lists: at most one message per device per list per 10 minutes, exactly as many
  as the windows say, none for a list without ``notify``; on SQLite and PostgreSQL.
* The window is the store's: a second collector, or a restarted one, does not send again.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from agent import protocol
from notify_fixtures import *  # noqa: F401,F403
from server_fixtures import *  # noqa: F401,F403
from server_fixtures import REPO, SITE

pytestmark = pytest.mark.timeout(180)

START = datetime(2026, 11, 24, 9, 0, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=10)


def _settings(**send):
    from server.notify.settings import NotifySettings, Webhook

    return NotifySettings(webhooks=(Webhook(name="dsl-teams", url="http://127.0.0.1:9/hook"),), **send)


def _blocked(device: str, room: str, category: str | None, ts: datetime, count: int = 1) -> dict:
    event = {"id": str(uuid.uuid4()), "type": "blocked", "ts": protocol.now_ts(ts), "site": SITE, "room": room,
             "device": device, "domain": f"{category or 'plain'}-{uuid.uuid4().hex[:6]}.example", "profile": "ks2",
             "user": "pupil.5b.07", "count": count, "device_ip": "10.20.5.31"}
    if category:
        event["category"] = category
    return protocol.validate("event", event)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_an_hour_of_10000_attempts_gives_at_most_one_message_per_device_and_list_per_10_minutes(store, tree):
    from server.notify.risk import RiskNotices

    assert {r.id: r.notify for r in tree.site.filtering.risk_lists}["gambling"] is False
    devices = [("5b-pi-01", "5b"), ("5b-pi-02", "5b"), ("1a-pi-01", "1a"), ("1a-pc-01", "1a")]
    categories = ["self-harm", "adult", "weapons", "gambling"]
    rng = random.Random(15)
    # Bursts (a pupil hammering one site) and quiet spells: 10,000 attempts in an hour.
    attempts = sorted((START + timedelta(seconds=rng.uniform(0, 3600)) if rng.random() < 0.7
                       else START + timedelta(seconds=rng.choice([60, 700, 1300, 2500, 3000]) + rng.uniform(0, 30)),
                       rng.choice(devices), rng.choice(categories)) for _ in range(10_000))
    clock = Clock(START)
    notices = RiskNotices(store, _settings(), lambda: tree, clock=clock)
    step = timedelta(seconds=5)  # a poll round every 5 simulated seconds
    expected_opens: dict[tuple, list[datetime]] = {}
    i = 0
    t = START
    while t <= START + timedelta(hours=1):
        batch = []
        while i < len(attempts) and attempts[i][0] < t + step:
            when, (device, room), category = attempts[i]
            batch.append(_blocked(device, room, category, when))
            i += 1
        t += step
        clock.now = t
        if batch:
            store.insert_events(batch)
            notices.take()
            # The model: a window opens at a round where an attempt arrives and none is open.
            for device, category in {(e["device"], e["category"]) for e in batch}:
                if category == "gambling":
                    continue
                opens = expected_opens.setdefault((device, category), [])
                if not opens or t - opens[-1] >= WINDOW:
                    opens.append(t)
    assert i == 10_000

    rows = store.list_deliveries(limit=10_000)
    assert rows and {r["reason"] for r in rows} == {"high-risk"} and {r["recipient"] for r in rows} == {"dsl-teams"}
    sent: dict[tuple, list[datetime]] = {}
    for row in rows:
        _, device, category, _ = row["alert_id"].split(":", 3)
        assert category != "gambling"  # a list without notify is counted, never sent
        sent.setdefault((device, category), []).append(protocol.parse_ts(row["created_at"]))
    for key, times in sent.items():
        times.sort()
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert all(gap >= WINDOW for gap in gaps), (key, gaps)
    assert {k: sorted(v) for k, v in sent.items()} == expected_opens
    # Nothing flooded: 12 (device, list) pairs over an hour is at most 12 * 6 messages; every
    # other attempt on a list that notifies was seen and covered by its window's message.
    notifying = sum(1 for _, _, category in attempts if category != "gambling")
    assert len(rows) <= 12 * 6 and notices.suppressed == notifying - len(rows)


def test_the_window_is_kept_in_the_store_so_a_second_or_restarted_collector_stays_quiet(sqlite_store, tree):
    from server.notify.risk import RiskNotices

    clock = Clock(START)
    first = RiskNotices(sqlite_store, _settings(), lambda: tree, clock=clock)
    second = RiskNotices(sqlite_store, _settings(), lambda: tree, clock=clock)
    sqlite_store.insert_events([_blocked("5b-pi-01", "5b", "adult", START)])
    assert first.take() == 1
    sqlite_store.insert_events([_blocked("5b-pi-01", "5b", "adult", START + timedelta(seconds=30))])
    clock.now = START + timedelta(minutes=9, seconds=59)
    assert second.take() == 0 and first.take() == 0   # the same window, whoever looks
    clock.now = START + timedelta(minutes=10)
    sqlite_store.insert_events([_blocked("5b-pi-01", "5b", "adult", clock.now)])
    assert second.take() == 1 and first.take() == 0
    assert len(sqlite_store.list_deliveries()) == 2


def test_high_risk_can_be_switched_off_and_says_nothing_without_a_list_that_notifies(sqlite_store, tree):
    from server.notify.risk import RiskNotices

    sqlite_store.insert_events([_blocked("5b-pi-01", "5b", "self-harm", START)])
    assert RiskNotices(sqlite_store, _settings(send_high_risk=False), lambda: tree).take() == 0
    assert RiskNotices(sqlite_store, _settings(), lambda: None).take() == 0
    assert sqlite_store.list_deliveries() == []
    assert RiskNotices(sqlite_store, _settings(), lambda: tree).take() == 1


def test_the_notify_file_turns_high_risk_messages_off(tmp_path):
    from server.notify import load_notify

    path = tmp_path / "notify.yaml"
    path.write_text("send: {high_risk: false}\n")
    assert load_notify(path).send_high_risk is False
    path.write_text("send: {escalated: true}\n")
    assert load_notify(path).send_high_risk is True


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_a_high_risk_lookup_on_a_real_dnsmasq_reaches_the_dsl_by_email(mosquitto, tmp_path, smtp_server, webhooks,
                                                                       dnsmasq_factory):
    from gpiozero.pins.mock import MockFactory

    from agent.config import load_tree
    from agent.core.runtime import Runtime
    from agent.filter import dnsclient
    from agent.filter.component import FilterComponent
    from agent.report.screen import Screen
    from filter_fixtures import STUB_RECORDS, world_readable_dir
    from notify_fixtures import CONTACT_EMAILS, notify_tree_dir, wait_for_mail, write_notify_file
    from runtime_fixtures import bootstrap
    from server.http.app import Settings, create_app
    from server.ingest import Ingest
    from server.notify import Notifier, RiskNotices, load_notify
    from server.store import Store
    from services import free_port, require_binary, wait_until

    require_binary("dnsmasq")
    smtp_server.start()
    webhooks.start()
    tree = load_tree(notify_tree_dir(tmp_path, REPO))
    store = Store.open(f"sqlite:///{tmp_path}/server.db")
    ingest = Ingest(store, f"mqtt://127.0.0.1:{mosquitto.port}", client_id=f"collector-{free_port()}")
    app = create_app(Settings(db_url="unused"), store=store, tree=tree, ingest=ingest)
    ingest.listeners.append(lambda kind, where, data: [f(kind, where, data) for f in list(app.state.listeners)])
    settings = load_notify(write_notify_file(tmp_path, smtp_server, webhooks))
    # As serve.py wires them.
    notifier = Notifier(store, settings, lambda: app.state.tree, app.state.presence)
    risk = RiskNotices(store, settings, lambda: app.state.tree)
    notifier.sources.append(risk)
    ingest.start()
    assert ingest.subscribed.wait(10)
    notifier.start()

    upstream = dnsmasq_factory(STUB_RECORDS)
    root = world_readable_dir("cs-highrisk-")
    filtering = tree.site.filtering.model_copy(update={"upstream_dns": ["127.0.0.1"]})
    comp = FilterComponent(filtering=filtering, port=free_port(), filter_port=free_port(),
                           upstream_port=upstream.port, dnsmasq_dir=str(root / "dnsmasq"),
                           chromium_dir=str(root / "chromium"), firefox_dir=str(root / "firefox"),
                           apply_nftables=False)
    pins = MockFactory()
    agent = Runtime(bootstrap(tmp_path, mosquitto), screen=Screen(), pin_factory=pins, components=[comp])
    try:
        agent.start()
        wait_until(lambda: comp.spec is not None and agent.link is not None and agent.link.is_connected, 15)
        ask = lambda name: dnsclient.query(name, "A", server="127.0.0.1", port=comp.port, timeout=2)  # noqa: E731
        assert ask("selfharm-forum.example") == ("NXDOMAIN", [])

        [mail] = wait_for_mail(smtp_server, CONTACT_EMAILS["dsl"], timeout=30)
        body = mail.get_content()
        assert "High-risk blocked attempt (Self-harm, suicide and eating disorders)" in mail["Subject"]
        assert "Device: 1a-pi-01" in body and f"Room: {tree.rooms['1a'].name} (1a), Table 1" in body
        assert "Risk list: Self-harm, suicide and eating disorders" in body and "Attempts so far: 1" in body
        assert "selfharm-forum" not in mail.as_string()  # never the domain
        user = agent.current_user()
        assert user is None or user not in mail.as_string()  # never who was logged in
        assert "/blocked?device=1a-pi-01&category=self-harm" in body
        assert smtp_server.to(CONTACT_EMAILS["office"]) == []   # the DSL's, not the office's
        [hook] = wait_until(lambda: webhooks.at("/json"), 10)
        assert hook["reason"] == "high-risk" and hook["category"] == "self-harm" and hook["device"] == "1a-pi-01"
        stored = store.search_blocked(SITE, category="self-harm")
        assert [r["domain"] for r in stored] == ["selfharm-forum.example"] and stored[0]["device"] == "1a-pi-01"

        # The same pupil tries again on another site of the list: counted, not sent again.
        assert ask("pro-ana-tips.example") == ("NXDOMAIN", [])
        wait_until(lambda: len(store.search_blocked(SITE, category="self-harm")) == 2, 15)
        wait_until(lambda: risk.suppressed >= 1, 10)
        # And an ordinary blocked lookup is no one's business but the weekly report's.
        assert ask("tiktok.com") == ("NXDOMAIN", [])
        wait_until(lambda: store.search_blocked(SITE, domain="tiktok.com"), 15)
        notifier.run_once()
        assert len(smtp_server.to(CONTACT_EMAILS["dsl"])) == 1
        rows = store.list_deliveries()
        assert {r["reason"] for r in rows} == {"high-risk"} and all(r["status"] == "sent" for r in rows)
    finally:
        agent.stop()
        pins.close()
        notifier.stop()
        ingest.stop()
        store.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_notify_check_says_who_hears_of_high_risk_attempts(tmp_path, capsys):
    import argparse

    from notify_fixtures import CONTACT_EMAILS, notify_tree_dir
    from server.notify.commands import cmd_check

    config = notify_tree_dir(tmp_path, REPO)
    notify = tmp_path / "notify.yaml"
    pw = tmp_path / "smtp.pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    notify.write_text(f"smtp: {{host: 127.0.0.1, username: u, password_file: {pw}, from: a@b.test}}\n")
    assert cmd_check(argparse.Namespace(file=str(notify), config=str(config))) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "high-risk" in line)
    assert "self-harm" in line and "gambling" not in line  # gambling only counts
    assert f"email:{CONTACT_EMAILS['dsl']}" in line and CONTACT_EMAILS["office"] not in line
