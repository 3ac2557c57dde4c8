"""``classroom-agent filter check``: prove the filter does what the profile says.

Each key stage lists test domains in its profile (``check.allowed``: curriculum sites
that must resolve; ``check.blocked``: social media, adult, gambling, webmail... that
must not).  The check asks the device's resolver for each and reports pass/fail; the
Firefox DoH canary is always checked too.  The result is sent as a ``filter_check``
event so the server keeps the DfE check log (who checked, when, what, result).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import dnsclient
from .querylog import CANARY


@dataclass(frozen=True)
class CheckResult:
    domain: str
    expect: str        # "allowed" | "blocked"
    rcode: str
    answers: tuple[str, ...]
    passed: bool

    @property
    def result(self) -> str:
        return "pass" if self.passed else "fail"


def check_domains(allowed, blocked, *, server: str = "127.0.0.1", port: int = 53,
                  timeout: float = 2.0) -> list[CheckResult]:
    out: list[CheckResult] = []
    for expect, domains in (("allowed", list(allowed)), ("blocked", [*blocked, CANARY])):
        for domain in dict.fromkeys(domains):
            rcode, answers = dnsclient.query(domain, "A", server=server, port=port, timeout=timeout)
            if expect == "allowed":
                passed = rcode == "NOERROR" and bool(answers)
            else:
                # Blocked means no address: NXDOMAIN from address=/#/.  A timeout is NOT a pass:
                # it proves nothing about the filter.
                passed = rcode in ("NXDOMAIN", "NOERROR") and not answers
            out.append(CheckResult(domain, expect, rcode, tuple(answers), passed))
    return out


def event_fields(results: list[CheckResult], profile: str, by: str) -> dict:
    """Fields of the ``filter_check`` event."""
    failed = [r for r in results if not r.passed]
    return {
        "profile": profile,
        "by": by,
        "passed": len(results) - len(failed),
        "failed": len(failed),
        "ok": not failed,
        "results": [{"domain": r.domain, "expect": r.expect, "rcode": r.rcode, "result": r.result}
                    for r in results],
    }
