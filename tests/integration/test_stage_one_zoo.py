"""Every stage-one model trains inside the pipeline on tiny params.

One real `dvc exp run -S stage_one.model=jointvae ... stage_one` (a non-default model chosen from the command line,
data prepared by DVC on the way), then each of the six models through the stage function itself in that
repository (the same code DVC runs; in-process, because each extra `dvc exp run` costs ~15 s of imports and git),
and each model file is loaded back and keeps the stage-one interface."""

from __future__ import annotations

import json

import pytest
import torch

from stages.train_stage_one import StageOneParams
from tests.conftest import TINY_PARAMS, make_tiny_repo, sh

pytestmark = pytest.mark.e2e

CASES = [
    ("betavae", {"likelihood": "gaussian_learned"}, {"kl", "decoder_variance"}),
    ("annealedvae", {}, {"kl", "capacity"}),
    ("betatcvae", {}, {"index_code_mi", "tc", "dim_kl"}),
    (
        "dipvae",
        {"dipvae": {"variant": "i", "lambda_third": 1.0}},
        {"dip_off_diagonal", "dip_diagonal", "dip_third_moment"},
    ),
    ("jointvae", {}, {"kl_z", "kl_c", "capacity_c"}),
    ("factorvae", {}, {"tc", "discriminator_accuracy"}),
]


def check_outputs(root, name: str, terms: set[str], steps: list[int]) -> None:
    from multistage.models.files import load_model

    metrics = json.loads((root / "metrics" / "stage_one.json").read_text())
    assert {f"stage_one.{term}" for term in {"loss", "recon", *terms}} <= set(metrics)
    curves = json.loads((root / "plots" / "stage_one_curves.json").read_text())
    assert [record["step"] for record in curves] == steps and terms <= set(curves[-1])
    model, _ = load_model(root / "models" / "stage_one" / "model.pt", "stage_one")
    assert type(model).__name__.lower() == name
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        code = model.representation(x)
        assert code.shape == (3, model.code_dim) and len(model.code_names) == model.code_dim
        assert model.decode_mean(model.sample_code(x)).shape == x.shape


@pytest.fixture(scope="module")
def zoo_repo(tmp_path_factory):
    """A tiny git + DVC copy of the project (binary dSprites, 200 images; every stage_one key written out, as in
    the project's params.yaml, so `dvc exp run -S` can set any of them), after one `dvc exp run` choosing JointVAE."""
    params = json.loads(json.dumps(TINY_PARAMS))
    params["prepare"].update(n_images=200, dsprites={"variant": "binary"})
    params["stage_one"] = StageOneParams.model_validate(params["stage_one"]).model_dump()
    root = make_tiny_repo(tmp_path_factory.mktemp("zoo") / "repo", params)
    completed = sh(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "stage_one.model=jointvae",
            "-S",
            "stage_one.jointvae.temperature=0.5",
            "-S",
            "stage_one.steps=6",
            "-S",
            "stage_one.log_every=3",
            "stage_one",
        ],
        root,
    )
    check_outputs(root, "jointvae", {"kl_z", "kl_c"}, [3, 6])
    return root, completed.stdout


def test_dvc_exp_run_chooses_the_model_from_the_command_line(zoo_repo):
    root, stdout = zoo_repo
    assert "Running stage 'prepare'" in stdout and "Running stage 'stage_one'" in stdout
    model = torch.load(root / "models" / "stage_one" / "model.pt", weights_only=True)
    assert model["name"] == "jointvae" and model["config"]["temperature"] == 0.5


@pytest.mark.parametrize("name, settings, terms", CASES, ids=[case[0] for case in CASES])
def test_each_model_trains_through_the_stage(zoo_repo, monkeypatch, name, settings, terms):
    from stages import train_stage_one

    root, _ = zoo_repo
    monkeypatch.chdir(root)
    raw = json.loads(json.dumps(TINY_PARAMS["stage_one"])) | {"model": name, "steps": 6, "log_every": 3}
    for key, value in settings.items():
        raw[key] = raw.get(key, {}) | value if isinstance(value, dict) else value
    params = StageOneParams.model_validate(raw)
    torch.set_num_threads(1)
    summary = train_stage_one.run(params, torch.device("cpu"), show_progress=False)
    assert summary["stage_one.resumed_from_step"] == 0
    check_outputs(root, name, terms, [3, 6])
