"""The runtime contract in code (agent/core/interfaces.py) holds for what implements it:
the real Runtime and the one fake runtime the component tests use have every member of
RuntimeAPI with a compatible signature (so the fake cannot drift from the real thing),
and every component the agent runs is a Component."""

from __future__ import annotations

import inspect

import pytest
from gpiozero.pins.mock import MockFactory

from agent.core.interfaces import Component, RuntimeAPI
from agent.core.runtime import Runtime
from fake_runtime import FakeRuntime
from runtime_fixtures import bootstrap


def members(protocol) -> dict[str, object]:
    """{name: declaration} of a Protocol: its methods, properties and annotated attributes."""
    found: dict[str, object] = {}
    for klass in reversed(protocol.__mro__):
        if klass is object or not getattr(klass, "_is_protocol", False):
            continue
        for name in getattr(klass, "__annotations__", {}):
            found[name] = None
        for name, value in vars(klass).items():
            if not name.startswith("_") and (callable(value) or isinstance(value, property)):
                found[name] = value
    return found


def shape(signature: inspect.Signature) -> list[tuple]:
    """What a caller relies on: names, kinds and which parameters may be left out."""
    return [(p.name, p.kind, p.default is inspect.Parameter.empty) for p in signature.parameters.values()]


def conformance(obj, protocol) -> list[str]:
    problems = []
    for name, declared in members(protocol).items():
        if not hasattr(obj, name):
            problems.append(f"{type(obj).__name__} has no {name}")
            continue
        if declared is None or isinstance(declared, property):
            continue
        if not callable(getattr(obj, name)):
            problems.append(f"{type(obj).__name__}.{name} is not callable")
            continue
        wanted = inspect.signature(declared)
        wanted = wanted.replace(parameters=list(wanted.parameters.values())[1:])  # without self
        got = inspect.signature(getattr(obj, name))
        if shape(got) != shape(wanted):
            problems.append(f"{type(obj).__name__}.{name}{got} does not match {protocol.__name__}.{name}{wanted}")
    return problems


def test_the_checker_notices_a_missing_member_and_a_different_signature(tmp_path):
    class Drifted(FakeRuntime):
        def post(self, fn):  # lost *args
            pass

    drifted = Drifted(tmp_path)
    del drifted.bootstrap
    drifted.call_later = None
    problems = conformance(drifted, RuntimeAPI)
    assert "Drifted has no bootstrap" in problems
    assert "Drifted.call_later is not callable" in problems
    assert [p for p in problems if p.startswith("Drifted.post(fn) does not match RuntimeAPI.post(fn")]
    assert len(problems) == 3


@pytest.fixture
def real_runtime(tmp_path):
    pins = MockFactory()
    rt = Runtime(bootstrap(tmp_path), pin_factory=pins, connect=False, control=False)
    yield rt
    rt.stop()
    pins.close()


def test_the_real_runtime_provides_the_runtime_api(real_runtime):
    assert conformance(real_runtime, RuntimeAPI) == []


def test_the_fake_runtime_provides_the_runtime_api(tmp_path):
    for threaded in (False, True):
        fake = FakeRuntime(tmp_path, threaded=threaded)
        try:
            assert conformance(fake, RuntimeAPI) == []
        finally:
            fake.close()


def test_every_component_of_the_agent_is_a_component(real_runtime):
    from agent.core.runtime import default_components
    from agent.uplink.configsync import ConfigSync

    sync = ConfigSync("http://127.0.0.1:9", "1a-pi-01", real_runtime.state_dir)
    components = [*real_runtime.components, *default_components(), sync]
    assert {c.name for c in components} >= {"report", "configsync", "filter", "sessions", "lock", "message", "guard"}
    for component in components:
        assert conformance(component, Component) == [], component
