"""The words on a pupil's screen: the built-in messages in each shipped language, the
rule that keeps a message short enough for a five-year-old, and which language a
screen speaks.

Every pupil screen (the report blank, the lock, the block page, the on-screen button,
the acceptable-use window and the monitoring notice) takes its words from here, through
the effective policy (policy.py: ``EffectivePolicy.words(language)``).  A school changes
them in YAML: a key stage's ``messages`` (in the site's ``language``) and
``translations`` (any other language, by code); anything it leaves out comes from the
built-in text below, in that language when we ship it, else in the site's language.

The length rule (``check_pupil_text``), docs/config.md "Pupil words": a sentence has at
most ``MAX_WORDS`` words and ``MAX_SENTENCE_CHARS`` characters.  Short sentences are
what the early-reading guidance for 4-5 year olds asks for (one idea a sentence,
read aloud to them); 12 words is about the longest sentence a Reception child is
expected to follow when it is read to them.  A sentence ends at ``.``, ``!``, ``?`` or a
line break.  The config check rejects a longer one with ``file:line: key: message``.
"""

from __future__ import annotations

import re

MAX_WORDS = 12
MAX_SENTENCE_CHARS = 80

LANGUAGE_RE = re.compile(r"^[a-z]{2,3}$")  # ISO 639-1 (or -3) codes: en, cy, pl, ur, pt

# The keys a school can set, and what each is for (docs/config.md shows these).
KEYS = (
    "report_raised", "report_acknowledged", "locked", "out_of_hours", "blocked", "monitoring_notice",
    "acceptable_use", "screen_button", "ask_teacher", "asked_teacher",
)

# Built-in words.  English and Welsh ship; a school adds any language in YAML.
BUILTIN: dict[str, dict[str, str]] = {
    "en": {
        "report_raised": "Well done for telling. A grown-up is coming.",
        "report_acknowledged": "A grown-up has seen your message.",
        "locked": "This computer is having a rest. Ask a grown-up.",
        "out_of_hours": "School computers are asleep now. See you soon!",
        "blocked": "This page is not for school. Ask a grown-up if you need it.",
        "monitoring_notice": "Grown-ups at school can see which websites this computer visits. This keeps you safe.",
        "acceptable_use": ("I will ask a grown-up before I use the internet.\n"
                           "I will only click on things I know are OK.\n"
                           "If something upsets me, I will press the button.\n"
                           "I will tell a grown-up.\n"
                           "I will be kind online."),
        "screen_button": "I saw something",
        "ask_teacher": "Ask my teacher",
        "asked_teacher": "Your teacher has been asked. Well done.",
    },
    "cy": {
        "report_raised": "Da iawn ti am ddweud. Mae oedolyn yn dod.",
        "report_acknowledged": "Mae oedolyn wedi gweld dy neges.",
        "locked": "Mae'r cyfrifiadur yma'n cael seibiant. Gofynna i oedolyn.",
        "out_of_hours": "Mae cyfrifiaduron yr ysgol yn cysgu nawr. Welwn ni ti cyn bo hir!",
        "blocked": "Dydy'r dudalen yma ddim ar gyfer yr ysgol. Gofynna i oedolyn os wyt ti ei hangen hi.",
        "monitoring_notice": "Mae oedolion yr ysgol yn gweld pa wefannau rwyt ti'n eu hagor. "
                             "Mae hyn yn dy gadw di'n ddiogel.",
        "acceptable_use": ("Bydda i'n gofyn i oedolyn cyn defnyddio'r rhyngrwyd.\n"
                           "Dim ond ar bethau sy'n iawn y bydda i'n clicio.\n"
                           "Os bydd rhywbeth yn fy ngofidio, bydda i'n pwyso'r botwm.\n"
                           "Bydda i'n dweud wrth oedolyn.\n"
                           "Bydda i'n garedig ar-lein."),
        "screen_button": "Dw i wedi gweld rhywbeth",
        "ask_teacher": "Gofyn i'r athro",
        "asked_teacher": "Rydyn ni wedi gofyn i'r athro. Da iawn.",
    },
}

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """*text* split into sentences (at . ! ? followed by a space, and at line breaks)."""
    return [s.strip() for s in _SENTENCE_END.split(text or "") if s.strip()]


def check_pupil_text(value: str | None) -> str | None:
    """Pydantic validator: every sentence within MAX_WORDS words and MAX_SENTENCE_CHARS characters."""
    if value is None:
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be some words (leave the key out to use the built-in text)")
    for number, sentence in enumerate(sentences(value), 1):
        words = len(sentence.split())
        where = f"sentence {number}" if len(sentences(value)) > 1 else "the sentence"
        if words > MAX_WORDS:
            raise ValueError(f"{where} has {words} words ({_short(sentence)}); a five-year-old can follow at most "
                             f"{MAX_WORDS} words a sentence: split it or say less")
        if len(sentence) > MAX_SENTENCE_CHARS:
            raise ValueError(f"{where} is {len(sentence)} characters ({_short(sentence)}); keep each sentence "
                             f"within {MAX_SENTENCE_CHARS} characters so a five-year-old can follow it")
    return value


def _short(sentence: str) -> str:
    return repr(sentence if len(sentence) <= 40 else sentence[:37] + "...")


def check_language(value: str) -> str:
    if not isinstance(value, str) or not LANGUAGE_RE.match(value):
        raise ValueError(f"{value!r} is not a language code (use the two-letter code: 'en', 'cy', 'pl')")
    return value


def words_for(language: str, site_language: str, messages: dict[str, str],
              translations: dict[str, dict[str, str]]) -> dict[str, str]:
    """Every key's text in *language*: the school's own words in that language first, then
    ours in that language, then the school's words in the site's language, then ours in it,
    then ours in English."""
    out: dict[str, str] = {}
    for key in KEYS:
        choices = []
        if language == site_language:
            choices += [messages.get(key), BUILTIN.get(language, {}).get(key)]
        else:
            choices += [translations.get(language, {}).get(key), BUILTIN.get(language, {}).get(key),
                        messages.get(key), BUILTIN.get(site_language, {}).get(key)]
        choices.append(BUILTIN["en"][key])
        out[key] = next(c for c in choices if c)
    return out
