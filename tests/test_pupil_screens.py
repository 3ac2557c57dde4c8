"""Pupil screens (issue 16 items 3 and 6): words a five-year-old can follow, in the pupil's
language, with a pictogram and a recording; staff logins get the staff profile.

* the config check refuses a sentence over 12 words or 80 characters with file:line;
* English and Welsh ship; a room, a device or a pupil's language group picks the
  language; a key stage's ``translations`` win over the built-in words;
* a login in the site's staff groups gets the staff profile, and back again at logout;
* every spoken recording says exactly the built-in words it is filed under, every
  pictogram exists as SVG and PNG, and the player really plays one as the session user
  (ALSA's null device);
* the real runtime speaks a press and draws its pictogram; the X11 blank draws it too.
"""

from __future__ import annotations

import json
import pwd
import shutil
import subprocess
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest

from agent.config import ConfigInvalid, effective_policy, load_tree
from agent.config.words import BUILTIN, KEYS, MAX_SENTENCE_CHARS, MAX_WORDS, check_pupil_text, sentences
from agent.desktop.base import Words
from agent.desktop.session import Session
from agent.desktop.sound import SOUNDS, SoundPlayer, player_argv, recording
from lock_fixtures import xvfb  # noqa: F401 - a fixture
from services import require_binary, require_root, wait_until

EXAMPLE = Path(__file__).resolve().parent.parent / "config"
PICTOGRAMS = Path(__file__).resolve().parent.parent / "agent" / "desktop" / "assets" / "pictograms"
MONDAY = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)  # in term, in school hours


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "cfg"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("agent.example.yaml"))
    return root


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


# --------------------------------------------------------------------------- the length rule


def test_a_sentence_a_five_year_old_cannot_follow_is_refused_with_its_line(tree):
    ks1 = tree / "keystages" / "ks1.yaml"
    ks1.write_text(ks1.read_text() + textwrap.dedent("""
        messages:
          locked: This computer has been locked by your teacher because it is time to stop and listen now.
          blocked: Not for school.
        """))
    with pytest.raises(ConfigInvalid) as info:
        load_tree(tree)
    [error] = [str(e) for e in info.value.errors]
    assert error.startswith(f"cfg/keystages/ks1.yaml:{line_of(ks1, 'locked:')}: messages.locked: ")
    assert "has 17 words" in error and f"at most {MAX_WORDS} words" in error


def test_the_rule_counts_each_sentence_and_each_line():
    assert check_pupil_text("Well done for telling. A grown-up is coming.")  # two short sentences
    assert sentences("One.\nTwo!  Three? Four") == ["One.", "Two!", "Three?", "Four"]
    with pytest.raises(ValueError, match="sentence 2 has 13 words"):
        check_pupil_text("Stop. " + " ".join(["word"] * 13) + ".")
    with pytest.raises(ValueError, match=f"within {MAX_SENTENCE_CHARS} characters"):
        check_pupil_text("Supercalifragilisticexpialidocious " * 3)
    with pytest.raises(ValueError, match="must be some words"):
        check_pupil_text("   ")


def test_every_built_in_word_keeps_the_rule():
    for language, words in BUILTIN.items():
        assert set(words) == set(KEYS), language
        for key, text in words.items():
            check_pupil_text(text)


# --------------------------------------------------------------------------- languages


def test_a_welsh_medium_room_a_translation_and_a_pupils_language_group(tree):
    room = tree / "rooms" / "1a.yaml"
    room.write_text(room.read_text().replace("key_stage: ks1\n", "key_stage: ks1\nlanguage: cy\n"))
    site = tree / "site.yaml"
    site.write_text(site.read_text() + "language_groups: {polish-eal: pl}\n")
    ks1 = tree / "keystages" / "ks1.yaml"
    ks1.write_text(ks1.read_text() + textwrap.dedent("""
        translations:
          cy:
            locked: Amser gorffwys. Gofynna i oedolyn.
          pl:
            report_raised: Dobrze, że nam powiedziałeś. Dorosły już idzie.
        """))
    t = load_tree(tree)
    welsh = effective_policy(t, "1a-pi-01", MONDAY, user="pupil.1a.03", groups=("pupils",))
    assert welsh.language == "cy"
    assert welsh.messages["report_raised"] == BUILTIN["cy"]["report_raised"]
    assert welsh.messages["locked"] == "Amser gorffwys. Gofynna i oedolyn."        # the school's own
    polish = effective_policy(t, "1a-pi-01", MONDAY, user="pupil.1a.04", groups=("pupils", "polish-eal"))
    assert polish.language == "pl"
    assert polish.messages["report_raised"] == "Dobrze, że nam powiedziałeś. Dorosły już idzie."
    # Nothing in Polish for the lock: the school's words in the site's language (English) are next.
    assert polish.messages["locked"] == BUILTIN["en"]["locked"]
    english = effective_policy(t, "5b-pi-01", MONDAY)
    assert english.language == "en" and english.messages["report_raised"] == BUILTIN["en"]["report_raised"]


def test_a_language_code_that_is_not_one_is_refused(tree):
    site = tree / "site.yaml"
    text = site.read_text()
    site.write_text(text.replace("language: en\n", "language: Welsh\n") if "language: en\n" in text
                    else text + "language: Welsh\n")
    with pytest.raises(ConfigInvalid) as info:
        load_tree(tree)
    assert f"cfg/site.yaml:{line_of(site, 'language: Welsh')}: language: 'Welsh' is not a language code" \
        in str(info.value)


# --------------------------------------------------------------------------- staff on shared devices


def staff_tree(tree):
    (tree / "keystages" / "staff.yaml").write_text(textwrap.dedent("""
        name: Staff
        mode: upstream
        block_domains: [bet365.com]
        idle_lock_minutes: 5
        """))
    site = tree / "site.yaml"
    site.write_text(site.read_text() + "staff: {groups: [staff], accounts: [supply.teacher], profile: staff}\n")
    return load_tree(tree)


def test_a_staff_login_gets_the_staff_profile_not_the_pupils_allowlist(tree):
    t = staff_tree(tree)
    pupil = effective_policy(t, "5b-pi-01", MONDAY, user="pupil.5b.07", groups=("pupils",))
    assert (pupil.key_stage, pupil.mode, pupil.staff) == ("ks2", "allowlist", False)
    teacher = effective_policy(t, "5b-pi-01", MONDAY, user="m.khan", groups=("m.khan", "staff"))
    assert (teacher.key_stage, teacher.mode, teacher.staff) == ("staff", "upstream", True)
    assert teacher.block_domains == ("bet365.com",) and teacher.idle_lock_minutes == 5
    supply = effective_policy(t, "5b-pi-01", MONDAY, user="supply.teacher")
    assert supply.key_stage == "staff"
    # A device's compiled config carries the staff profile, so it can switch offline.
    assert "staff" in t.for_device("5b-pi-01")["profiles"]


def test_a_staff_profile_that_does_not_exist_is_refused(tree):
    site = tree / "site.yaml"
    site.write_text(site.read_text() + "staff: {groups: [staff], profile: staf}\n")
    with pytest.raises(ConfigInvalid) as info:
        load_tree(tree)
    assert "staff.profile: unknown key stage 'staf'" in str(info.value)


def test_the_runtime_switches_profile_when_a_teacher_logs_in_and_back_when_they_leave(tree, tmp_path):
    from agent.core.runtime import Runtime
    from agent.policy.sessions import SessionsComponent
    from runtime_fixtures import bootstrap

    staff_tree(tree)
    site = tree / "site.yaml"
    site.write_text(site.read_text().replace("accounts: [supply.teacher]", "accounts: [m.khan]"))
    who: list[Session] = []
    sessions = SessionsComponent(reader=lambda: list(who), poll_seconds=3600)
    rt = Runtime(bootstrap(tmp_path, device="5b-pi-01", config_dir=str(tree), pin_factory="mock"), connect=False, control=False,
                 sessions=sessions)
    rt.start()
    try:
        assert rt.policy.key_stage == "ks2"
        who.append(Session(id="3", user="m.khan", type="x11", display=":0"))
        rt.call(sessions.refresh)
        assert (rt.policy.key_stage, rt.policy.staff) == ("staff", True)
        who.clear()
        rt.call(sessions.refresh)
        assert (rt.policy.key_stage, rt.policy.staff) == ("ks2", False)
    finally:
        rt.stop()


# --------------------------------------------------------------------------- pictures and sound


def test_every_pupil_screen_has_its_pictogram():
    for name in ("report_raised", "report_acknowledged", "locked", "out_of_hours", "blocked", "acceptable_use",
                 "screen_button", "asked_teacher"):
        assert (PICTOGRAMS / f"{name}.svg").read_text().startswith("<svg"), name
        assert (PICTOGRAMS / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_each_recording_says_the_words_it_is_filed_under():
    manifest = json.loads((SOUNDS / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest) >= {"en", "cy"}
    for language, recorded in manifest.items():
        for key, text in recorded.items():
            assert text == BUILTIN[language][key], (language, key)  # scripts/make_assets.py again if not
            assert (SOUNDS / language / f"{key}.wav").read_bytes()[:4] == b"RIFF"
    assert recording("cy", "report_raised", BUILTIN["cy"]["report_raised"]) == SOUNDS / "cy" / "report_raised.wav"
    # A school's own words are never spoken by a voice saying something else: a chime.
    assert recording("en", "report_raised", "Thank you. Someone is coming.") == SOUNDS / "chime.wav"
    assert recording("pl", "report_raised", "Dobrze.") == SOUNDS / "chime.wav"


def test_volume_reaches_each_player():
    wav = SOUNDS / "chime.wav"
    assert player_argv("/usr/bin/pw-play", wav, 60) == ["/usr/bin/pw-play", "--volume=0.60", str(wav)]
    assert player_argv("/usr/bin/paplay", wav, 50) == ["/usr/bin/paplay", "--volume=32768", str(wav)]
    assert player_argv("/usr/bin/aplay", wav, 50) == ["/usr/bin/aplay", "-q", str(wav)]


@pytest.mark.integration
def test_the_player_plays_the_recording_as_the_session_user():
    require_root()
    require_binary("aplay")
    user = "nobody"
    session = Session(id="9", user=user, uid=pwd.getpwnam(user).pw_uid, type="x11", display=":0")
    player = SoundPlayer(players=("aplay",), extra_args=["-D", "null"])
    proc = player.play(session, "en", "report_raised", BUILTIN["en"]["report_raised"], volume=70)
    assert proc is not None
    argv = proc.args
    assert argv[:4] == ["runuser", "-u", user, "--"] and argv[-1] == "/dev/stdin"
    assert proc.wait(timeout=30) == 0                      # ALSA played it (to the null device)
    assert player.played[-1] == ("en", "report_raised", "report_raised.wav")
    assert player.play(session, "en", "report_raised", "x", volume=0) is None  # volume 0: silent


def test_the_runtime_speaks_a_press_and_draws_its_pictogram(tmp_path):
    from agent.core.runtime import Runtime
    from runtime_fixtures import bootstrap

    rt = Runtime(bootstrap(tmp_path, pin_factory="mock"), connect=False, control=False)
    rt.start()
    try:
        rt.press("button")
        assert rt.screen.is_blank and rt.screen.message.picture == "report_raised"
        assert rt.desktop.screen.picture == "report_raised"
        wait_until(lambda: rt.sound.played, timeout=5, message="the press was not spoken")
        assert rt.sound.played[-1] == ("en", "report_raised", "report_raised.wav")
    finally:
        rt.stop()


@pytest.mark.integration
def test_the_x11_blank_draws_the_pictogram_above_the_words(xvfb):
    from agent.desktop.x11 import X11Backend

    blank = X11Backend(None, xvfb.display)
    try:
        blank.show(Words(BUILTIN["en"]["report_raised"], "report_raised"))
        drawn = wait_until(lambda: (blank.drawn() or {}).get("shown") and blank.drawn(), timeout=20,
                           message="the blank never showed")
        assert drawn["picture"] == "report_raised" and drawn["message"] == BUILTIN["en"]["report_raised"]
        blank.set_message(Words(BUILTIN["en"]["report_acknowledged"], "report_acknowledged"))
        wait_until(lambda: (blank.drawn() or {}).get("picture") == "report_acknowledged", timeout=10,
                   message="the acknowledgement's pictogram never showed")
        blank.hide()
    finally:
        blank.close()
