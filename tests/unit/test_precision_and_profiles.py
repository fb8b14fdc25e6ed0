"""runtime.precision (bf16 autocast of the stage-one networks while training) and the params profiles (issue 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from multistage.models.registry import STAGE_ONE
from multistage.nn.precision import bf16_is_native, resolve_precision, train_networks_in_bf16
from pipeline import profiles as profile
from stages.common import ParamsError, RuntimeParams, read_params_file, validate_section

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    model_class, config_class = STAGE_ONE["betatcvae"]
    config = config_class(
        image_channels=1,
        image_size=32,
        latent_dim=4,
        dataset_size=1000,
        architecture="conv32",
        estimator="stratified",
        warmup_steps=0,
    )
    return model_class(config)


def batch(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(16, 1, 32, 32, generator=generator) > 0.7).float()


def test_resolve_precision():
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("auto", CPU) == ("bf16" if bf16_is_native(CPU) else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", CPU)


def test_runtime_precision_is_validated():
    assert validate_section(RuntimeParams, {"precision": "auto"}, "runtime").precision == "auto"
    with pytest.raises(ParamsError, match="runtime.precision"):
        validate_section(RuntimeParams, {"precision": "half"}, "runtime")


def test_bf16_networks_train_in_bf16_and_evaluate_in_fp32():
    reference, model = small_model(), small_model()
    keys_before = {k: (v.dtype, v.shape) for k, v in model.state_dict().items()}
    train_networks_in_bf16(CPU, model.encoder, model.decoder)
    train_networks_in_bf16(CPU, model.encoder)  # a second call does not wrap twice
    assert {k: (v.dtype, v.shape) for k, v in model.state_dict().items()} == keys_before
    x = batch()

    # training mode: the convolutions run in bf16 (outputs differ from fp32 by bf16 rounding, not more), the
    # boundary is float32
    features = model.encoder(x)
    expected = reference.encoder(x)
    assert features.dtype == torch.float32
    assert not torch.equal(features, expected)
    assert torch.allclose(features, expected, rtol=0.05, atol=0.05)

    # the objective stays close and its gradients land on float32 weights
    torch.manual_seed(3)
    loss, _ = model.objective(x, 10)
    torch.manual_seed(3)
    loss_reference, _ = reference.objective(x, 10)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - loss_reference.item()) < 0.02 * abs(loss_reference.item())
    loss.backward()
    loss_reference.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        cosine = torch.nn.functional.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0)
        assert cosine > 0.95, (name, float(cosine))

    # evaluation mode: exactly the float32 network
    model.eval()
    reference.eval()
    assert torch.equal(model.encoder(x), reference.encoder(x))
    assert torch.equal(model.decode_mean(model.representation(x)), reference.decode_mean(reference.representation(x)))


def test_build_model_applies_the_precision(tmp_path):
    from stages.train_stage_one import StageOneParams, build_model

    class Data:  # the two attributes build_model reads
        images = np.zeros((10, 1, 32, 32), dtype=np.uint8)
        train_indices = np.arange(8)

    params = StageOneParams(latent_dim=4)
    assert not getattr(build_model(params, Data(), CPU, "fp32").encoder, "_bf16_training", False)
    bf16 = build_model(params, Data(), CPU, "bf16")
    assert bf16.encoder._bf16_training and bf16.decoder._bf16_training


def test_the_cpu_profile_is_the_default_and_the_paper_profile_validates():
    params = read_params_file(ROOT / "params.yaml")
    cpu = profile.load_profile("cpu")
    for dotted, value in cpu.items():
        node = params
        for part in dotted.split("."):
            node = node[part]
        assert node == value, f"profiles/cpu.yaml {dotted}={value!r} but params.yaml has {node!r}"
    paper = profile.load_profile("paper")
    assert set(paper) == set(cpu), "the two profiles set the same keys, so either one can be applied over the other"
    applied, _ = profile.profiled_params("paper", ROOT / "params.yaml")
    assert applied["stage_one"]["steps"] == 300000 and applied["stage_one"]["betatcvae"]["estimator"] == "weighted"
    assert applied["prepare"]["image_size"] == 64 and params["prepare"]["image_size"] == 32  # the study's lever


def test_profile_apply_json_and_errors(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    assert profile.main(["paper", "--params", str(target), "--json"]) == 0
    leaves = json.loads(capsys.readouterr().out)
    assert leaves["stage_one.learning_rate"] == 0.0001

    assert profile.main(["paper", "--params", str(target)]) == 0
    command = capsys.readouterr().out
    assert command.startswith("dvc exp run -S ") and "stage_one.steps=300000" in command

    assert profile.main(["paper", "--params", str(target), "--apply"]) == 0
    text = target.read_text()
    assert "# The embedded default" in text  # comments kept
    written = yaml.safe_load(text)
    assert written["stage_one"]["steps"] == 300000 and written["prepare"]["n_images"] is None
    assert profile.main(["cpu", "--params", str(target), "--apply"]) == 0
    assert yaml.safe_load(target.read_text()) == yaml.safe_load((ROOT / "params.yaml").read_text())

    assert profile.main(["nonexistent", "--params", str(target)]) == 2
    assert "no profile 'nonexistent'" in capsys.readouterr().err


def test_a_bad_profile_is_one_error_and_writes_nothing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "bad.yaml").write_text("stage_one:\n  batch_size: -1\n")
    (folder / "unknown.yaml").write_text("stage_one:\n  betatcvae:\n    bta: 4\n")
    monkeypatch.setattr(profile, "PROFILES", folder)
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    before = target.read_text()
    assert profile.main(["bad", "--params", str(target), "--apply"]) == 2
    assert "stage_one.batch_size" in capsys.readouterr().err
    assert profile.main(["unknown", "--params", str(target), "--apply"]) == 2
    assert "stage_one.betatcvae.bta" in capsys.readouterr().err
    assert target.read_text() == before


def test_no_script_folder_module_shadows_the_standard_library():
    """Prefect runs pipeline/flow.py (and DVC runs stages) with that folder on sys.path: a module named like a
    standard-library one there (pipeline/profile.py once did) breaks imports such as torch's ``cProfile``."""
    import sys

    for folder in ("pipeline", "stages", "bench"):
        names = {path.stem for path in (ROOT / folder).glob("*.py")} - {"__init__"}
        assert not names & set(sys.stdlib_module_names), (folder, names & set(sys.stdlib_module_names))


def test_the_jointvae_profile_takes_the_data_path_from_the_command_line(tmp_path, capsys):
    """JointVAE's MNIST settings (appendix C.1) need the user's MNIST: without its path the profile is one error
    naming the key; ``--set`` supplies it, and ``--apply`` writes it with the profile."""
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    assert profile.main(["jointvae_mnist", "--params", str(target)]) == 2
    assert "prepare.mnist_idx.images is required" in capsys.readouterr().err
    path = "/data/mnist/train-images-idx3-ubyte.gz"
    assert profile.main(["jointvae_mnist", "--params", str(target), "--set", f"prepare.mnist_idx.images={path}"]) == 0
    assert f"prepare.mnist_idx.images={path}" in capsys.readouterr().out
    assert profile.main(["jointvae_mnist", "--params", str(target), "--set", "no_equals_sign"]) == 2
    assert "expected key=value" in capsys.readouterr().err
    args = ["jointvae_mnist", "--params", str(target), "--set", f"prepare.mnist_idx.images={path}", "--apply"]
    assert profile.main(args) == 0
    written = yaml.safe_load(target.read_text())
    assert written["prepare"]["mnist_idx"]["images"] == path and written["stage_one"]["model"] == "jointvae"
    settings = written["stage_one"]["jointvae"]
    assert (settings["gamma_c"], settings["capacity_c_steps"], settings["temperature"]) == (30.0, 25000, 0.67)
    assert written["stage_one"]["learning_rate"] == 0.0005 and written["stage_one"]["batch_size"] == 64
