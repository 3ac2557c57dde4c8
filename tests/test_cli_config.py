"""The config commands, the one-line error convention and docs that cannot drift."""

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.config.reference import render_markdown
from server import cli as server_cli

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(main, *argv):
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code


def test_validate_ok(capsys):
    assert run(server_cli.main, "config", "validate", str(ROOT / "config")) == 0
    assert "ok: 3 key stages, 3 rooms, 6 devices, version " in capsys.readouterr().out


def test_validate_reports_every_problem_and_exits_1(tmp_path, capsys):
    cfg = tmp_path / "cfg"
    shutil.copytree(ROOT / "config", cfg)
    (cfg / "rooms/1a.yaml").write_text("")
    (cfg / "rooms/5b.yaml").write_text((cfg / "rooms/5b.yaml").read_text().replace("key_stage: ks2", "key_stage: ks9"))
    before = {p: p.read_bytes() for p in cfg.rglob("*.yaml")}
    assert run(server_cli.main, "config", "validate", str(cfg)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "cfg/rooms/1a.yaml:1: file is empty",
        "cfg/rooms/5b.yaml:3: key_stage: unknown key stage 'ks9' (did you mean 'ks2'?); known: eyfs, ks1, ks2",
        "classroom-server: 2 problem(s) found in " + str(cfg),
    ]
    assert {p: p.read_bytes() for p in cfg.rglob("*.yaml")} == before  # validation never writes


def test_schema_export(tmp_path):
    out = tmp_path / "schema.json"
    assert run(server_cli.main, "config", "schema", "-o", str(out)) == 0
    schema = json.loads(out.read_text())
    assert set(schema["$defs"]) == {"Site", "Profile", "Room", "AgentBootstrap"}
    assert "allow_domains" in schema["$defs"]["Profile"]["properties"]
    assert schema["$defs"]["Room"]["additionalProperties"] is False


def test_init_writes_a_valid_tree_and_refuses_to_clobber(tmp_path, capsys):
    target = tmp_path / "newschool"
    assert run(server_cli.main, "init", str(target)) == 0
    assert run(server_cli.main, "config", "validate", str(target)) == 0
    assert (target / "site.yaml").exists() and (target / "rooms").is_dir()
    capsys.readouterr()
    assert run(server_cli.main, "init", str(target)) == 1
    err = capsys.readouterr().err
    assert err == f"classroom-server: error: {target}: not empty; choose a new folder or pass --force to overwrite starter files\n"


def test_example_tree_is_the_starter_tree():
    """config/ doubles as the reference example; it must match what `init` writes."""
    cmp = filecmp.dircmp(ROOT / "config", ROOT / "agent/config/starter", ignore=["agent.example.yaml", "__pycache__"])

    def differences(c):
        out = c.left_only + c.right_only + c.diff_files
        for sub in c.subdirs.values():
            out += differences(sub)
        return out

    assert differences(cmp) == []


def test_config_docs_are_generated_from_the_schema():
    assert (ROOT / "docs/config.md").read_text() == render_markdown(), \
        "docs/config.md is stale: run `classroom-server config docs > docs/config.md`"


def test_check_config_ok(capsys):
    code = run(agent_cli.main, "check-config", str(ROOT / "config/agent.example.yaml"), "--tree", str(ROOT / "config"))
    assert code == 0
    assert "ok (5b-pi-01 in tree" in capsys.readouterr().out


def test_check_config_bad_bootstrap(tmp_path, capsys):
    bad = tmp_path / "agent.yaml"
    bad.write_text("device: 5B-PI\nsite: penny-acres\nbroker_url: http://x\ncollector_url: https://c\nscreen: x11\n")
    assert run(agent_cli.main, "check-config", str(bad)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{bad}:1: device: '5B-PI' is not a valid id (use lowercase letters, digits and '-')",
        f"{bad}:3: broker_url: 'http://x' is not a URL (expected mqtt://host or mqtts://host)",
        f"{bad}:5: screen: unknown key (did you mean 'screen_backend'?)",
        "classroom-agent: 3 problem(s) found",
    ]


def test_check_config_device_not_in_tree(tmp_path, capsys):
    boot = tmp_path / "agent.yaml"
    boot.write_text((ROOT / "config/agent.example.yaml").read_text().replace("device: 5b-pi-01", "device: 5b-pi-09"))
    assert run(agent_cli.main, "check-config", str(boot), "--tree", str(ROOT / "config")) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{boot}:3: device: unknown device '5b-pi-09' (did you mean '5b-pi-02'?) in {ROOT / 'config'}")


def test_check_config_refuses_a_pin_hash_in_agent_yaml_and_a_short_old_or_exposed_pin_file(tmp_path, capsys):
    """The PIN hash only in a file only the agent can read, of a PIN of 6 digits or more (issue 14, items 5, 11)."""
    import base64
    import hashlib

    from agent.desktop.pin import hash_pin

    pin_file = tmp_path / "staff-pin"
    boot = tmp_path / "agent.yaml"
    example = (ROOT / "config/agent.example.yaml").read_text()
    boot.write_text(example + f"staff_pin_hash: '{hash_pin('246801')}'\n")
    assert run(agent_cli.main, "check-config", str(boot)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{boot}:{len(example.splitlines()) + 1}: staff_pin_hash: no longer read from "
                             "agent.yaml, where the agent's group can read it; put it in staff_pin_file")
    assert err[1:] == ["classroom-agent: 1 problem(s) found"]

    boot.write_text(example + f"staff_pin_file: {pin_file}\n")
    b64 = lambda b: base64.b64encode(b).decode().rstrip("=")  # noqa: E731
    five = hash_pin("246801").split("$")
    five[4] = "5"                                              # what a 5-digit PIN's hash says
    old = "scrypt$16384$8$1${}${}".format(b64(b"salt"), b64(hashlib.scrypt(b"2468", salt=b"salt", n=16384, r=8, p=1)))
    for content, mode, message in (
            (old, 0o600, "made by an older hash-pin that allowed 4-digit PINs; make a new one of 6 or more digits"),
            ("$".join(five), 0o600, "the PIN has 5 digits; a staff PIN needs 6 or more"),
            (hash_pin("246801"), 0o640, "mode 0640 lets others read the PIN hash; make it 0600")):
        pin_file.write_text(content + "\n")
        pin_file.chmod(mode)
        assert run(agent_cli.main, "check-config", str(boot)) == 1
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"{pin_file}:1: staff_pin_file: {message}")
        assert err[1:] == ["classroom-agent: 1 problem(s) found"]
    pin_file.chmod(0o600)
    assert run(agent_cli.main, "check-config", str(boot)) == 0


def test_check_config_yaml_syntax(tmp_path, capsys):
    boot = tmp_path / "agent.yaml"
    boot.write_text("device: a\nsite: [b\n")
    assert run(agent_cli.main, "check-config", str(boot)) == 1
    assert capsys.readouterr().err.splitlines()[0].startswith(f"{boot}:3: YAML syntax error: ")


def test_policy_command(capsys):
    assert run(agent_cli.main, "policy", "--config", str(ROOT / "config"), "--device", "5b-pi-01",
               "--at", "2026-11-25T16:30:00+00:00") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["schedule_slot"] == "After-school coding club" and out["locked"] is False


@pytest.mark.parametrize("argv, message", [
    (["polcy"], "classroom-agent: error: argument COMMAND: invalid choice: 'polcy' (choose from 'check-config', "),
    (["policy", "--config", "config", "--device", "5b-pi-01", "--at", "soon"],
     "classroom-agent: error: --at: 'soon' is not a date and time"),
    (["policy", "--config", "config", "--device", "5b-pi-01", "--at", "2026-11-25T10:00"],
     "classroom-agent: error: --at: '2026-11-25T10:00' has no timezone (add +00:00 or Z)"),
    (["policy", "--config", "config", "--device", "nope"], "classroom-agent: error: --device: unknown device 'nope'"),
])
def test_agent_cli_errors_are_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert run(agent_cli.main, *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_did_you_mean_for_subcommands(capsys):
    assert run(server_cli.main, "config", "valdate", "x") == 1
    assert "(did you mean 'validate'?)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["classroom-agent", "classroom-server", "classroom-alerts"])
def test_console_scripts_have_help(command):
    result = subprocess.run([str(BIN / command), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage:" in result.stdout


def test_debug_shows_traceback(tmp_path):
    env = dict(os.environ, DEBUG="1")
    result = subprocess.run([str(BIN / "classroom-server"), "config", "validate", str(tmp_path / "none")],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "not a directory" in result.stderr
    quiet = subprocess.run([str(BIN / "classroom-agent"), "policy", "--config", "/nonexistent.json", "--device", "x"],
                           capture_output=True, text=True, timeout=60)
    loud = subprocess.run([str(BIN / "classroom-agent"), "policy", "--config", "/nonexistent.json", "--device", "x"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert "Traceback" not in quiet.stderr and quiet.stderr.count("\n") == 1
    assert "Traceback (most recent call last)" in loud.stderr
