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
MODEL_ENTRY = re.compile(r'^\s*"(\w+)": \((\w+), (\w+)\),\s*$', flags=re.MULTILINE)


def sections() -> dict[str, list[str]]:
    """The ```python blocks of each '## ' section of the guide, in order."""
    found: dict[str, list[str]] = {}
    for section in re.split(r"^## ", GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE)[1:]:
        title = section.splitlines()[0].strip()
        found[title] = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    return found


def example_blocks(title: str, registry_file: str) -> tuple[str, str, str, list[str]]:
    """(module path, module code, registry block, try-it blocks) of the section ``title``."""
    blocks = sections()[title]
    modules = [b for b in blocks if re.match(r"# multistage/(models/stage_(one|two)|metrics)/\w+\.py\n", b)]
    lines = [b for b in blocks if b.startswith(f"# {registry_file}\n")]
    tries = [b for b in blocks if b.startswith("# try it\n")]
    assert len(modules) == 1 and len(lines) == 1 and tries, "the example needs a module, a registry line, a try-it"
    path = modules[0].splitlines()[0].removeprefix("# ")
    assert not (GUIDE.parents[1] / path).exists(), f"{path} exists in the tree: pick another example name"
    return path, modules[0], lines[0], tries


def load_module(path: str, code: str, monkeypatch) -> types.ModuleType:
    """Execute the guide's module file as the module its path names (registered in sys.modules for the test)."""
    name = path.removesuffix(".py").replace("/", ".")
    module = types.ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(code, f"{GUIDE} ({path})", "exec"), module.__dict__)
    return module


def run_tries(tries: list[str]) -> None:
    for block in tries:
        exec(compile(block, f"{GUIDE} (try it)", "exec"), {"__name__": "contributing_example"})


@pytest.mark.parametrize(
    ("title", "table"), [("A stage-one model", registry.STAGE_ONE), ("A stage-two variant", registry.STAGE_TWO)]
)
def test_the_model_example_builds_trains_a_step_and_is_registered_by_one_line(title, table, monkeypatch):
    path, code, line, tries = example_blocks(title, "multistage/models/registry.py")
    module = load_module(path, code, monkeypatch)
    entries = MODEL_ENTRY.findall(line)
    assert len(entries) == 1, "the registry block should add exactly one entry"
    key, model_class, config_class = entries[0]
    assert key not in table
    monkeypatch.setitem(table, key, (getattr(module, model_class), getattr(module, config_class)))
    run_tries(tries)
    assert f"  {key}:\n" in GUIDE.read_text(), f"the guide shows no params.yaml sub-section for {key!r}"


def test_the_metric_example_is_registered_by_one_line_and_gives_its_known_answer(monkeypatch):
    metrics = pytest.importorskip("multistage.evaluation.registry", reason="the metric registry is not in this tree")
    path, code, line, tries = example_blocks("A metric", "multistage/evaluation/registry.py")
    module = load_module(path, code, monkeypatch)
    added = {}

    def register(metric):  # the registry's own ``register``, into a copy of METRICS that the test restores
        assert metric.name not in metrics.METRICS
        monkeypatch.setitem(metrics.METRICS, metric.name, metric)
        added[metric.name] = metric
        return metric

    statement = line.split("\n", 1)[1]
    exec(
        compile(statement, f"{GUIDE} (registry line)", "exec"),
        {"register": register, "Metric": metrics.Metric, path.rsplit("/", 1)[1].removesuffix(".py"): module},
    )
    assert len(added) == 1, "the registry block should register exactly one metric"
    run_tries(tries)
    (name,) = added
    assert f"  {name}: " in GUIDE.read_text() and f", {name}]" in GUIDE.read_text(), "no params.yaml lines for it"
