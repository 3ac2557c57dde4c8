"""Choosing a gpiozero pin factory by the name agent.yaml (``pin_factory``) or a flag gives.

gpiozero registers its pin factories as ``gpiozero_pin_factories`` entry points ('lgpio',
'rpigpio', 'pigpio', 'native', 'mock'); the agent's report button and the teacher's pager
Pi both pick one here, so a misspelt name gets the same error with a did-you-mean.
"""

from __future__ import annotations

from ..errors import UserError
from .tree import did_you_mean


def make_pin_factory(name: str | None, where: str = "pin_factory"):
    """A gpiozero pin factory by name, or None to let gpiozero choose (it honours
    ``GPIOZERO_PIN_FACTORY``).  *where* names the config key or flag in the error."""
    if not name:
        return None
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="gpiozero_pin_factories")}
    if name not in found:
        raise UserError(f"{where}: unknown gpiozero pin factory {name!r}{did_you_mean(name, found)} "
                        f"(known: {', '.join(sorted(found))})")
    return found[name].load()()
