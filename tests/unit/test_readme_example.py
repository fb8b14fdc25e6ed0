"""The README's Python API example runs as written, at fewer images and steps, so it cannot rot."""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"

# (as written in the README, what the test runs instead): fewer images and steps, the same calls
SMALLER = [("n_images=5000", "n_images=400"), ("steps=500", "steps=3"), ("warmup_steps=100", "warmup_steps=2")]


def readme_example() -> str:
    """The first ```python block after the '## Python API' heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Python API\n", 1)
    assert len(section) == 2, "README.md has no '## Python API' section"
    block = re.search(r"```python\n(.*?)```", section[1], flags=re.DOTALL)
    assert block, "the '## Python API' section of README.md has no ```python block"
    return block.group(1)


def test_the_readme_python_example_runs_and_prints_the_mig(tmp_path, monkeypatch):
    code = readme_example()
    for written, smaller in SMALLER:
        assert code.count(written) == 1, f"the README example no longer contains {written!r}; update SMALLER"
        code = code.replace(written, smaller)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README) + " (Python API)", "exec"), {"__name__": "readme_example"})

    scores = eval(printed.getvalue().strip().splitlines()[-1], {"nan": math.nan})
    assert {"mig.histogram20", "mig.histogram20.no_shape", "mig.histogram20.shape", "mig.histogram20.posX"} <= set(
        scores
    )
    assert 0.0 <= scores["mig.histogram20"] <= 1.0
    assert (tmp_path / "example" / "data" / "meta.json").exists()
    assert (tmp_path / "example" / "model.pt").exists()  # the training loop's checkpoint
