"""Incidents: the DSL's record of a report, built from the alert transitions.

Each alert id becomes one incident (server/store/incidents.py creates it as the transitions are
ingested).  Here lives what the school adds: the category from the policies' list, a
4 Cs tag, notes, and the procedure checklist for the category -- written as data from
the three school policies in shared/policies/, each item carrying its source -- with
who ticked what and when, plus status and outcome.

Who sees what (``VISIBLE_FIELDS``, applied by ``for_user`` in the API and the pages,
server/http/api/incidents.py and server/web/pages/incidents.py): teachers see their own
rooms' incidents as a timeline only, admins every room's timeline on the dashboard; the
category, 4 Cs tags, status, outcome, notes and checklist are the DSL's alone, and so is
filtering by status.  Evidence (domains the device resolved before the press) is DSL
only and every view of it is written to the audit log.  The weekly report's incident
counts by category and status are the DSL's too (server/reports/data.py ``for_role``).
"""

from __future__ import annotations

from typing import Any

CATEGORIES = {
    "filtering-breach": "Filtering breach",
    "cyberbullying": "Cyberbullying",
    "child-on-child-sexual-violence-harassment": "Child-on-child sexual violence and sexual harassment",
    "nudes-semi-nudes": "Nudes and semi-nudes (youth produced sexual imagery)",
    "child-sexual-abuse-exploitation": "Child sexual abuse and exploitation (including criminal exploitation)",
    "indecent-images": "Indecent images of children",
    "radicalisation-extremism": "Radicalisation and extremism",
    "online-hate": "Online hate",
    "cybercrime": "Cybercrime",
    "concern-about-adult": "Concern about an adult (a member of staff, volunteer or visitor)",
    "other": "Other",
}

# Categories the headteacher handles, not the DSL (policy 002 §8.2, §6.3.3: a concern about
# staff goes to the Head of School, or the chair of governors if it is about the head, and
# is discussed with the LADO).  Logging one, or setting an incident to one, sends a message
# to the escalation contacts whose role is headteacher (server/notify/events.py), never to
# the DSL's contacts or a webhook: an allegation must not reach a shared channel.
HEAD_CATEGORIES = frozenset({"concern-about-adult"})

# The 4 Cs of online risk (KCSIE; policy 002 section 1): an incident may carry several.
FOUR_CS = {
    "content": "Content: exposure to illegal, inappropriate or harmful content",
    "contact": "Contact: harmful online interaction with other users",
    "conduct": "Conduct: personal online behaviour that increases the likelihood of, or causes, harm",
    "commerce": "Commerce: online gambling, inappropriate advertising, phishing or financial scams",
}

# What each of the 4 Cs takes in, shown next to the tags (KCSIE 2023+ adds misinformation,
# disinformation and conspiracy theories to content; generative AI brings made-up content
# and chatbots a child can talk to).
FOUR_CS_HELP = {
    "content": "e.g. pornography, self-harm and suicide, racism, extremism; misinformation, disinformation "
               "(including fake news) and conspiracy theories; AI-generated images, video or text that are "
               "harmful or made to deceive",
    "contact": "e.g. peer pressure, commercial advertising, adults posing as children or young adults to groom "
               "or exploit them; AI contact: chatbots and AI 'friends' that a child talks to as if to a person",
    "conduct": "e.g. making, sending and receiving explicit images (nudes and semi-nudes), online bullying; "
               "using AI tools to make or share harmful content about others",
    "commerce": "e.g. online gambling, inappropriate advertising, phishing and financial scams, in-game "
                "purchases",
}

STATUSES = ("open", "in-progress", "referred", "closed")

# Policy files: 000 = Penny Acres and Wigley Federation, 001 = Calstock and Stoke
# Climsland, 002 = Chilton (Viking Academy Trust); see shared/policies/README.md.
_DSL = ("inform-dsl", "Inform the DSL (or deputy) and record in line with the child protection policy",
        "000 §10.1; 001 §9")
_PARENTS = ("inform-parents", "Inform parents/carers about the incident and how it is being managed",
            "000 §7.3.2, §10.1, §11.2-11.4")
_REVIEW = ("review", "Review the handling of the incident; update procedures if needed", "000 §11.1-11.3")
_SUPPORT = ("support", "Provide support for the learners involved (pastoral support, counselling)",
            "000 §11.1-11.3")

CHECKLISTS: dict[str, list[tuple[str, str, str]]] = {
    "filtering-breach": [
        ("screen-off", "Screen turned off / blanked and reported to staff straight away", "000 §7.3.2; 002 §6.2"),
        ("report-url", "Record the site (URL/domain) and tell the DSL and technical staff", "000 §7.3.2"),
        ("fix-filter", "Technician checks and fixes the filtering (block the site)", "000 §7.3.2; 002 §6.3"),
        ("report-iwf", "If the material may be illegal, report it to the IWF, police or CEOP", "000 §7.3.2"),
        _PARENTS,
        _REVIEW,
    ],
    "cyberbullying": [
        _DSL,
        ("anti-bullying", "Respond in line with the anti-bullying and behaviour policies", "000 §11.5; 001 §9.5"),
        _SUPPORT,
        ("police-if-crime", "Contact the police if a criminal offence is suspected", "000 §10; 001 §9.5"),
        _PARENTS,
        _REVIEW,
    ],
    "child-on-child-sexual-violence-harassment": [
        _DSL,
        ("risk-needs-assessment", "Make an immediate risk and needs assessment for the victim, the alleged "
                                  "perpetrator and any other children involved; record it and keep it under review",
         "002 §10.1.1"),
        ("reassure-victim", "Reassure the victim that they are taken seriously and will be supported and kept safe",
         "002 §10.1.1"),
        ("searching-screening", "Content on a learner's own device: follow the DfE 'searching, screening and "
                                "confiscation' advice", "000 §11.1; 002 §10.1.1"),
        ("safety-plan", "Safeguards and support for every learner involved (safety plans, blocking, reporting "
                        "and removing content, counselling/pastoral support)", "000 §11.1; 002 §10.1.1"),
        ("sanctions", "Sanctions in line with the behaviour policy", "000 §11.1"),
        _PARENTS,
        ("refer-social-care", "Refer to children's social care and/or the police where necessary",
         "000 §11.1; 002 §10.1.1"),
        ("police-first", "If a criminal offence may have been committed, speak to the police first so an "
                         "investigation is not compromised", "000 §11.1; 002 §10.1.1"),
        ("other-settings", "Children at another school involved: work with that school's DSL",
         "000 §11.1; 002 §10.1.1"),
        _REVIEW,
    ],
    "nudes-semi-nudes": [
        _DSL,
        ("under-13-referral", "A child under 13 is involved (every pupil in a primary school): refer to "
                              "children's social care and/or the police immediately", "002 §10.1.2"),
        ("do-not-view", "Do not view, copy, share or save the imagery (only the DSL, if unavoidable, with "
                        "a documented reason)", "000 §11.2; 001 §9.1"),
        ("store-device", "Store the device securely", "000 §11.2; 001 §9.1"),
        ("block-isolate", "If shared on school network/devices, block access and isolate it", "000 §11.2"),
        ("risk-assessment", "Carry out a risk assessment of the learners involved", "000 §11.2"),
        _PARENTS,
        ("refer-social-care", "Refer to children's social care and/or the police as appropriate (UKCIS guidance)",
         "000 §11.2; 001 §9.1"),
        _SUPPORT,
        _REVIEW,
    ],
    "child-sexual-abuse-exploitation": [
        _DSL,
        ("store-device", "If appropriate, store any devices involved securely", "000 §11.3; 001 §9.2"),
        ("refer-social-care", "Refer to children's social care if required", "000 §11.3; 001 §9.2"),
        ("police", "Inform the police immediately (101, or 999 if a child is at immediate risk)",
         "000 §11.3; 001 §9.2"),
        ("ceop", "Consider a CEOP report (www.ceop.police.uk/safety-centre/)", "000 §11.3; 001 §9.2"),
        ("risk-assessment", "Carry out a risk assessment of the learners involved", "000 §11.3"),
        _PARENTS,
        _SUPPORT,
        _REVIEW,
    ],
    "indecent-images": [
        _DSL,
        ("store-device", "Store any devices involved securely", "000 §11.4; 001 §9.3"),
        ("report-iwf", "Report the URLs to the Internet Watch Foundation (www.iwf.org.uk)", "000 §11.4; 001 §9.3"),
        ("police", "Inform the police (101, or 999 if immediate risk) and children's services as appropriate",
         "000 §11.4; 001 §9.3"),
        ("delete-copies", "Make sure no copies exist (e.g. in e-mails); never keep copies unless the police ask",
         "000 §11.4"),
        ("lado", "If a member of staff is involved: inform the headteacher and the LADO", "000 §11.4"),
        _PARENTS,
    ],
    "radicalisation-extremism": [
        _DSL,
        ("prevent", "Act in line with the child protection policy and the Prevent pathway (may include a "
                    "Channel referral)", "000 §11.7; 001 §9.4"),
        ("police-if-crime", "Contact the police if a criminal offence is suspected", "000 §10"),
        _PARENTS,
        _REVIEW,
    ],
    "online-hate": [
        _DSL,
        ("anti-bullying", "Respond in line with the anti-bullying and behaviour policies", "000 §11.6; 001 §9.6"),
        ("police-if-crime", "Contact the police if a criminal offence is suspected", "000 §11.6; 001 §9.6"),
        _PARENTS,
        _REVIEW,
    ],
    "cybercrime": [
        _DSL,
        ("behaviour", "Respond in line with the behaviour policy", "000 §11.8"),
        ("cyber-choices", "Consider a Cyber Choices referral for early intervention", "000 §10, §11.8"),
        ("exploitation-check", "If a child may be exploited for their skills, follow the CRE procedure", "000 §11.8"),
        _PARENTS,
    ],
    "concern-about-adult": [
        ("inform-head", "Refer to the headteacher (Head of School) at once; if the concern is about the "
                        "headteacher, to the chair of governors", "002 §6.3.3, §8.2"),
        ("lado", "The headteacher discusses the concern with the LADO (Local Authority Designated Officer) "
                 "within one working day, before any investigation", "002 §8.2; 000 §11.4"),
        ("allegations-policy", "Follow the allegations against staff policy; do not investigate or tell the "
                               "adult concerned until the LADO has advised", "002 §8.2"),
        ("police-if-crime", "Contact the police if a criminal offence is suspected (999 if a child is at "
                            "immediate risk)", "002 §8"),
        ("welfare", "Welfare support for the adult, and disciplinary action where necessary, in line with the "
                    "staff code of conduct", "002 §8.2"),
        _REVIEW,
    ],
    "other": [
        _DSL,
        _PARENTS,
        _REVIEW,
    ],
}


class IncidentError(ValueError):
    """A bad incident change; str() names the field."""


def checklist(category: str | None, actions: list[dict]) -> list[dict]:
    """The category's checklist with who ticked each item and when (latest action wins)."""
    state: dict[str, dict] = {}
    for action in actions:
        if action["kind"] in ("tick", "untick") and action.get("item"):
            state[action["item"]] = action
    items = []
    for key, text, source in CHECKLISTS.get(category or "", []):
        last = state.get(key)
        ticked = last is not None and last["kind"] == "tick"
        items.append({"item": key, "text": text, "source": f"shared/policies {source}", "done": ticked,
                      "by": last["actor"] if last else None, "at": last["ts"] if last else None,
                      "note": last.get("text") if last else None})
    return items


def validate_changes(body: Any) -> dict:
    """Check a PATCH body: category, tags (4 Cs), status, outcome."""
    if not isinstance(body, dict) or not body:
        raise IncidentError("body: must be a JSON object with category, tags, status or outcome")
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key == "category":
            if value not in CATEGORIES:
                raise IncidentError(f"category: {value!r} is not one of {', '.join(CATEGORIES)}")
        elif key == "tags":
            if not isinstance(value, list) or any(v not in FOUR_CS for v in value):
                raise IncidentError(f"tags: must be a list of {', '.join(FOUR_CS)}")
            value = sorted(set(value))
        elif key == "status":
            if value not in STATUSES:
                raise IncidentError(f"status: {value!r} is not one of {', '.join(STATUSES)}")
        elif key == "outcome":
            if not isinstance(value, str) or len(value) > 4000:
                raise IncidentError("outcome: must be text of at most 4000 characters")
        else:
            raise IncidentError(f"{key}: unknown field (use category, tags, status, outcome)")
        changes[key] = value
    return changes


def validate_concern(body: Any, rooms, devices_in_room) -> dict:
    """Check a staff concern (form or API): room (one of *rooms*), device (optional, one of
    ``devices_in_room(room)``), what happened, URL or domain (optional), when it happened
    (optional, RFC 3339), tell_it, about_adult.  Returns the fields ``Store.log_concern`` takes."""
    from urllib.parse import urlsplit

    from agent.config.schema import is_domain
    from agent.protocol import ProtocolError, now_ts, parse_ts

    if not isinstance(body, dict):
        raise IncidentError("body: must be a JSON object with room and what")
    known = {"room", "device", "what", "url", "happened_at", "tell_it", "about_adult"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise IncidentError(f"{unknown[0]}: unknown field (use {', '.join(sorted(known))})")
    room = body.get("room")
    if not isinstance(room, str) or room not in rooms:
        raise IncidentError(f"room: {str(room)[:64]!r} is not one of your rooms" if room else "room: choose the room")
    device = body.get("device") or None
    if device is not None and (not isinstance(device, str) or device not in devices_in_room(room)):
        raise IncidentError(f"device: {str(device)[:64]!r} is not a device in {room}")
    what = body.get("what")
    if not isinstance(what, str) or not what.strip():
        raise IncidentError("what: say what happened")
    if len(what) > 8000:
        raise IncidentError("what: at most 8000 characters")
    url, domain = body.get("url") or None, None
    if url is not None:
        if not isinstance(url, str) or len(url) > 2000:
            raise IncidentError("url: must be a web address or domain of at most 2000 characters")
        url = url.strip()
        candidate = url if "://" in url else "http://" + url
        host = (urlsplit(candidate).hostname or "").rstrip(".").lower()
        if not is_domain(host):
            raise IncidentError(f"url: {url[:80]!r} is not a web address or domain (e.g. games.example.com)")
        domain = host
    happened_at = body.get("happened_at") or None
    if happened_at is not None:
        try:
            happened_at = now_ts(parse_ts(happened_at))  # the stored form: sorts with every other ts
        except (ProtocolError, TypeError, ValueError):
            raise IncidentError("happened_at: must be a time like 2026-11-24T10:05:00Z") from None
    tell_it, about_adult = body.get("tell_it", False), body.get("about_adult", False)
    if not isinstance(tell_it, bool) or not isinstance(about_adult, bool):
        raise IncidentError("tell_it, about_adult: must be true or false")
    if tell_it and domain is None:
        raise IncidentError("url: give the site's address or domain to tell IT about it")
    return {"room": room, "device": device, "what": what.strip(), "url": url, "domain": domain,
            "happened_at": happened_at, "tell_it": tell_it,
            "category": "concern-about-adult" if about_adult else None}


def validate_tick(category: str | None, body: Any) -> tuple[str, bool, str | None]:
    if not isinstance(body, dict):
        raise IncidentError("body: must be a JSON object with item and done")
    item, done, note = body.get("item"), body.get("done", True), body.get("note")
    keys = [k for k, _, _ in CHECKLISTS.get(category or "", [])]
    if not category:
        raise IncidentError("category: set the incident's category before ticking its checklist")
    if item not in keys:
        raise IncidentError(f"item: {item!r} is not on the {category} checklist ({', '.join(keys)})")
    if not isinstance(done, bool):
        raise IncidentError("done: must be true or false")
    if note is not None and (not isinstance(note, str) or len(note) > 2000):
        raise IncidentError("note: must be text of at most 2000 characters")
    return item, done, note


# Who sees which field of an incident (docs/data-protection.md, "Incidents"): what the
# device reported is the timeline, seen by the room's teachers, admins (on the dashboard)
# and the DSL; what the school added (classification, status, outcome, notes, checklist)
# is the DSL's record, seen by the DSL only.  A whitelist: a new column stays DSL-only
# until it is added to TIMELINE_FIELDS on purpose.  tests/test_api_roles.py checks every
# route against this table.
TIMELINE_FIELDS = ("id", "site", "room", "device", "seat", "raised_at", "alert_state", "timeline")
# session_user: who was logged in on the device at the press (from its report_evidence, DfE
# "users are identifiable"); concern: what a member of staff wrote when logging a concern
# (what happened, the URL, who logged it); exports: who exported the record, when, how.
RECORD_FIELDS = ("category", "tags", "status", "outcome", "created_at", "updated_at", "closed_at", "actions",
                 "notes", "checklist", "session_user", "concern", "exports")
VISIBLE_FIELDS = {"teacher": TIMELINE_FIELDS, "admin": TIMELINE_FIELDS, "dsl": TIMELINE_FIELDS + RECORD_FIELDS}


def is_live_alert(alert_state: str | None) -> bool:
    """True for a press still to be answered (a room view or the office board shows it): not
    cleared, and not a concern staff logged by hand (alert_state ``logged``)."""
    return alert_state not in ("cleared", "logged")


def sees_record(user) -> bool:
    """True if *user* may see the DSL's record (category, tags, status, outcome, notes, ...)."""
    return user.role == "dsl"


def for_user(incident: dict, user) -> dict:
    """What *user* may see of an incident: the DSL everything, with the checklist and notes
    worked out; anyone else only the TIMELINE_FIELDS."""
    if sees_record(user):
        out = dict(incident)
        out["checklist"] = checklist(out.get("category"), out.get("actions") or [])
        out["notes"] = [a for a in out.get("actions") or [] if a["kind"] == "note"]
        return out
    return {k: incident[k] for k in VISIBLE_FIELDS.get(user.role, ()) if k in incident}
