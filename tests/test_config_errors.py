"""Deliberately broken config trees each give the exact file:line: key: message."""

import shutil
import textwrap
from pathlib import Path

import pytest

from agent.config import ConfigInvalid, load_tree

EXAMPLE = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture
def tree(tmp_path):
    """A copy of the example tree named 'cfg', so messages read cfg/rooms/5b.yaml:N."""
    root = tmp_path / "cfg"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("agent.example.yaml"))
    return root


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).write_text(textwrap.dedent(text).lstrip("\n"))


def line_of(path: Path, needle: str) -> int:
    """Line number of the first line containing *needle* (keeps tests honest if the example grows)."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as info:
        load_tree(root)
    return [str(e) for e in info.value.errors]


ROOM = """
room: 5b
name: Year 5 Beech
key_stage: ks2
alert_staff: [m.khan]
devices:
  - id: 5b-pi-01
    seat: Table 1
    hardware: {button_pin: 17, led_pin: 27}
"""


def test_example_tree_is_valid():
    tree = load_tree(EXAMPLE)
    assert set(tree.profiles) == {"eyfs", "ks1", "ks2"}
    assert "swiggle.org.uk" in tree.profiles["ks2"].allow_domains
    # KS2 extends KS1 extends EYFS: lists add up, scalars override.
    assert "bbc.co.uk" in tree.profiles["ks2"].allow_domains
    assert tree.profiles["ks2"].idle_lock_minutes == 15
    assert tree.profiles["eyfs"].shared_login_allowed is True
    assert tree.profiles["ks1"].shared_login_allowed is False


def test_unknown_key_has_did_you_mean(tree):
    write(tree, "rooms/5b.yaml", ROOM + "alert_staf: [x]\n")
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:9: alert_staf: unknown key (did you mean 'alert_staff'?)"]


def test_nested_unknown_key(tree):
    write(tree, "rooms/5b.yaml", ROOM.replace("{button_pin: 17, led_pin: 27}", "\n      buton_pin: 17"))
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:9: devices[0].hardware.buton_pin: unknown key (did you mean 'button_pin'?)"]


def test_wrong_type(tree):
    write(tree, "keystages/ks1.yaml", "name: Key Stage 1\nextends: eyfs\nidle_lock_minutes: soon\n")
    assert errors_of(tree) == [
        "cfg/keystages/ks1.yaml:3: idle_lock_minutes: 'soon': input should be a valid integer, "
        "unable to parse string as an integer"]


def test_bad_domain_in_allowlist(tree):
    write(tree, "keystages/ks1.yaml", """
        name: Key Stage 1
        extends: eyfs
        allow_domains:
          - purplemash.com
          - bbc..co.uk
          - "*.scratch.mit.edu"
          - https://code.org/learn
    """)
    assert errors_of(tree) == [
        "cfg/keystages/ks1.yaml:5: allow_domains[1]: 'bbc..co.uk' is not a domain",
        "cfg/keystages/ks1.yaml:6: allow_domains[2]: '*.scratch.mit.edu' is not a domain "
        "(write 'scratch.mit.edu': subdomains are always included)",
        "cfg/keystages/ks1.yaml:7: allow_domains[3]: 'https://code.org/learn' is not a domain "
        "(put addresses with a path under allow_urls)",
    ]


def test_bad_url_pattern(tree):
    write(tree, "keystages/ks1.yaml", """
        name: Key Stage 1
        extends: eyfs
        allow_urls: ["ftp://files.example.org", "*"]
    """)
    assert errors_of(tree) == [
        "cfg/keystages/ks1.yaml:3: allow_urls[0]: 'ftp://files.example.org' is not a URL pattern "
        "(only http and https addresses)",
        "cfg/keystages/ks1.yaml:3: allow_urls[1]: '*' is not a URL pattern (like 'https://www.bbc.co.uk/bitesize')",
    ]


def test_duplicate_device_id_across_rooms(tree):
    write(tree, "rooms/1a.yaml", """
        room: 1a
        name: Year 1 Ash
        key_stage: ks1
        alert_staff: [a.jones]
        devices:
          - id: 5b-pi-01
    """)
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:7: devices[0].id: duplicate device id '5b-pi-01' (also in cfg/rooms/1a.yaml at line 6)"]


def test_duplicate_device_id_in_one_room(tree):
    write(tree, "rooms/5b.yaml", ROOM + "  - id: 5b-pi-01\n")
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:9: devices[1].id: duplicate device id '5b-pi-01' (also in this room at line 6)"]


def test_yaml_syntax_error_names_the_line(tree):
    write(tree, "rooms/5b.yaml", ROOM + "schedule: [\n  {name: x\n")
    (error,) = errors_of(tree)
    assert error.startswith("cfg/rooms/5b.yaml:11: YAML syntax error: ")


def test_empty_file(tree):
    (tree / "rooms/5b.yaml").write_text("")
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:1: file is empty"]


def test_missing_key_stage(tree):
    (tree / "keystages/ks2.yaml").unlink()
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:3: key_stage: unknown key stage 'ks2' (did you mean 'ks1'?); known: eyfs, ks1"]


def test_missing_required_key(tree):
    write(tree, "rooms/5b.yaml", ROOM.replace("alert_staff: [m.khan]\n", ""))
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:1: alert_staff: is required"]


def test_duplicate_yaml_key(tree):
    write(tree, "rooms/5b.yaml", ROOM + "name: Again\n")
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:9: name: duplicate key 'name' (first given at line 2)"]


def test_unknown_timezone_and_public_resolver(tree):
    text = (tree / "site.yaml").read_text()
    text = text.replace("timezone: Europe/London", "timezone: Europe/Londn")
    text = text.replace("upstream_dns: [10.20.0.1]", "upstream_dns: [8.8.8.8]")
    (tree / "site.yaml").write_text(text)
    site = tree / "site.yaml"
    assert errors_of(tree) == [
        f"cfg/site.yaml:{line_of(site, 'timezone:')}: timezone: unknown timezone 'Europe/Londn' "
        "(did you mean 'Europe/London'?)",
        f"cfg/site.yaml:{line_of(site, 'upstream_dns:')}: filtering.upstream_dns[0]: 8.8.8.8 is a public resolver; "
        "forward only to the school's filtered resolver",
    ]


def test_overlapping_and_impossible_schedules(tree):
    write(tree, "rooms/5b.yaml", ROOM + """
schedule:
  - {name: Club, days: [wed], start: "15:30", end: "17:00", mode: open}
  - {name: Film, days: [wed, thu], start: "16:30", end: "17:30", mode: open}
  - {name: Late film, days: [thu], start: "17:30", end: "18:00", mode: open}
""")
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:12: schedule[1]: overlaps schedule[0] (Club) on wed"]


def test_impossible_schedules(tree):
    write(tree, "rooms/5b.yaml", ROOM + """
schedule:
  - {name: Backwards, days: [mon], start: "14:00", end: "13:00", mode: locked}
  - {name: Bad time, days: [mon], start: "25:00", end: "26:00", mode: locked}
  - {name: No days, days: [], start: "10:00", end: "11:00", mode: sideways}
""")
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:11: schedule[0]: start 14:00 is not before end 13:00",
        "cfg/rooms/5b.yaml:12: schedule[1].end: '26:00' is not a time of day (write it like '08:30')",
        "cfg/rooms/5b.yaml:12: schedule[1].start: '25:00' is not a time of day (write it like '08:30')",
        "cfg/rooms/5b.yaml:13: schedule[2].days: List should have at least 1 item after validation, not 0",
        "cfg/rooms/5b.yaml:13: schedule[2].mode: 'sideways' is not allowed; input should be 'open' or 'locked'",
    ]


def test_room_id_must_match_file_name(tree):
    write(tree, "rooms/5b.yaml", ROOM.replace("room: 5b", "room: 5c"))
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:1: room: room id '5c' does not match the file name '5b.yaml'"]


def test_profile_extends_loop_and_unknown(tree):
    write(tree, "keystages/eyfs.yaml", "name: EYFS\nextends: ks2\n")
    assert errors_of(tree) == [
        "cfg/keystages/ks1.yaml:3: extends: profiles extend each other in a loop: eyfs -> ks2 -> ks1 -> eyfs"]
    write(tree, "keystages/eyfs.yaml", "name: EYFS\nextends: ks5\n")
    assert errors_of(tree) == ["cfg/keystages/eyfs.yaml:2: extends: unknown key stage 'ks5' (did you mean 'ks2'?)"]


def test_bad_gpio_pin_and_same_pins(tree):
    write(tree, "rooms/5b.yaml", ROOM.replace("{button_pin: 17, led_pin: 27}", "{button_pin: 40, led_pin: 27}")
          + "  - id: 5b-pi-02\n    hardware: {button_pin: 17, led_pin: 17}\n")
    assert errors_of(tree) == [
        "cfg/rooms/5b.yaml:8: devices[0].hardware.button_pin: 40 is not a GPIO pin (BCM numbers run 0-27)",
        "cfg/rooms/5b.yaml:10: devices[1].hardware: button_pin and led_pin are both 17",
    ]


def test_every_problem_in_one_run(tree):
    """Errors in several files are all gathered, sorted by file and line."""
    (tree / "rooms/1a.yaml").write_text("")
    write(tree, "rooms/5b.yaml", ROOM + "alert_staf: [x]\n")
    text = (tree / "site.yaml").read_text().replace("timezone: Europe/London", "timezone: Mars/Base")
    (tree / "site.yaml").write_text(text)
    errors = errors_of(tree)
    assert [e.split(":")[0] for e in errors] == ["cfg/rooms/1a.yaml", "cfg/rooms/5b.yaml", "cfg/site.yaml"]


def test_missing_site_file(tree):
    (tree / "site.yaml").unlink()
    assert errors_of(tree) == ["cfg/site.yaml: missing: every config tree needs a site.yaml"]


def test_not_a_mapping(tree):
    (tree / "rooms/5b.yaml").write_text("- just\n- a list\n")
    assert errors_of(tree) == ["cfg/rooms/5b.yaml:1: expected a mapping of keys, got list"]


def test_overlapping_terms(tree):
    text = (tree / "site.yaml").read_text().replace("start: 2027-01-05", "start: 2026-12-10")
    (tree / "site.yaml").write_text(text)
    line = line_of(tree / "site.yaml", "Spring 2027")
    assert errors_of(tree) == [f"cfg/site.yaml:{line}: terms[1]: overlaps terms[0] (Autumn 2026)"]


@pytest.mark.parametrize("value, message", [
    ("0", "broker.batch_events: 0 is too small: the least allowed is 1"),
    ("101", "broker.batch_events: 101 is too large: the most allowed is 100"),
    ("lots", "broker.batch_events: 'lots': input should be a valid integer, unable to parse string as an integer"),
])
def test_batch_events_out_of_range_names_the_line(tree, value, message):
    site = tree / "site.yaml"
    text = site.read_text().replace("  prefix: classroom/v1\n", f"  prefix: classroom/v1\n  batch_events: {value}\n")
    site.write_text(text)
    assert errors_of(tree) == [f"cfg/site.yaml:{line_of(site, 'batch_events')}: {message}"]


def test_a_number_out_of_range_names_the_value_and_the_limit(tree):
    site = tree / "site.yaml"
    text = site.read_text().replace("  prefix: classroom/v1\n", "  prefix: classroom/v1\n  reconnect_max_seconds: 0.1\n")
    site.write_text(text)
    assert errors_of(tree) == [f"cfg/site.yaml:{line_of(site, 'reconnect_max_seconds')}: "
                               "broker.reconnect_max_seconds: 0.1 is too small: the least allowed is 0.5"]
