"""Fault injection on a tiny copy of the project: what a crash, a damaged file, a full disk, a code change, a
cancelled run or a concurrent first use does, and that each ends as documented in docs/reliability.md.

Every stage here runs as its own process (``python -m stages.<name>``, ``dvc repro``, ``dvc push``, a Prefect
flow), as a user would run it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    PROJECT,
    TINY_PARAMS,
    ephemeral_prefect_env,
    make_tiny_repo,
    sh,
    tool_env,
    write_params,
)
from tests.unit.test_loading_safety import damage_bytes

pytestmark = pytest.mark.e2e

LIMITED = textwrap.dedent(
    """
    import resource, signal, subprocess, sys
    limit = int(sys.argv[1])

    def cap():  # every file this command writes may grow to `limit` bytes: a disk that fills up
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sys.exit(subprocess.run(sys.argv[2:], preexec_fn=cap).returncode)
    """
)


# ------------------------------------------------------------------------------------------------ helpers
def params_with(**sections) -> dict:
    params = json.loads(json.dumps(TINY_PARAMS))
    for section, values in sections.items():
        params[section].update(values)
    return params


def stage(root: Path, module: str, *args: str, check: bool = True, env: dict | None = None):
    return sh(["python", "-m", module, *args], root, env=env, check=check)


def error_line(completed, *names: str, status: int = 2) -> str:
    """The one ``error:`` line of a failed stage, after checking the exit status, that no traceback was printed
    and that the line names each of ``names``."""
    assert completed.returncode == status, (completed.returncode, completed.stderr[-3000:])
    assert "Traceback" not in completed.stderr, completed.stderr[-3000:]
    lines = [line for line in completed.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(lines) == 1, completed.stderr[-3000:]
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def strict_json(path: Path):
    def refuse(constant):
        raise AssertionError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def assert_every_json_output_is_strict(root: Path) -> int:
    files = [*sorted((root / "metrics").glob("*.json")), *sorted((root / "plots").glob("*.json"))]
    for path in files:
        strict_json(path)
    return len(files)


def tree_digest(root: Path, *folders: str) -> dict[str, str]:
    """md5 of every file under ``folders`` (relative names), hidden temporaries included."""
    out = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.md5(path.read_bytes()).hexdigest()
    return out


def runs(root: Path, name: str) -> list[tuple[str, str, dict]]:
    """(run id, status, tags) of the MLflow runs called ``name`` in ``root``'s store, oldest first."""
    database = sqlite3.connect(root / "mlruns.db")
    try:
        rows = database.execute(
            "select run_uuid, status from runs where name = ? order by start_time", (name,)
        ).fetchall()
        return [
            (run, status, dict(database.execute("select key, value from tags where run_uuid = ?", (run,)).fetchall()))
            for run, status in rows
        ]
    finally:
        database.close()


def state_dict(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = state_dict(a), state_dict(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = make_tiny_repo(tmp_path_factory.mktemp("faults") / "prepared")
    stage(root, "stages.prepare")
    return root


@pytest.fixture(scope="module")
def trained(prepared, tmp_path_factory) -> Path:
    """The prepared project with stage one trained and the paired set made."""
    root = tmp_path_factory.mktemp("faults") / "trained"
    shutil.copytree(prepared, root, symlinks=True)
    stage(root, "stages.train_stage_one")
    stage(root, "stages.make_pairs")
    return root


@pytest.fixture
def repo(prepared, tmp_path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(prepared, root, symlinks=True)
    return root


# ------------------------------------------------------------------------------------ code and data changes
def test_code_change_retrains_and_a_finished_run_resumes_to_strict_json(repo):
    stage(repo, "stages.train_stage_one")
    first = strict_json(repo / "metrics" / "stage_one.json")
    assert first["stage_one.resumed_from_step"] == 0

    # unchanged params, data and code: the final checkpoint is resumed, 0 steps are trained, and the throughput
    # (no step timed) is written as null, not NaN
    again = stage(repo, "stages.train_stage_one")
    assert "(resumed)" in again.stderr
    resumed = strict_json(repo / "metrics" / "stage_one.json")
    assert resumed["stage_one.resumed_from_step"] == 12 and resumed["stage_one.images_per_second"] is None
    assert assert_every_json_output_is_strict(repo) >= 2

    # the stage-one objective changes: the checkpoint of the old code is set aside and training starts at step 0
    objective = repo / "multistage" / "models" / "stage_one" / "betatcvae.py"
    objective.write_text(objective.read_text() + "\n# a changed objective\n")
    changed = stage(repo, "stages.train_stage_one")
    assert "(resumed)" not in changed.stderr
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 0
    assert (repo / "checkpoints" / "stage_one.pt.stale").exists()


def test_changed_image_bytes_retrain(repo):
    stage(repo, "stages.train_stage_one")
    data = repo / "data" / "prepared"
    others = tree_digest(repo, "data/prepared")
    images = np.load(data / "images.npy", mmap_mode="r+")  # the body randomised, the header (shape, dtype) kept
    images[:] = np.random.default_rng(7).integers(0, 256, size=images.shape, dtype=np.uint8)
    images.flush()
    del images
    after = tree_digest(repo, "data/prepared")
    assert {k for k in after if after[k] != others[k]} == {"data/prepared/images.npy"}
    completed = stage(repo, "stages.train_stage_one")
    assert "(resumed)" not in completed.stderr
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 0


# ------------------------------------------------------------------------------------------- damaged input
class Evil:
    """Unpickling this runs a shell command (what a hostile model file would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _damage_checkpoint(root: Path, how: str) -> None:
    path = root / "checkpoints" / "stage_one.pt"
    if how in ("truncated", "random", "empty"):
        damage_bytes(path, how, seed=3)
    elif how == "other_shapes":  # the right fingerprint, but tensors of another model
        state = torch.load(path, weights_only=True)
        name = next(iter(state["model"]))
        state["model"][name] = torch.zeros(state["model"][name].shape[0] + 1, *state["model"][name].shape[1:])
        torch.save(state, path)
    elif how == "evil":
        state = torch.load(path, weights_only=True)
        state["hook"] = Evil(root / "pwned")
        torch.save(state, path)


def _damage(root: Path, case: str) -> None:
    if case.startswith("checkpoint_"):
        _damage_checkpoint(root, case.removeprefix("checkpoint_"))
    elif case == "model_file_evil":
        payload = torch.load(root / "models" / "stage_one" / "model.pt", weights_only=True)
        payload["extra"]["hook"] = Evil(root / "pwned")
        torch.save(payload, root / "models" / "stage_one" / "model.pt")
    elif case == "pairs_y_truncated":
        path = root / "pairs" / "y.npy"
        path.write_bytes(path.read_bytes()[:-4096])
    elif case == "pairs_x_index_random":
        path = root / "pairs" / "x_index.npy"
        path.write_bytes(np.random.default_rng(5).bytes(path.stat().st_size))
    elif case == "pairs_x_index_out_of_range":
        index = np.load(root / "pairs" / "x_index.npy")
        np.save(root / "pairs" / "x_index.npy", index + 10_000)
    elif case == "images_truncated":
        path = root / "data" / "prepared" / "images.npy"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif case == "device_tpu":
        write_params(root, params_with(runtime={"device": "tpu"}))
    elif case in ("steps_true", "learning_rate_true", "beta_true"):
        key = case.removesuffix("_true")
        params = params_with()
        (params["stage_one"]["betatcvae"] if key == "beta" else params["stage_one"])[key] = True
        write_params(root, params)
    else:
        raise AssertionError(case)


# case -> (the stage that meets it, what its one error line must name)
DAMAGED = {
    "checkpoint_truncated": ("stages.train_stage_one", ["checkpoints/stage_one.pt", "cannot be read"]),
    "checkpoint_random": ("stages.train_stage_one", ["checkpoints/stage_one.pt", "cannot be read"]),
    "checkpoint_empty": ("stages.train_stage_one", ["checkpoints/stage_one.pt", "empty"]),
    "checkpoint_other_shapes": ("stages.train_stage_one", ["checkpoints/stage_one.pt", "do not fit the model"]),
    "checkpoint_evil": ("stages.train_stage_one", ["checkpoints/stage_one.pt", "refused"]),
    "model_file_evil": ("stages.make_pairs", ["models/stage_one/model.pt", "refused"]),
    "pairs_y_truncated": ("stages.train_stage_two", ["pairs/y.npy"]),
    "pairs_x_index_random": ("stages.train_stage_two", ["pairs/x_index.npy"]),
    "pairs_x_index_out_of_range": ("stages.train_stage_two", ["pairs/x_index.npy", "outside"]),
    "images_truncated": ("stages.train_stage_one", ["data/prepared"]),
    "device_tpu": ("stages.train_stage_one", ["runtime.device", "tpu"]),
    "steps_true": ("stages.train_stage_one", ["stage_one.steps", "boolean"]),
    "learning_rate_true": ("stages.train_stage_one", ["stage_one.learning_rate", "boolean"]),
    "beta_true": ("stages.train_stage_one", ["stage_one.betatcvae.beta", "boolean"]),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_input_is_one_line_naming_it_and_changes_nothing(trained, tmp_path, case):
    root = tmp_path / "repo"
    shutil.copytree(trained, root, symlinks=True)
    module, names = DAMAGED[case]
    if module == "stages.train_stage_one" and case.startswith("checkpoint_"):
        # a checkpoint of these params, data and code that is not finished, so that the stage must read it
        state = torch.load(root / "checkpoints" / "stage_one.pt", weights_only=True)
        state["step"] = 8
        torch.save(state, root / "checkpoints" / "stage_one.pt")
    _damage(root, case)
    before = tree_digest(root, "models", "metrics", "plots", "pairs", "checkpoints")
    args = ["--variant", "msvae"] if module == "stages.train_stage_two" else []
    completed = stage(root, module, *args, check=False)
    error_line(completed, *names)
    assert tree_digest(root, "models", "metrics", "plots", "pairs", "checkpoints") == before
    assert not (root / "pwned").exists()  # the hostile file ran nothing


def test_nan_stop_is_one_line_and_its_advice_is_true(repo):
    write_params(repo, params_with(stage_one={"learning_rate": 1.0, "checkpoint_every": 1}))
    line = error_line(
        stage(repo, "stages.train_stage_one", check=False), "non-finite loss", "step 1", "checkpoints/stage_one.pt"
    )
    assert "a rerun with the same params resumes from it and meets the same NaN" in line
    again = stage(repo, "stages.train_stage_one", check=False)
    assert "(resumed)" in again.stderr
    error_line(again, "non-finite loss", "step 1")
    assert "starts again from step 0" in line and ".stale" in line
    write_params(repo, params_with(stage_one={"checkpoint_every": 1}))  # a lower learning rate
    fresh = stage(repo, "stages.train_stage_one")
    assert "(resumed)" not in fresh.stderr and (repo / "checkpoints" / "stage_one.pt.stale").exists()
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 0
    assert [status for _, status, _ in runs(repo, "stage_one")] == ["FAILED", "FAILED", "FINISHED"]


def test_second_stale_checkpoint_keeps_the_first(repo):
    stage(repo, "stages.train_stage_one")
    first = (repo / "checkpoints" / "stage_one.pt").read_bytes()
    for beta in (3.0, 4.0):
        params = params_with()
        params["stage_one"]["betatcvae"]["beta"] = beta
        write_params(repo, params)
        stage(repo, "stages.train_stage_one")
    assert (repo / "checkpoints" / "stage_one.pt.stale").read_bytes() == first
    assert (repo / "checkpoints" / "stage_one.pt.stale.1").exists()


# --------------------------------------------------------------------------------------------- dvc repro
def test_bad_param_under_dvc_repro_keeps_every_output(repo):
    sh(["dvc", "repro", "stage_one"], repo)
    kept = tree_digest(repo, "metrics", "plots", "models", "data")
    bad = params_with()
    bad["stage_one"]["betatcvae"]["beta"] = -1.0
    write_params(repo, bad)
    completed = sh(["dvc", "repro", "stage_one"], repo, check=False)
    assert completed.returncode != 0
    assert "stage_one.betatcvae.beta" in completed.stderr + completed.stdout
    assert "Running stage 'stage_one'" not in completed.stdout
    assert tree_digest(repo, "metrics", "plots", "models", "data") == kept  # uncached metrics and plots included
    write_params(repo, params_with())  # the param put back: the check passes, and nothing else reruns
    restored = sh(["dvc", "repro", "stage_one"], repo)
    assert "Running stage 'check_params'" in restored.stdout and "Running stage 'stage_one'" not in restored.stdout
    assert tree_digest(repo, "metrics", "plots", "models", "data") == kept


# ------------------------------------------------------------------------------------ cancellation, kill -9
def _start_and_wait_for_checkpoint(root: Path) -> subprocess.Popen:
    checkpoint = root / "checkpoints" / "stage_one.pt"
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.train_stage_one"],
        cwd=root,
        env=tool_env(root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    start = checkpoint.stat().st_mtime_ns if checkpoint.exists() else 0
    while (
        time.time() < deadline
        and process.poll() is None
        and (not checkpoint.exists() or checkpoint.stat().st_mtime_ns == start)
    ):
        time.sleep(0.1)
    assert process.poll() is None, "training ended before it could be stopped; raise the steps"
    return process


def test_sigterm_ends_the_run_killed_and_a_kill_9_run_is_marked_by_the_next(repo):
    write_params(repo, params_with(stage_one={"steps": 300, "checkpoint_every": 5, "log_every": 5}))
    process = _start_and_wait_for_checkpoint(repo)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in stderr, stderr[-2000:]
    assert [status for _, status, _ in runs(repo, "stage_one")] == ["KILLED"]

    process = _start_and_wait_for_checkpoint(repo)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = runs(repo, "stage_one")[-1]
    assert killed[1] == "RUNNING"  # nothing could end it
    completed = stage(repo, "stages.train_stage_one")
    assert "(resumed)" in completed.stderr
    after = runs(repo, "stage_one")
    assert [status for _, status, _ in after] == ["KILLED", "KILLED", "FINISHED"]
    assert after[1][0] == killed[0] and "process was gone" in after[1][2]["multistage.ended_by"]
    curves = strict_json(repo / "plots" / "stage_one_curves.json")
    assert [r["step"] for r in curves] == list(range(5, 305, 5))  # both interruptions resumed without a gap


# ------------------------------------------------------------------------------------------ partial writes
def test_full_disk_fails_in_one_line_and_leaves_the_previous_outputs_whole(repo):
    stage(repo, "stages.train_stage_one")
    kept = tree_digest(repo, "models", "metrics", "plots")
    params = params_with()
    params["stage_one"]["betatcvae"]["beta"] = 3.0  # a new run: its first checkpoint (~9 MB) meets the limit
    write_params(repo, params)
    limited = sh(
        [sys.executable, "-c", LIMITED, str(2_000_000), "python", "-m", "stages.train_stage_one"], repo, check=False
    )
    error_line(limited, "checkpoints/stage_one.pt", "file-size limit", status=1)
    assert tree_digest(repo, "models", "metrics", "plots") == kept
    leftovers = sorted(p.name for p in (repo / "checkpoints").iterdir())
    assert leftovers == ["stage_one.pt.stale"]  # the earlier run's checkpoint set aside; no torn or temporary file
    assert runs(repo, "stage_one")[-1][1] == "FAILED"
    stage(repo, "stages.train_stage_one")  # room again: the run completes
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 0


def test_temporaries_left_by_a_killed_writer_are_ignored(repo):
    write_params(repo, params_with(stage_one={"steps": 8}))
    stage(repo, "stages.train_stage_one")
    whole = (repo / "checkpoints" / "stage_one.pt").read_bytes()
    model = (repo / "models" / "stage_one" / "model.pt").read_bytes()
    # what kill -9 in the middle of each atomic write leaves: half-written temporaries beside the real files
    (repo / "checkpoints" / ".stage_one.x1y2.tmp.pt").write_bytes(whole[: len(whole) // 3])
    staging = repo / "models" / ".stage_one.a1b2.tmp"
    staging.mkdir()
    (staging / "model.pt").write_bytes(model[: len(model) // 2])
    (repo / "metrics" / ".stage_one.c3d4.tmp.json").write_text('{"stage_one.loss": 1.')
    write_params(repo, params_with(stage_one={"steps": 12}))
    stage(repo, "stages.train_stage_one")
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 0  # other steps
    from multistage.models.files import load_model

    load_model(repo / "models" / "stage_one" / "model.pt", "stage_one")  # whole
    strict_json(repo / "metrics" / "stage_one.json")


def test_interrupted_dvc_push_leaves_no_torn_object_and_a_second_push_completes(repo, tmp_path):
    sh(["dvc", "repro", "stage_one"], repo)
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "store", str(remote)], repo)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-q", "-m", "stage one"], repo)
    # the push dies part-way: the remote's disk holds no file over 1 MB (images.npy and model.pt are larger)
    interrupted = sh([sys.executable, "-c", LIMITED, str(1_000_000), "dvc", "push"], repo, check=False)
    assert interrupted.returncode != 0
    # DVC writes each object under a hidden temporary name (.<random>.tmp) and renames it when whole; the one it was
    # writing when the push died may stay behind under that name, which DVC never reads as an object
    objects = [p for p in remote.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert objects, "nothing was pushed before the failure: lower the limit's bar"
    for path in objects:  # every object in the remote is whole: its name is its md5
        assert hashlib.md5(path.read_bytes()).hexdigest() == path.parent.name + path.name.split(".")[0], path
    sh(["dvc", "push"], repo)
    pushed = [p for p in remote.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert len(pushed) > len(objects)
    clone = tmp_path / "clone"
    sh(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    sh(["dvc", "pull", "prepare", "stage_one"], clone)
    assert tree_digest(clone, "models", "data") == tree_digest(repo, "models", "data")
    assert "up to date" in sh(["dvc", "status", "stage_one"], clone).stdout.lower()


# ------------------------------------------------------------------------------------------- Prefect retry
PREFECT_RETRY = textwrap.dedent(
    """
    import json
    from prefect import flow
    import pipeline.flow as pipeline_flow
    from stages import train_stage_one
    from stages.common import read_params_file

    attempts = []
    original = train_stage_one.step_logger

    def crashing(tracker):  # the first attempt crashes in the middle of training, after the step-4 checkpoint
        inner = original(tracker)
        attempts.append(len(attempts) + 1)
        first = len(attempts) == 1

        def callback(step, record):
            inner(step, record)
            if first and step == 8:
                raise RuntimeError("injected crash in the middle of stage one")
        return callback

    train_stage_one.step_logger = crashing
    params = read_params_file()

    @flow
    def only_stage_one():
        state = pipeline_flow.stage_one_task(params["stage_one"], params["runtime"], "data", [], "code",
                                             return_state=True)
        return state.name

    print(json.dumps({"state": only_stage_one(), "attempts": len(attempts)}))
    """
)


def test_prefect_retry_after_a_crash_mid_stage_resumes_and_equals_an_uninterrupted_run(repo, prepared, tmp_path):
    env = ephemeral_prefect_env(repo, tmp_path / "prefect-home")
    completed = sh(["python", "-c", PREFECT_RETRY], repo, env=env, timeout=900)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"state": "Completed", "attempts": 2}
    assert strict_json(repo / "metrics" / "stage_one.json")["stage_one.resumed_from_step"] == 4
    assert [status for _, status, _ in runs(repo, "stage_one")] == ["FAILED", "FINISHED"]

    straight = tmp_path / "straight"
    shutil.copytree(prepared, straight, symlinks=True)
    stage(straight, "stages.train_stage_one")
    assert_same_weights(repo / "models" / "stage_one" / "model.pt", straight / "models" / "stage_one" / "model.pt")


# ------------------------------------------------------------------------------------ a brand-new MLflow store
FIRST_RUN = textwrap.dedent(
    """
    import sys, time
    start = float(sys.argv[1])
    from stages.tracking import stage_run
    time.sleep(max(0.0, start - time.time()))  # every process opens the new store at the same moment
    with stage_run("stage_one", {"process": sys.argv[2]}) as run:
        run.log_metrics({"train.loss": 1.0}, step=1)
    """
)


def test_concurrent_first_runs_on_a_brand_new_store_all_succeed(tmp_path):
    store = tmp_path / "fresh" / "mlruns.db"
    env = tool_env(tmp_path)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    env["PYTHONPATH"] = str(PROJECT)
    start = time.time() + 12  # after every process has imported MLflow
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_RUN, str(start), str(i)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    outcomes = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    for status, stderr in outcomes:
        assert status == 0, stderr[-3000:]
    database = sqlite3.connect(store)
    statuses = [s for (s,) in database.execute("select status from runs where name = 'stage_one'").fetchall()]
    assert statuses == ["FINISHED"] * 3


def test_dvc_queue_with_two_workers_on_a_fresh_repository(tmp_path):
    """`dvc queue start -j 2` in a new repository with no MLflow store yet: both experiments create it at once."""
    from tests.conftest import wait_for_queued_experiment

    root = make_tiny_repo(tmp_path / "repo")
    assert not (root / "mlruns.db").exists()
    for beta in (2, 3):
        sh(
            [
                "dvc",
                "exp",
                "run",
                "--queue",
                "-S",
                f"stage_one.betatcvae.beta={beta}",
                "-n",
                f"beta{beta}",
                "stage_one",
            ],
            root,
        )
    try:
        sh(["dvc", "queue", "start", "-j", "2"], root)
        for beta in (2, 3):
            status = wait_for_queued_experiment(root, f"beta{beta}", 900)
    finally:
        sh(["dvc", "queue", "stop", "--kill"], root, check=False)
    assert "Failed" not in status, status
    for name in ("prepare", "stage_one"):
        assert [s for _, s, _ in runs(root, name)] == ["FINISHED", "FINISHED"], name
