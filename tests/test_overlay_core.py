"""The overlay's toolkit-free half (agent/desktop/programs/overlay_core.py): the JSON-lines conversation with
the agent, malformed lines, the staff PIN and its growing back-off (handed over by the
agent, so a restart does not reset it), and what happens when the agent goes away.  Both real drawings (Tk under Xvfb, GTK under sway) are tested in
test_screen.py and test_screen_wayland.py."""

import io
import json

import pytest

from agent.desktop.programs.overlay_core import HELD_HINT, STAFF_HINT, WAIT_HINT, WRONG_HINT, OverlayCore
from agent.desktop.pin import PinBackoff, hash_pin

RAISED = "Well done for telling. A grown-up is coming."
PIN = "246801"


class Drawing(OverlayCore):
    """Records what a toolkit would have drawn."""

    def __init__(self, clock):
        self.out = io.StringIO()
        super().__init__(clock=clock, out=self.out)
        self.visible = False
        self.text = ""
        self.hint = STAFF_HINT
        self.quitted = False

    def draw_show(self):
        self.visible = True

    def draw_hide(self):
        self.visible = False

    def draw_message(self, text):
        self.text = text

    def draw_hint(self, text):
        self.hint = text

    def drawn(self):
        return {"shown": self.visible, "message": self.text, "hint": self.hint}

    def quit(self):
        self.quitted = True

    def events(self):
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def overlay():
    o = Drawing(Clock())
    o.feed(json.dumps({"op": "config", "pin_hash": hash_pin(PIN)}).encode() + b"\n")
    return o


def type_keys(o, text, enter=True):
    for ch in text:
        o.key(ch, ch)
    if enter:
        o.key("Return")


def test_show_message_hide_and_state(overlay):
    overlay.feed(b'{"op": "show", "message": "' + RAISED.encode() + b'"}\n{"op": "state"}\n')
    assert overlay.visible and overlay.text == RAISED
    overlay.feed(b'{"op": "message", "message": "A grown-up has seen your message."}\n{"op": "hide"}\n')
    assert not overlay.visible
    assert [e["event"] for e in overlay.events()] == ["shown", "state", "hidden"]
    assert overlay.events()[1] == {"event": "state", "shown": True, "message": RAISED, "hint": STAFF_HINT}


def test_lines_may_arrive_in_pieces(overlay):
    overlay.feed(b'{"op": "sh')
    assert not overlay.visible
    overlay.feed(b'ow", "message": "hi"}\n')
    assert overlay.visible and overlay.text == "hi"


@pytest.mark.parametrize("line,why", [
    (b"not json", "Expecting value"),
    (b"[1, 2]", "not an object"),
    (b'{"op": "explode"}', "unknown op 'explode'"),
    (b'{"message": "no op"}', "unknown op None"),
])
def test_malformed_lines_are_ignored_with_a_message(overlay, capsys, line, why):
    overlay.feed(b'{"op": "show", "message": "hi"}\n')
    overlay.feed(line + b"\n")
    err = capsys.readouterr().err.strip()
    assert err.startswith("overlay: ignored bad line ") and why in err and len(err.splitlines()) == 1
    assert overlay.visible and overlay.text == "hi"           # nothing changed
    overlay.feed(b'{"op": "hide"}\n')                        # and it still listens
    assert not overlay.visible


def test_a_mangled_config_line_never_shows_the_pin_hash(overlay, capsys):
    pin_hash = hash_pin(PIN)
    overlay.feed(b'{"op": "config", "pin_hash": "' + pin_hash.encode() + b'"\n')   # no closing brace
    err = capsys.readouterr().err
    assert "ignored bad line" in err and pin_hash.split("$")[-1][:12] not in err and "scrypt" not in err


def test_escape_alt_f4_and_letters_do_nothing_the_pin_clears(overlay):
    overlay.feed(b'{"op": "show", "message": "hi"}\n')
    for keysym, char in (("Escape", "\x1b"), ("F4", ""), ("Tab", "\t"), ("w", "w"), ("q", "q")):
        overlay.key(keysym, char)
    assert overlay.visible and overlay.typed == ""
    overlay.key("KP_2")
    type_keys(overlay, "45", enter=False)
    overlay.key("BackSpace")
    assert overlay.hint == "\u25cf\u25cf"
    type_keys(overlay, "6801")                                # "2" + "4" + "6801"
    assert not overlay.visible
    cleared, hidden = overlay.events()[-2:]
    assert (cleared["event"], cleared["by"], hidden) == ("cleared", "staff-pin", {"event": "hidden"})


def test_a_show_that_says_no_pin_takes_none_until_a_show_that_allows_it(overlay):
    # The DSL's hold (agent/policy/lock.py): the right PIN does nothing, costs nothing, says nothing.
    overlay.feed(b'{"op": "show", "message": "hi", "pin": false}\n')
    assert overlay.visible and overlay.hint == HELD_HINT
    before = overlay.backoff.to_dict()
    type_keys(overlay, PIN)
    type_keys(overlay, "0000")
    assert overlay.visible and overlay.typed == "" and overlay.hint == HELD_HINT
    assert [e["event"] for e in overlay.events()] == ["shown"] and overlay.backoff.to_dict() == before
    # The hold released under a teacher's lock: the same screen takes the PIN again.
    overlay.feed(b'{"op": "message", "message": "hi", "pin": true}\n')
    assert overlay.hint == STAFF_HINT
    type_keys(overlay, PIN)
    assert not overlay.visible and overlay.events()[-2]["event"] == "cleared"
    # A later show without a word about the PIN takes it, as every report blank does.
    overlay.feed(b'{"op": "show", "message": "hi", "pin": false}\n{"op": "hide"}\n{"op": "show", "message": "hi"}\n')
    type_keys(overlay, PIN)
    assert not overlay.visible


def test_the_agent_says_no_pin_for_words_that_say_so():
    from agent.desktop.base import Words
    from agent.desktop.overlay import OverlayBackend

    backend = OverlayBackend()
    assert backend._show_op(Words("Locked", "locked", pin=False))["pin"] is False
    assert backend._show_op(Words("Locked", "locked"))["pin"] is True
    assert backend._show_op("plain words")["pin"] is True


def test_wrong_pins_cost_a_growing_wait_reported_to_the_agent(overlay):
    overlay.feed(b'{"op": "show", "message": "hi"}\n')
    for _ in range(PinBackoff.FREE_TRIES - 1):
        type_keys(overlay, "111111")
        assert overlay.hint == WRONG_HINT                     # a slip or two costs nothing
    type_keys(overlay, "111111")
    assert overlay.hint == WAIT_HINT
    type_keys(overlay, PIN)                                   # right, but not even checked while waiting
    assert overlay.visible and overlay.hint == WAIT_HINT
    overlay.clock.now += PinBackoff.BASE_SECONDS
    type_keys(overlay, "111111")                              # the next wrong one waits twice as long
    overlay.clock.now += PinBackoff.BASE_SECONDS
    type_keys(overlay, PIN)
    assert overlay.visible
    overlay.clock.now += PinBackoff.BASE_SECONDS
    type_keys(overlay, PIN)
    assert not overlay.visible
    wrong = [e for e in overlay.events() if e["event"] == "pin_wrong"]
    assert [e["backoff"]["failures"] for e in wrong] == [1, 2, 3, 4]
    assert wrong[-1]["backoff"]["locked_until"] == 1000.0 + PinBackoff.BASE_SECONDS + 2 * PinBackoff.BASE_SECONDS
    assert overlay.events()[-2]["event"] == "cleared" and overlay.events()[-2]["backoff"]["failures"] == 0


def test_the_agents_backoff_is_what_a_new_overlay_enforces(overlay):
    """An overlay started after a restart gets the device's back-off from the agent."""
    saved = PinBackoff(failures=7, locked_until=overlay.clock.now + 600, last_failure=overlay.clock.now)
    overlay.feed(json.dumps({"op": "show", "message": "hi", "backoff": saved.to_dict()}).encode() + b"\n")
    type_keys(overlay, PIN)
    assert overlay.visible and overlay.hint == WAIT_HINT
    overlay.clock.now += 600
    type_keys(overlay, "111111")                              # the 8th wrong try: the longest wait yet
    assert overlay.events()[-1]["backoff"]["failures"] == 8
    assert overlay.backoff.wait(overlay.clock.now) == min(PinBackoff.MAX_SECONDS, PinBackoff.BASE_SECONDS * 2 ** 5)


def test_no_pin_configured_means_only_the_agent_clears(overlay):
    overlay.feed(b'{"op": "config", "pin_hash": 1234}\n{"op": "show", "message": "hi"}\n')
    assert overlay.pin_hash is None
    type_keys(overlay, PIN)
    assert overlay.visible


def test_agent_gone_while_shown_keeps_it_up_until_the_pin(overlay):
    overlay.feed(b'{"op": "show", "message": "hi"}\n')
    overlay.feed(b"")                                         # the agent died
    assert overlay.visible and not overlay.quitted
    type_keys(overlay, PIN)
    assert not overlay.visible and overlay.quitted


def test_agent_gone_while_hidden_quits(overlay):
    overlay.feed(b"")
    assert overlay.quitted
