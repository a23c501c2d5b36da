"""The repository's documents cite only what is in the repository: every "docs/method.md section N" names a
section that docs/method.md has, and nothing cites a METHOD.md outside it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tracked_text_files():
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    for name in out.stdout.splitlines():
        if name.endswith((".py", ".c", ".h", ".md", ".sh", ".toml", ".ipynb")) and (ROOT / name).is_file():
            yield name, (ROOT / name).read_text(errors="replace")


def test_citations_of_the_method_name_sections_that_exist():
    headings = (ROOT / "docs" / "method.md").read_text()
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", headings, re.M))
    assert {"2", "2.5", "3", "3.4", "7", "8", "9"} <= sections
    bad = []
    for name, text in _tracked_text_files():
        # "docs/method.md section 3.4", "docs/method.md sections 3-5 and 9", "docs/method.md 1.3-1.5"
        for m in re.finditer(
            r"docs/method\.md(?:'s)?,?\s+(?:sections?\s+)?((?:\d+(?:\.\d+)?(?:\s*(?:-|,|and)\s*)?)+)", text
        ):
            for number in re.findall(r"\d+(?:\.\d+)?", m.group(1)):
                if number not in sections:
                    bad.append(f"{name}: cites docs/method.md section {number}, which does not exist")
    assert bad == []


def test_nothing_cites_a_method_document_outside_the_repository():
    stale = [
        f"{name}:{i + 1}"
        for name, text in _tracked_text_files()
        for i, line in enumerate(text.splitlines())
        if re.search(r"(?<!docs/)METHOD\.md", line) and name != "tests/test_docs.py"
    ]
    assert stale == []
