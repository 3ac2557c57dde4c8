"""Per-key-stage filtering on the device: dnsmasq, browser policy, nftables, overrides.

The pieces, one module per concept:

- ``dnsmasq``    compile the effective allowlist into dnsmasq config and run dnsmasq
- ``safesearch`` which search-engine names are forced to their safe variants
- ``querylog``   follow dnsmasq's query log and turn lines into records
- ``blocked``    coalesce blocked attempts into DfE-minimum ``blocked`` events
- ``evidence``   ring buffer of recently resolved domains for report evidence
- ``overrides``  teacher "allow this site for this lesson", persisted and audited
- ``browser``    Chromium / Firefox managed policy files
- ``nftables``   the DNS-bypass ruleset (own table ``inet classroom_safety``)
- ``check``      ``classroom-agent filter check``: resolve test domains, pass/fail
- ``component``  the runtime component that ties them together
"""

from .dnsmasq import FilterError

__all__ = ["FilterError"]
