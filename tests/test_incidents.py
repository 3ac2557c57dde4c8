"""Incident categories, 4 Cs and the policy checklists as data; what each role may see."""

from __future__ import annotations

import pytest

from server import incidents as inc
from server.http.auth import User


def test_every_policy_category_has_a_sourced_checklist():
    assert set(inc.CATEGORIES) == set(inc.CHECKLISTS)
    assert set(inc.FOUR_CS) == {"content", "contact", "conduct", "commerce"}
    for category, items in inc.CHECKLISTS.items():
        keys = [k for k, _, _ in items]
        assert len(keys) == len(set(keys)), category
        for key, text, source in items:
            assert text and source[:3] in ("000", "001", "002"), (category, key)
    # The policies' headline actions are there (000 §11.2-11.4, §7.3.2).
    assert "report-iwf" in dict((k, t) for k, t, _ in inc.CHECKLISTS["indecent-images"])
    assert "store-device" in [k for k, _, _ in inc.CHECKLISTS["nudes-semi-nudes"]]
    assert "refer-social-care" in [k for k, _, _ in inc.CHECKLISTS["child-sexual-abuse-exploitation"]]
    assert "inform-parents" in [k for k, _, _ in inc.CHECKLISTS["filtering-breach"]]


@pytest.mark.parametrize("body, field", [
    (None, "body"), ([], "body"), ({}, "body"), ({"category": "nope"}, "category"), ({"tags": "content"}, "tags"),
    ({"tags": ["content", "cash"]}, "tags"), ({"status": "gone"}, "status"), ({"outcome": 5}, "outcome"),
    ({"room": "1a"}, "room"),
])
def test_bad_changes_name_the_field(body, field):
    with pytest.raises(inc.IncidentError, match=f"^{field}:"):
        inc.validate_changes(body)


def test_checklist_state_follows_latest_tick():
    actions = [{"kind": "tick", "item": "report-iwf", "actor": "s.patel", "ts": "1", "text": None},
               {"kind": "untick", "item": "report-iwf", "actor": "d.dsl", "ts": "2", "text": "wrong one"},
               {"kind": "tick", "item": "inform-dsl", "actor": "s.patel", "ts": "3", "text": None}]
    items = {i["item"]: i for i in inc.checklist("indecent-images", actions)}
    assert items["report-iwf"]["done"] is False and items["report-iwf"]["by"] == "d.dsl"
    assert items["inform-dsl"]["done"] is True and items["store-device"]["by"] is None
    with pytest.raises(inc.IncidentError, match="^item:"):
        inc.validate_tick("indecent-images", {"item": "screen-off"})
    with pytest.raises(inc.IncidentError, match="^category:"):
        inc.validate_tick(None, {"item": "report-iwf"})


def test_teacher_view_hides_the_dsl_record():
    incident = {"id": "x", "room": "5b", "category": "other", "outcome": "referred",
                "actions": [{"kind": "note", "item": None, "text": "private", "actor": "s.patel", "ts": "1"}],
                "timeline": [{"state": "raised"}]}
    teacher = inc.for_user(incident, User("m.khan", "teacher", rooms=("5b",)))
    assert "private" not in str(teacher) and "referred" not in str(teacher) and teacher["timeline"]
    dsl = inc.for_user(incident, User("s.patel", "dsl"))
    assert dsl["notes"][0]["text"] == "private" and dsl["checklist"]
