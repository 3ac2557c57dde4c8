"""Allowlist changes the leadership can see and approve (policy 000 §7.3.1, 002 §6.3.1).

"Changes to the filtering ... with consent from the leadership team; all changes to the
filtering policy are logged and recorded."  The flow:

1. a technician **proposes** a change, with a reason: either domains to allow (or stop
   allowing) in some key stages (``kind`` ``domains``: what the weekly report's over-blocking
   candidates offer with one click), or a whole config tree as YAML (``kind`` ``files``, as
   ``config publish`` takes it), checked exactly as a publish would be before it is stored;
2. the DSL **approves** (or rejects, with a note);
3. approval **publishes** it through the existing rollout (server/rollout.py: validated,
   content-addressed, audited with its diff, devices told), named in the rollout's "why"
   with the proposer, the approver and the reason.

A domains change is applied to the live tree's own YAML text (``apply_domains``): the
line is added to (or taken out of) the key stage file's ``allow_domains`` list, so the
technician's comments and layout stay.  A files proposal is published only onto the
version it was proposed against (someone else's publish in between means proposing again).

Every publish that changes what a key stage allows, whether or not it came through a
proposal, is written to the change log (``record_publish``, called by the rollout), so
the DSL's change log is whole; with the override history (teachers' "allow for this
lesson", the agent's ``override_*`` events) it is what ``/allowlist`` shows.  The rows are
server/store/allowlist.py.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from agent.config.schema import is_domain

from .rollout import RolloutError, check_files

MAX_DOMAINS = 50
KINDS = ("domains", "files")


class ChangeError(ValueError):
    """A proposal or decision that cannot be made; str() is one line naming the field."""


# --------------------------------------------------------------------------- what changed


def allowlists(tree) -> dict[str, dict[str, set[str]]]:
    """``{key stage: {"domains": set, "urls": set}}``: what each key stage allows (inheritance applied)."""
    if tree is None:
        return {}
    return {ks: {"domains": set(p.allow_domains), "urls": set(p.allow_urls)} for ks, p in tree.profiles.items()}


def allowlist_diff(old_tree, new_tree) -> dict[str, dict[str, list[str]]]:
    """Per key stage, what *new_tree* allows that *old_tree* did not and the reverse:
    ``{ks: {"added": [...], "removed": [...]}}`` (domains and URLs), only key stages that changed."""
    old, new = allowlists(old_tree), allowlists(new_tree)
    out = {}
    for ks in sorted(set(old) | set(new)):
        before = old.get(ks, {"domains": set(), "urls": set()})
        after = new.get(ks, {"domains": set(), "urls": set()})
        added = sorted((after["domains"] - before["domains"]) | (after["urls"] - before["urls"]))
        removed = sorted((before["domains"] - after["domains"]) | (before["urls"] - after["urls"]))
        if added or removed:
            out[ks] = {"added": added, "removed": removed}
    return out


# --------------------------------------------------------------------------- proposals


def check_proposal(body: Any, tree) -> dict:
    """A technician's proposal (API body or form), checked; the fields ``add_allowlist_change`` takes."""
    if not isinstance(body, dict):
        raise ChangeError("body: must be a JSON object with kind, reason and key_stages/add_domains or files")
    known = {"kind", "reason", "key_stages", "add_domains", "remove_domains", "files", "source"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ChangeError(f"{unknown[0]}: unknown field (use {', '.join(sorted(known))})")
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise ChangeError("reason: say why this change is needed (the DSL reads it)")
    if len(reason) > 2000:
        raise ChangeError("reason: at most 2000 characters")
    source = body.get("source") or "proposal"
    if source not in ("proposal", "weekly-report", "yaml"):
        raise ChangeError("source: one of proposal, weekly-report, yaml")
    kind = body.get("kind") or ("files" if "files" in body else "domains")
    if kind not in KINDS:
        raise ChangeError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if tree is None:
        raise ChangeError("no config has been published yet: publish one first")
    if kind == "files":
        try:
            new_tree, files = check_files(body.get("files"))
        except RolloutError as exc:
            raise ChangeError("; ".join(exc.errors[:5])) from None
        if new_tree.site.site != tree.site.site:
            # Proposed at one school, it would be approved and published there: never another's tree.
            raise ChangeError(f"config/site.yaml: site: this tree is for site {new_tree.site.site!r}, but you "
                              f"are working in {tree.site.site!r}; switch to that school first")
        diff = allowlist_diff(tree, new_tree)
        return {"kind": "files", "reason": reason.strip(), "source": "yaml" if source == "proposal" else source,
                "files": files, "key_stages": sorted(diff),
                "add_domains": sorted({d for v in diff.values() for d in v["added"]}),
                "remove_domains": sorted({d for v in diff.values() for d in v["removed"]}),
                "base_version": tree.version}
    key_stages = body.get("key_stages")
    if isinstance(key_stages, str):
        key_stages = [k.strip() for k in key_stages.split(",") if k.strip()]
    if not isinstance(key_stages, list) or not key_stages:
        raise ChangeError(f"key_stages: choose at least one of {', '.join(sorted(tree.profiles))}")
    for ks in key_stages:
        if ks not in tree.profiles:
            raise ChangeError(f"key_stages: {str(ks)[:40]!r} is not one of {', '.join(sorted(tree.profiles))}")
    lists = {}
    for field in ("add_domains", "remove_domains"):
        value = body.get(field) or []
        if isinstance(value, str):
            value = [d.strip().lower() for d in re.split(r"[\s,]+", value) if d.strip()]
        if not isinstance(value, list) or len(value) > MAX_DOMAINS:
            raise ChangeError(f"{field}: a list of at most {MAX_DOMAINS} domains")
        for domain in value:
            if not is_domain(domain):
                raise ChangeError(f"{field}: {str(domain)[:80]!r} is not a domain (e.g. www.example.org)")
        lists[field] = sorted(set(value))
    if not lists["add_domains"] and not lists["remove_domains"]:
        raise ChangeError("add_domains: name at least one domain to allow (or remove_domains, to stop allowing)")
    if set(lists["add_domains"]) & set(lists["remove_domains"]):
        raise ChangeError("add_domains, remove_domains: a domain cannot be in both")
    return {"kind": "domains", "reason": reason.strip(), "source": source, "key_stages": sorted(set(key_stages)),
            "files": None, "base_version": tree.version, **lists}


# --------------------------------------------------------------------------- YAML text


_ITEM = re.compile(r"^(\s+)-\s+['\"]?([^'\"#\s]+)['\"]?\s*(#.*)?$")


def apply_domains(text: str, add: list[str], remove: list[str]) -> str:
    """A key stage file's YAML text with *add* put in its ``allow_domains`` list and *remove*
    taken out, keeping everything else (comments, order, layout) as it was."""
    data = yaml.safe_load(text) or {}
    current = data.get("allow_domains") if isinstance(data, dict) else None
    current = list(current or [])
    missing = [d for d in remove if d not in current]
    if missing:
        raise ChangeError(f"remove_domains: {missing[0]} is not in this key stage's own allow_domains "
                          "(it may come from the key stage it extends: propose removing it there)")
    add = [d for d in add if d not in current]
    lines = text.splitlines(keepends=True)
    key = next((i for i, line in enumerate(lines) if re.match(r"^allow_domains\s*:", line)), None)
    if key is None:
        body = "".join(lines)
        if body and not body.endswith("\n"):
            body += "\n"
        return body + "allow_domains:\n" + "".join(f"  - {d}\n" for d in add) if add else body
    rest = lines[key].split(":", 1)[1].strip()
    if rest and not rest.startswith("#"):
        # Flow style ([a, b]): write the list again in the same style.
        kept = [d for d in current if d not in remove] + add
        lines[key] = "allow_domains: [" + ", ".join(kept) + "]\n"
        return "".join(lines)
    end, indent = key + 1, "  "
    items_end = key + 1
    while end < len(lines):
        line = lines[end]
        if not line.strip() or line.lstrip().startswith("#"):
            end += 1
            continue
        match = _ITEM.match(line.rstrip("\n"))
        if not match:
            break
        indent = match.group(1)
        end += 1
        items_end = end
    block = [line for line in lines[key + 1:items_end]
             if not ((m := _ITEM.match(line.rstrip("\n"))) and m.group(2) in remove)]
    block += [f"{indent}- {d}\n" for d in add]
    if lines[key:key + 1] and block and items_end == len(lines) and not lines[-1].endswith("\n"):
        block = [b if b.endswith("\n") else b + "\n" for b in block]
    return "".join(lines[:key + 1] + block + lines[items_end:])


def files_for(change: dict, live_files: dict[str, str], live_version: str | None) -> dict[str, str]:
    """The whole config tree to publish for an approved *change*, from the live version's files."""
    if change["kind"] == "files":
        if change.get("base_version") and change["base_version"] != live_version:
            raise ChangeError(f"the live config changed since this was proposed (it was {change['base_version']}, "
                              f"now {live_version}): propose it again on the new version")
        return dict(change["files"] or {})
    files = dict(live_files)
    for ks in change["key_stages"]:
        name = next((n for n in (f"keystages/{ks}.yaml", f"keystages/{ks}.yml") if n in files), None)
        if name is None:
            raise ChangeError(f"key_stages: the live config has no keystages/{ks}.yaml")
        files[name] = apply_domains(files[name], change["add_domains"], change["remove_domains"])
    return files


def publish_change(rollouts, store, change: dict, approver: str) -> dict:
    """Publish an approved change through its school's rollout (the change's site: never
    another school's tree); returns the rollout (Published.to_dict())."""
    current = rollouts.current(change["site"])
    if current is None:
        raise ChangeError("no config has been published yet: publish one first")
    files = files_for(change, rollouts.files(current["version"]) or {}, current["version"])
    why = (f"allowlist change {change['id'][:8]} proposed by {change['proposed_by']}, approved by {approver}: "
           f"{change['reason']}")[:2000]
    try:
        published = rollouts.publish(files, approver, why, site=change["site"], change=change)
    except RolloutError as exc:
        raise ChangeError("; ".join(exc.errors[:5])) from None
    store.mark_allowlist_published(change["id"], change["site"], published.version)
    return published.to_dict()


def record_publish(store, old_tree, new_tree, *, actor: str, why: str, kind: str, version: str,
                   change: dict | None) -> dict | None:
    """The rollout's hook: a publish or rollback that changed an allow list without an approved
    proposal goes in the change log as it happened (no approver), so the log is whole."""
    if change is not None or old_tree is None:
        return None  # carried out an approved proposal (already logged), or the first publish (the baseline)
    diff = allowlist_diff(old_tree, new_tree)
    if not diff:
        return None
    return store.add_allowlist_change(
        site=new_tree.site.site, kind="files", reason=why, source=kind, proposed_by=actor, key_stages=sorted(diff),
        add_domains=sorted({d for v in diff.values() for d in v["added"]}),
        remove_domains=sorted({d for v in diff.values() for d in v["removed"]}),
        status="published", published_version=version, base_version=old_tree.version if old_tree else None)
