"""Stages refuse bad params before touching the disk, and training resumes after kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from tests.conftest import TINY_PARAMS, sh, tool_env, write_params

pytestmark = pytest.mark.e2e


def outputs(root):
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith((".git", ".dvc", "multistage", "stages", "pipeline"))
    )


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("stage_one", "betta", 4.0, "unknown key 'stage_one.betta'; allowed keys:"),
        ("stage_one", "betatcvae.estimator", "exact", "bad value for 'stage_one.betatcvae.estimator': 'exact'"),
        ("prepare", "n_images", -5, "bad value for 'prepare.n_images': -5"),
        ("runtime", "device", "cuda:7", "runtime.device"),
    ],
)
def test_bad_params_give_one_clear_error_and_write_nothing(tiny_repo, section, key, value, expected):
    params = json.loads(json.dumps(TINY_PARAMS))
    *parents, leaf = key.split(".")
    target = params[section]
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    write_params(tiny_repo, params)
    before = outputs(tiny_repo)
    module = {"stage_one": "stages.train_stage_one", "prepare": "stages.prepare", "runtime": "stages.train_stage_one"}[
        section
    ]
    completed = sh(["python", "-m", module], tiny_repo, check=False)
    assert completed.returncode == 2, completed.stderr
    assert expected in completed.stderr
    assert "Traceback" not in completed.stderr
    if section == "stage_one" and key == "betatcvae.estimator":
        assert "'stratified'" in completed.stderr and "'weighted'" in completed.stderr
    assert outputs(tiny_repo) == before


def test_missing_input_is_named(tiny_repo):
    completed = sh(["python", "-m", "stages.train_stage_one"], tiny_repo, check=False)
    assert completed.returncode == 2
    assert "data/prepared" in completed.stderr and "Traceback" not in completed.stderr


def test_kill_during_stage_one_then_resume(tiny_repo):
    sh(["python", "-m", "stages.prepare"], tiny_repo)
    params = json.loads(json.dumps(TINY_PARAMS))
    # a short run, so that the resumed part costs little: it is killed right after its first checkpoints
    params["stage_one"].update(steps=150, checkpoint_every=5, log_every=5)
    write_params(tiny_repo, params)
    checkpoint = tiny_repo / "checkpoints" / "stage_one.pt"
    process = subprocess.Popen(
        ["python", "-m", "stages.train_stage_one"],
        cwd=tiny_repo,
        env=tool_env(tiny_repo),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    time.sleep(0.3)  # let it pass a few more checkpoints
    assert process.poll() is None, "training ended before it could be killed; raise the steps"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert checkpoint.exists()
    assert not (tiny_repo / "models" / "stage_one" / "model.pt").exists()

    import torch

    killed_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < killed_at < 150
    completed = sh(["python", "-m", "stages.train_stage_one"], tiny_repo)
    assert "(resumed)" in completed.stderr
    metrics = json.loads((tiny_repo / "metrics" / "stage_one.json").read_text())
    assert metrics["stage_one.resumed_from_step"] == killed_at
    curves = json.loads((tiny_repo / "plots" / "stage_one_curves.json").read_text())
    assert [r["step"] for r in curves] == list(range(5, 155, 5))  # history continues without a gap or repeat
    assert (tiny_repo / "models" / "stage_one" / "model.pt").exists()
