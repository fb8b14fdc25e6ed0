"""Shared fixtures: a tiny copy of the project in a temporary git + DVC repository."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

TINY_PARAMS = {
    "runtime": {"device": "cpu", "threads": 1},
    "prepare": {
        "dataset": "dsprites",
        "n_images": 600,
        "seed": 0,
        "test_fraction": 0.25,
        "dsprites": {
            "variant": "textured",
            "texture": {
                "colour_min": 0.5,
                "colour_max": 1.0,
                "grating_contrast": 0.5,
                "grating_frequency_min": 0.08,
                "grating_frequency_max": 0.2,
                "background_noise": 0.0,
            },
        },
    },
    "stage_one": {
        "model": "betatcvae",
        "latent_dim": 4,
        "steps": 12,
        "batch_size": 32,
        "learning_rate": 0.001,
        "seed": 0,
        "checkpoint_every": 4,
        "log_every": 4,
        "betatcvae": {"alpha": 1.0, "beta": 2.0, "gamma": 1.0, "estimator": "stratified", "warmup_steps": 4},
        "jointvae": {"discrete_dims": [3], "capacity_z_steps": 12, "capacity_c_steps": 12},
        "factorvae": {"discriminator_hidden": 32, "discriminator_layers": 3},
    },
    "pairs": {"samples_per_x": 1, "use_mean": False, "seed": 0, "batch_size": 128},
    "stage_two": {
        "variants": ["msvae"],
        "residual_dim": 2,
        "steps": 8,
        "batch_size": 16,
        "learning_rate": 0.001,
        "seed": 0,
        "checkpoint_every": 4,
        "log_every": 4,
        "msvae": {"beta": 1.0, "base_channels": 8, "adain_hidden": 64, "residual_encoder_sees_y": False},
        "end_to_end": {"base_channels": 8},
        "z_first": {"z_steps": 4},
        "msgan": {"base_channels": 8, "adain_hidden": 8, "discriminator_channels": 8},
        "msflow": {"coupling_layers": 2, "hidden_units": 8},
    },
    "evaluate": {
        "eval_images": 60,
        "batch_size": 30,
        "mig_bins": 20,
        "seed": 0,
        "figure_images": 4,
        "classifier": {"steps": 10, "batch_size": 32, "train_images": 200, "seed": 0},
        "sap": {"images": 200},
        "zdiff": {"pairs": 8, "train_points": 100, "test_points": 50},
        "factorvae_score": {"batch_size": 8, "train_votes": 100, "eval_votes": 50, "variance_images": 200},
        "dci": {"regressor": "lasso", "train_images": 200, "test_images": 100},
        "tc_decomposition": {"samples": 200},
        "kid": {"subsets": 5, "subset_size": 30},
        "downstream": {"hidden_units": [8], "max_iter": 30},
        "detail_probes": {"train_images": 200},
        "detail_frechet": {"steps": 10, "batch_size": 32, "train_images": 200},
    },
    "registry": {
        "enabled": True,
        "model_name": "multistage-stage-two",
        "best_metric": "frechet.factor_classifier.x_hat",
        "best_is": "lower",
    },
    "chains": {},  # no stage chain: dvc.yaml's chain@<name> stages come from this section (issue 9)
}


def tool_env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "MULTISTAGE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "multistage tests"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "tests@multistage.invalid"
    return env


def ephemeral_prefect_env(root: Path, home: Path) -> dict[str, str]:
    """``tool_env(root)`` for a Prefect flow run on an ephemeral API whose state lives in ``home``."""
    env = tool_env(root)
    env["PREFECT_HOME"] = str(home)
    env["PREFECT_API_URL"] = ""
    env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "120"  # the default 20 s is too short on a busy machine
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"
    return env


def sh(args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: int = 600):
    completed = subprocess.run(args, cwd=cwd, env=env or tool_env(cwd), capture_output=True, text=True, timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({completed.returncode}):\n{completed.stdout}\n{completed.stderr}"
        )
    return completed


def write_params(root: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_tiny_repo(root: Path, params: dict | None = None) -> Path:
    """The project's pipeline files and code in a fresh git + DVC repository at ``root``, with tiny params."""
    root.mkdir(parents=True)
    for name in ("multistage", "stages", "pipeline", "sweep"):
        shutil.copytree(PROJECT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "prefect.yaml"):
        shutil.copy(PROJECT / name, root / name)
    for stale in ("results.json", "results.csv", "mig_vs_beta.png"):  # a sweep gathered in the project itself
        (root / "sweep" / stale).unlink(missing_ok=True)
    write_params(root, params or TINY_PARAMS)
    sh(["git", "init", "-q", "-b", "main"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["dvc", "config", "core.analytics", "false"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "tiny project"], root)
    return root


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    """The project's pipeline files and code in a fresh git + DVC repository, with tiny params."""
    return make_tiny_repo(tmp_path / "repo")


# ------------------------------------------------------------------------------------ one tiny DVC project, shared
# `dvc repro` of the tiny pipeline is the expensive part of the DVC tests; these session fixtures run it once and
# hand the later steps a git clone (sharing the DVC cache), so every test sees the state its step left behind.
@dataclass
class DvcBaseline:
    root: Path
    first: subprocess.CompletedProcess  # `python -m pipeline.repro` on a fresh repository
    second: subprocess.CompletedProcess  # `dvc repro` again, right after
    first_scores: dict  # metrics/evaluate.json of the first run
    stage_two_repro: subprocess.CompletedProcess  # `dvc repro` after stage_two.msvae.beta 1 -> 4
    commits: dict[str, str]  # "baseline" (first run), "stage_two_beta" (after the change) -> commit sha


@pytest.fixture(scope="session")
def dvc_baseline(tmp_path_factory) -> DvcBaseline:
    """The tiny pipeline run by ``python -m pipeline.repro``, repeated by ``dvc repro`` (a no-op) and committed;
    then stage_two.msvae.beta 1 -> 4, ``dvc repro`` again, committed."""
    root = make_tiny_repo(tmp_path_factory.mktemp("dvc-baseline") / "repo")
    first = sh(["python", "-m", "pipeline.repro"], root)
    first_scores = json.loads((root / "metrics" / "evaluate.json").read_text())
    second = sh(["dvc", "repro"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "tiny run"], root)
    commits = {"baseline": git_head(root)}
    params = json.loads(json.dumps(TINY_PARAMS))
    params["stage_two"]["msvae"]["beta"] = 4.0
    write_params(root, params)
    stage_two_repro = sh(["dvc", "repro"], root)
    sh(["git", "commit", "-q", "-am", "stage two beta 4"], root)
    commits["stage_two_beta"] = git_head(root)
    return DvcBaseline(root, first, second, first_scores, stage_two_repro, commits)


def clone_project(source: Path, target: Path) -> Path:
    """A git clone of ``source`` whose DVC outputs are checked out from ``source``'s cache (its MLflow store is
    not copied: the clone starts an empty one)."""
    sh(["git", "clone", "-q", str(source), str(target)], source.parent)
    sh(["dvc", "config", "--local", "cache.dir", str(source / ".dvc" / "cache")], target)
    sh(["dvc", "checkout", "-q"], target)
    return target


def git_head(root: Path) -> str:
    return sh(["git", "rev-parse", "HEAD"], root).stdout.strip()


@dataclass
class DvcExperiments:
    root: Path
    commits: dict[str, str]  # the baseline's two, and "experiments" -> commit sha
    beta_key: str  # where stage one's beta lives in params.yaml (e.g. stage_one.betatcvae.beta)
    experiments: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    queue_status: str = ""  # `dvc queue status` once the queued experiment finished
    gather: subprocess.CompletedProcess | None = None
    report_repro: subprocess.CompletedProcess | None = None


def wait_for_queued_experiment(root: Path, name: str, timeout: float) -> str:
    """Wait until the queued experiment ``name`` has its git ref (DVC writes it when the run succeeded); checking
    the ref is cheap, `dvc queue status` (which also reports a failure) is asked every 30 s. The last status."""
    deadline, checks = time.monotonic() + timeout, 0
    while True:
        refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], root).stdout.split()
        if any(ref.endswith(f"/{name}") for ref in refs):
            for _ in range(30):  # the ref comes a moment before the task is marked done
                status = sh(["dvc", "queue", "status"], root).stdout
                if not re.search(r"\b(Queued|Running)\b", status):
                    break
                time.sleep(1)
            return status
        checks += 1
        if checks % 15 == 0 or time.monotonic() > deadline:
            status = sh(["dvc", "queue", "status"], root).stdout
            if re.search(rf"\b{re.escape(name)}\b.*\bFailed\b", status) or time.monotonic() > deadline:
                logs = sh(["dvc", "queue", "logs", name], root, check=False).stdout
                raise AssertionError(f"queued experiment {name} did not succeed:\n{status}\n{logs[-3000:]}")
        time.sleep(2)


@pytest.fixture(scope="session")
def dvc_experiments(dvc_baseline, tmp_path_factory) -> DvcExperiments:
    """On a clone of the baseline's last commit: a stage-one beta sweep as DVC experiments (one through `--queue`
    and `dvc queue start`, one in the workspace with `dvc exp run -S` meanwhile), gathered by
    `python -m pipeline.sweep dvc`, the report rebuilt with the sweep (beta 4 applied in the workspace), and
    committed."""
    from pipeline.sweep import beta_key

    root = clone_project(dvc_baseline.root, tmp_path_factory.mktemp("dvc-experiments") / "repo")
    stage_one = yaml.safe_load((root / "params.yaml").read_text())["stage_one"]
    key = beta_key(stage_one["model"], stage_one)
    result = DvcExperiments(root, dict(dvc_baseline.commits), key)

    # the queued experiment runs in its temporary workspace while the other runs in the workspace: both at once,
    # both writing to the project's SQLite MLflow store
    result.experiments["beta1-queued"] = sh(["dvc", "exp", "run", "--queue", "-S", f"{key}=1", "-n", "beta1"], root)
    try:
        sh(["dvc", "queue", "start", "-j", "1"], root)
        result.experiments["beta4"] = sh(["dvc", "exp", "run", "-S", f"{key}=4", "-n", "beta4"], root)
        result.queue_status = wait_for_queued_experiment(root, "beta1", 600)
    finally:
        sh(["dvc", "queue", "stop", "--kill"], root, check=False)
    result.gather = sh(["python", "-m", "pipeline.sweep", "dvc"], root)
    result.report_repro = sh(["dvc", "repro"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-q", "-m", "stage-one beta sweep (DVC experiments), beta 4 applied"], root)
    result.commits["experiments"] = git_head(root)
    return result


# `make test` runs the suite on two pytest-xdist workers (`-n 2`): most integration tests spend their time in
# single-threaded stage processes, so two at once use both cores. Tests that share an expensive fixture must run in
# one worker, or each worker would build it again: every module is one unit of work (module-scoped fixtures such
# as the Prefect and MLflow servers), and the modules using the session-wide DVC baseline (`dvc_baseline`,
# `dvc_experiments` above) form one unit together. (xdist's `--dist loadgroup` marks would say the same, but they
# are ignored under pytest 9: the group suffix never reaches the node ids.)
DVC_BASELINE_MODULES = {
    "test_dvc_pipeline.py",
    "test_dvc_experiments.py",
    "test_report_browser.py",
    "test_stage_two_variants.py",
}
# modules whose cases are long and whose shared fixture is cheap to build twice: each case is its own unit
CASE_UNIT_MODULES = {"test_datasets_pipeline.py"}


def xdist_unit(nodeid: str) -> str:
    """The unit of work of a test: its module, "dvc-baseline" for the modules sharing the DVC baseline, or the test
    itself in CASE_UNIT_MODULES."""
    module = nodeid.split("::", 1)[0]
    if Path(module).name in CASE_UNIT_MODULES:
        return nodeid
    return "dvc-baseline" if Path(module).name in DVC_BASELINE_MODULES else module


if importlib.util.find_spec("xdist") is not None:

    def pytest_xdist_make_scheduler(config, log):
        from xdist.scheduler import LoadScopeScheduling

        class ModuleUnits(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return xdist_unit(nodeid)

        return ModuleUnits(config, log)


def pytest_collection_finish(session):
    """Every module that asks for the shared DVC fixtures must be in DVC_BASELINE_MODULES (else it would build them
    once more in the other worker)."""
    shared = {"dvc_baseline", "dvc_experiments"}
    strays = sorted(
        {
            Path(item.nodeid.split("::", 1)[0]).name
            for item in session.items
            if shared & set(getattr(item, "fixturenames", ())) and xdist_unit(item.nodeid) != "dvc-baseline"
        }
    )
    if strays:
        raise pytest.UsageError(f"tests/conftest.py: add {', '.join(strays)} to DVC_BASELINE_MODULES")
