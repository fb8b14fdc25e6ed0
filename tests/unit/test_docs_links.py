"""Every relative link and image in README.md and docs/ resolves: the file exists and a #anchor names a heading.

`make docs` (mkdocs --strict) checks the links between pages of the site; README.md is outside the site, and
GitHub renders docs/ as plain Markdown too, so both are checked here the same way.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
PAGES = [PROJECT / "README.md", *sorted((PROJECT / "docs").rglob("*.md"))]
CODE = re.compile(r"```.*?```", flags=re.DOTALL)


def heading_anchor(heading: str) -> str:
    """The anchor of a heading as GitHub and mkdocs' toc make it: lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"[`*\[\]()]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {heading_anchor(h) for h in re.findall(r"^#+ (.*)$", CODE.sub("", page.read_text()), flags=re.MULTILINE)}


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", CODE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        name, _, anchor = target.partition("#")
        destination = (page.parent / name).resolve() if name else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: {destination.relative_to(PROJECT)} has no heading #{anchor}")
    return broken


def test_the_anchor_of_a_heading():
    assert heading_anchor("Generation speed (`bench/bench_datasets.py`)") == "generation-speed-benchbench_datasetspy"
    assert heading_anchor("MLflow: UI, tracking server, registry") == "mlflow-ui-tracking-server-registry"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(PROJECT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    assert broken_links(page) == [], f"{page.relative_to(PROJECT)}: broken links"
