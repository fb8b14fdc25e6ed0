"""A training stage starts without importing what it does not use: scikit-learn and ``scipy.optimize`` are about a
third of a stage's start-up time (``python -X importtime -c "import stages.train_stage_one"``), and `dvc repro`
starts a process per stage. ``multistage.metrics`` therefore resolves its package-level names on first use. And
torchvision (seconds to import) comes only with a drawing: `python -m stages.check_params` imports the evaluate
stage for its params and draws nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import multistage.metrics as metrics

PROJECT = Path(__file__).resolve().parents[2]
SLOW = ("sklearn", "scipy.optimize", "mlflow", "matplotlib")


@pytest.mark.parametrize("module", ["stages.train_stage_one", "stages.make_pairs", "stages.train_stage_two"])
def test_a_training_stage_imports_neither_sklearn_nor_scipy_optimize(module):
    assert imported(module, SLOW) == []


def test_the_params_check_imports_no_drawing_library():
    # every stage module check_all imports to validate its section, in one interpreter
    checked = ("chain", "evaluate", "make_pairs", "prepare", "report", "train_stage_one", "train_stage_two")
    modules = ", ".join(f"stages.{name}" for name in ("check_params", *checked))
    assert imported(modules, ("torchvision", "matplotlib")) == []


def imported(module: str, names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` a fresh interpreter holds after importing ``module``."""
    probe = f"import sys, json, {module}; print(json.dumps(sorted(set(sys.modules) & set({list(names)!r}))))"
    completed = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT, capture_output=True, text=True, check=True)
    return json.loads(completed.stdout.splitlines()[-1])


def test_the_package_level_metric_names_resolve_to_their_submodules():
    from multistage.metrics import conditioning, frechet, mig, reconstruction

    submodules = {"conditioning": conditioning, "frechet": frechet, "mig": mig, "reconstruction": reconstruction}
    assert sorted(metrics.__all__) == sorted(metrics._SUBMODULE)
    for name in metrics.__all__:
        assert getattr(metrics, name) is getattr(submodules[metrics._SUBMODULE[name]], name), name
    assert set(metrics.__all__) <= set(dir(metrics))
    with pytest.raises(AttributeError, match="no attribute 'no_such_metric'"):
        metrics.no_such_metric  # noqa: B018
