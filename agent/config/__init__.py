"""The config model shared by agent and server: schema, loading with line-numbered
errors, and the effective-policy function.  The server imports it from here so both
sides always agree on what a config tree means."""

from .policy import EffectivePolicy, effective_policy, term_key
from .schema import AgentBootstrap, Device, Hardware, Profile, Room, Site
from .tree import ConfigInvalid, ConfigTree, did_you_mean, load_bootstrap, load_tree
from .yamlsrc import SourceError

__all__ = [
    "AgentBootstrap", "ConfigInvalid", "ConfigTree", "Device", "EffectivePolicy", "Hardware", "Profile",
    "Room", "Site", "SourceError", "did_you_mean", "effective_policy", "term_key", "load_bootstrap", "load_tree",
]
