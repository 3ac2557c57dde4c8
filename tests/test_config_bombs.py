"""YAML that expands without limit is refused with a file:line error, everywhere a config
file is read: `config validate`, `check-config` and the technician's rollout API.

The attack (found in review): a 423-byte room file of nested aliases ("billion laughs")
exhausted memory in `config validate` and made the rollout API answer 500; a
self-referencing alias raised RecursionError.  Aliases are refused before anything is
built (agent/config/yamlsrc.py), so the check costs nothing and the server keeps serving.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import resource

from agent import cli as agent_cli
from agent.config import load_tree
from server import cli as server_cli
from server.rollout import read_files
from server_fixtures import *  # noqa: F401,F403

REPO = Path(__file__).resolve().parent.parent

LAUGHS = "\n".join([
    'name: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]",
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]",
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]",
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]",
    "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]",
    "g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]",
    "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]",
]) + "\n"
SELF = "key_stage: ks2\nname: &me [1, *me]\n"
DEEP = "key_stage: ks2\nname: " + "[" * 5000 + "]" * 5000 + "\n"


def run(main, *argv) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def bounded_memory():
    """A regression must fail, not take the test machine down: cap this process at 2 GiB extra."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    import psutil

    cap = psutil.Process().memory_info().vms + 2 * 1024 ** 3
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("text, expected", [
    (LAUGHS, "rooms/5b.yaml:2: YAML alias '*a' is not allowed: write the value out in full"),
    (SELF, "rooms/5b.yaml:2: YAML alias '*me' is not allowed: write the value out in full"),
    (DEEP, "rooms/5b.yaml:2: nested more than 40 levels deep"),
])
def test_config_validate_refuses_expanding_yaml(tmp_path, capsys, bounded_memory, text, expected):
    cfg = tmp_path / "cfg"
    shutil.copytree(REPO / "config", cfg)
    (cfg / "rooms/5b.yaml").write_text(text)
    assert len(LAUGHS) < 500
    assert run(server_cli.main, "config", "validate", str(cfg)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"cfg/{expected}"
    assert err[-1] == f"classroom-server: 1 problem(s) found in {cfg}"


def test_check_config_refuses_an_alias_in_the_bootstrap(tmp_path, capsys, bounded_memory):
    boot = tmp_path / "agent.yaml"
    boot.write_text("device: &d 5b-pi-01\nsite: *d\n")
    assert run(agent_cli.main, "check-config", str(boot)) == 1
    assert capsys.readouterr().err.splitlines()[0] == \
        f"{boot}:2: YAML alias '*d' is not allowed: write the value out in full"


def test_the_rollout_api_answers_422_and_keeps_serving(sqlite_store, app_factory, staff_client, bounded_memory):
    app = app_factory(sqlite_store, publisher=lambda *a, **k: None)
    tech = staff_client(app, "technician")
    for text, needle in ((LAUGHS, "YAML alias '*a'"), (SELF, "YAML alias '*me'"), (DEEP, "nested more than")):
        files = read_files(REPO / "config")
        files["rooms/5b.yaml"] = text
        r = tech.post("/api/v1/config/rollouts", json={"files": files, "why": "bomb"})
        assert r.status_code == 422, r.text
        assert any(e.startswith("config/rooms/5b.yaml:2: ") and needle in e for e in r.json()["detail"]["errors"])
    assert sqlite_store.count("rollouts") == 0
    ok = tech.post("/api/v1/config/rollouts", json={"files": read_files(REPO / "config"), "why": "real"})
    assert ok.status_code == 201
    assert ok.json()["version"] == load_tree(REPO / "config").version
