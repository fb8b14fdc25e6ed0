"""Shared fixtures: a tiny copy of the project in a temporary git + DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "runtime": {"device": "cpu", "threads": 1},
    "prepare": {"dataset": "dsprites", "variant": "textured", "n_images": 600, "seed": 0, "test_fraction": 0.25,
                "texture": {"colour_min": 0.5, "colour_max": 1.0, "grating_contrast": 0.5,
                            "grating_frequency_min": 0.08, "grating_frequency_max": 0.2, "background_noise": 0.0}},
    "stage_one": {"model": "betatcvae", "latent_dim": 4, "alpha": 1.0, "beta": 2.0, "gamma": 1.0,
                  "estimator": "stratified", "warmup_steps": 4, "steps": 12, "batch_size": 32, "learning_rate": 0.001, "seed": 0,
                  "checkpoint_every": 4, "log_every": 4},
    "pairs": {"samples_per_x": 1, "use_mean": False, "seed": 0, "batch_size": 128},
    "stage_two": {"model": "msvae", "residual_dim": 2, "beta": 1.0, "base_channels": 8, "steps": 8,
                  "batch_size": 16, "learning_rate": 0.001, "seed": 0, "checkpoint_every": 4, "log_every": 4},
    "evaluate": {"eval_images": 60, "batch_size": 30, "mig_bins": 20, "seed": 0, "figure_images": 4,
                 "classifier": {"steps": 10, "batch_size": 32, "train_images": 200, "seed": 0}},
}


def tool_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MULTISTAGE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "multistage tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@multistage.invalid"
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: int = 600):
    completed = subprocess.run(args, cwd=cwd, env=env or tool_env(cwd), capture_output=True, text=True,
                               timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({completed.returncode}):\n{completed.stdout}\n"
                             f"{completed.stderr}")
    return completed


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """The project's pipeline files and code in a fresh git + DVC repository, with tiny params."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("multistage", "stages", "pipeline"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(PROJECT / name, root / name)
    write_params(root, TINY_PARAMS)
    sh(["git", "init", "-q", "-b", "main"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "tiny project"], root)
    return root
