"""Risk lists (issue 15 item 4, agent side) and the help sites (item 6).

The matcher on its own; the config errors a technician gets for a bad list; the shipped
lists and help sites in config/ (the starter tree is the same files: test_cli_config.py);
and a real dnsmasq: a blocked lookup on a risk list leaves the device tagged with its
category, anything else untagged, while the help sites resolve on every profile.
"""

from __future__ import annotations

import textwrap

import pytest

from agent.config import ConfigInvalid, effective_policy, load_tree
from agent.config.schema import Filtering
from agent.filter.risk import RiskMatcher
from filter_fixtures import (  # noqa: F401 - fixtures
    REPO, SCHOOL_TIME, filter_root, filtering_for, make_filter, stub_upstream,
)
from services import wait_until

pytestmark = pytest.mark.timeout(60)

HELP_SITES = ("ceop.police.uk", "thinkuknow.co.uk", "childline.org.uk", "nspcc.org.uk")


def lists(*items):
    return Filtering(upstream_dns=["10.20.0.1"], risk_lists=list(items)).risk_lists


def test_domains_match_with_subdomains_keywords_anywhere_and_the_first_list_wins():
    m = RiskMatcher(lists(
        {"id": "self-harm", "name": "Self-harm", "keywords": ["suicid", "pro-ana"]},
        {"id": "adult", "name": "Adult", "domains": ["pornhub.com"], "keywords": ["porn"]},
        {"id": "gambling", "name": "Gambling", "domains": ["bet365.com"], "notify": False},
    ))
    assert m.categories == ["self-harm", "adult", "gambling"]
    assert m.category("pornhub.com") == "adult"
    assert m.category("www.PornHub.com.") == "adult"          # case and the root dot
    assert m.category("cdn.free-porn.example") == "adult"       # keyword inside a label
    assert m.category("how-to-suicide.example") == "self-harm"
    assert m.category("suicidal-porn.example") == "self-harm"   # both: the first list wins
    assert m.category("mobile.bet365.com") == "gambling"
    assert m.category("notbet365.com") is None                  # a domain is a suffix at a dot, not a substring
    assert m.category("bbc.co.uk") is None and m.category("com") is None
    assert not RiskMatcher() and RiskMatcher().category("pornhub.com") is None


def test_the_shipped_lists_tag_what_they_say_and_leave_school_sites_alone():
    tree = load_tree(REPO / "config")
    m = RiskMatcher.from_filtering(tree.site.filtering)
    assert set(m.categories) >= {"self-harm", "adult", "extremism", "weapons", "drugs", "gambling"}
    assert m.category("selfharm-forum.example") == "self-harm"
    assert m.category("www.xvideos.com") == "adult"
    assert m.category("stormfront.org") == "extremism"
    assert m.category("gunbroker.com") == "weapons"
    assert m.category("buyweed-now.example") == "drugs"
    assert m.category("online-casino.example") == "gambling"
    assert m.category("chatroulette.com") == "stranger-chat"  # the school's own list
    notify = {r.id: r.notify for r in tree.site.filtering.risk_lists}
    assert notify["self-harm"] and notify["adult"] and not notify["gambling"]
    # Nothing a school allows, nor the help sites, is on a risk list.
    for profile in tree.profiles.values():
        for domain in (*profile.allow_domains, *profile.check.allowed):
            assert m.category(domain) is None, domain


def test_help_sites_are_allowed_in_browser_and_dns_and_checked_on_every_profile():
    tree = load_tree(REPO / "config")
    from agent.filter.browser import chromium_policy, firefox_policy

    for name, profile in tree.profiles.items():
        assert set(HELP_SITES) <= set(profile.allow_domains), name
        assert set(HELP_SITES) <= set(profile.check.allowed), name
    for device in tree.device_ids():
        policy = effective_policy(tree, device, SCHOOL_TIME)
        allow = chromium_policy(policy)["URLAllowlist"]
        website = firefox_policy(policy)["WebsiteFilter"]["Exceptions"]
        for site in HELP_SITES:
            assert f"https://www.{site}" in allow and f"https://{site}" in allow, (device, site)
            assert f"https://www.{site}/*" in website and f"https://{site}/*" in website, (device, site)


def _site_with(tmp_path, risk_yaml: str):
    import shutil

    root = tmp_path / "cfg"
    shutil.copytree(REPO / "config", root)
    site = root / "site.yaml"
    text = site.read_text()
    start = text.index("  risk_lists:")
    end = text.index("\nheartbeat_seconds")
    site.write_text(text[:start] + textwrap.indent(textwrap.dedent(risk_yaml).strip("\n"), "  ") + "\n" + text[end:])
    return root, site


def _errors(root):
    with pytest.raises(ConfigInvalid) as exc:
        load_tree(root)
    return [str(e) for e in exc.value.errors]


def _line(path, needle):
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


def test_bad_risk_lists_name_file_line_and_key(tmp_path):
    root, site = _site_with(tmp_path, """
        risk_lists:
          - id: Self Harm
            name: Self-harm
            keywords: [suicid]
          - id: adult
            name: Adult
            keywords: [Porn, "s x"]
          - id: empty
            name: Nothing in it
          - id: adult
            name: Adult again
            domains: ["*.example.com"]
        """)
    errors = _errors(root)
    rel = "cfg/site.yaml"
    assert f"{rel}:{_line(site, 'id: Self Harm')}: filtering.risk_lists[0].id: 'Self Harm' is not a valid id " \
           "(use lowercase letters, digits and '-')" in errors
    assert f"{rel}:{_line(site, 'keywords: [Porn')}: filtering.risk_lists[1].keywords[0]: 'Porn' is not a keyword " \
           "(write it in lowercase: 'porn')" in errors
    assert any(e.startswith(f"{rel}:{_line(site, 'keywords: [Porn')}: filtering.risk_lists[1].keywords[1]: "
                            "'s x' is not a keyword") for e in errors)
    assert any(e.startswith(f"{rel}:{_line(site, 'id: empty')}: filtering.risk_lists[2]: ")
               and "give domains, keywords or both" in e for e in errors)
    assert any("filtering.risk_lists[3].domains[0]: '*.example.com' is not a domain" in e for e in errors)


def test_two_lists_with_one_id_are_refused(tmp_path):
    root, site = _site_with(tmp_path, """
        risk_lists:
          - {id: adult, name: Adult, keywords: [porn]}
          - {id: adult, name: Adult again, keywords: [xxx]}
        """)
    [error] = _errors(root)
    assert error.startswith(f"cfg/site.yaml:{_line(site, 'risk_lists:')}: filtering.risk_lists: ")
    assert "'adult' is used by two risk lists" in error


# --------------------------------------------------------------------------- on a real dnsmasq


@pytest.mark.integration
def test_a_blocked_lookup_on_a_risk_list_is_tagged_and_others_are_not(make_filter):
    from agent.filter import dnsclient

    filtering = filtering_for(risk_lists=[
        {"id": "self-harm", "name": "Self-harm", "keywords": ["suicid"]},
        {"id": "adult", "name": "Adult", "domains": ["pornhub.com"]},
    ])
    comp, rt = make_filter(filtering=filtering)
    for name in ("www.pornhub.com", "how-to-suicide.example", "tiktok.com"):
        assert dnsclient.query(name, "A", server="127.0.0.1", port=comp.port, timeout=2)[0] == "NXDOMAIN"
    wait_until(lambda: len(comp.blocked.coalescer) == 3, 5)
    rt.clock.advance(1)
    events = wait_until(lambda: len(rt.of_type("blocked")) == 3 and rt.of_type("blocked"), 5)
    by_domain = {e["domain"]: e for e in events}
    assert by_domain["www.pornhub.com"]["category"] == "adult"
    assert by_domain["how-to-suicide.example"]["category"] == "self-harm"
    assert "category" not in by_domain["tiktok.com"]
    # Still every DfE field on a tagged one.
    tagged = by_domain["www.pornhub.com"]
    assert tagged["user"] == "pupil.5b.07" and tagged["device_ip"] == "127.0.0.1" and tagged["count"] == 1


@pytest.mark.integration
def test_help_sites_resolve_through_the_device_filter(make_filter):
    from agent.filter import dnsclient

    comp, rt = make_filter()  # the stub upstream answers the help sites like the school's resolver
    for site in HELP_SITES:
        for name in (site, f"www.{site}"):
            rcode, answers = dnsclient.query(name, "A", server="127.0.0.1", port=comp.port, timeout=2)
            assert rcode == "NOERROR" and answers, name
    assert rt.of_type("blocked") == []
