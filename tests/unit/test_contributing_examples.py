"""The worked examples of docs/contributing.md run as written: each module file is executed, its registry line is
applied to the real registry (for the test only), and each "try it" block then runs against it."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from multistage.models import registry

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "contributing.md"
REGISTRY_ENTRY = re.compile(r'^\s*"(\w+)": \((\w+), (\w+)\),\s*$', flags=re.MULTILINE)


def sections() -> dict[str, list[str]]:
    """The ```python blocks of each '## ' section of the guide, in order."""
    found: dict[str, list[str]] = {}
    for section in re.split(r"^## ", GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0].strip()
        found[title] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return found


def run_example(blocks: list[str], table: dict, monkeypatch) -> str:
    """Execute the module files, apply the registry line, run the "try it" blocks; the registered name."""
    modules = [b for b in blocks if re.match(r"# multistage/models/stage_(one|two)/\w+\.py\n", b)]
    lines = [b for b in blocks if b.startswith("# multistage/models/registry.py\n")]
    tries = [b for b in blocks if b.startswith("# try it\n")]
    assert len(modules) == 1 and len(lines) == 1 and tries, "the example needs a module, a registry line, a try-it"
    path = modules[0].splitlines()[0].removeprefix("# ")
    name = path.removesuffix(".py").replace("/", ".")
    assert not (GUIDE.parents[1] / path).exists(), f"{path} exists in the tree: pick another example name"
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(modules[0], f"{GUIDE} ({path})", "exec"), module.__dict__)
    entries = REGISTRY_ENTRY.findall(lines[0])
    assert len(entries) == 1, "the registry block should add exactly one entry"
    key, model_class, config_class = entries[0]
    assert key not in table
    monkeypatch.setitem(table, key, (getattr(module, model_class), getattr(module, config_class)))
    for block in tries:
        exec(compile(block, f"{GUIDE} (try it)", "exec"), {"__name__": "contributing_example"})
    return key


@pytest.mark.parametrize(("title", "table"), [("A stage-one model", registry.STAGE_ONE),
                                              ("A stage-two variant", registry.STAGE_TWO)])
def test_the_worked_example_builds_trains_a_step_and_is_registered_by_one_line(title, table, monkeypatch):
    key = run_example(sections()[title], table, monkeypatch)
    assert key in table
    assert f"  {key}:\n" in GUIDE.read_text(), f"the guide shows no params.yaml sub-section for {key!r}"
