"""The docs stay honest: every test, module and page they point at exists.

docs/security.md names, for each defence, the test that performs the attack; and
docs/architecture.md names the modules of the map.  A rename or a removed test must
update the page in the same change.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", ["security.md", "architecture.md", "protocol.md", "server.md", "deploy-pi.md", "broker.md",
                                  "scaling.md"])
def test_every_test_file_a_page_names_exists(page):
    text = (REPO / "docs" / page).read_text()
    named = set(re.findall(r"tests/[A-Za-z0-9_/]+\.py", text))
    assert [n for n in sorted(named) if not (REPO / n).exists()] == []


def test_every_module_the_architecture_map_names_exists():
    text = (REPO / "docs" / "architecture.md").read_text()
    paths = set(re.findall(r"`((?:agent|server)/[A-Za-z0-9_/]+(?:\.py|/))`", text))
    assert paths, "the map names no modules"
    assert [p for p in sorted(paths) if not (REPO / p).exists()] == []


def test_the_readme_lists_every_doc_page():
    readme = (REPO / "README.md").read_text()
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md"))
    assert [p for p in pages if f"docs/{p}" not in readme] == []
