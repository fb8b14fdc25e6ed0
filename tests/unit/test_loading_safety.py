"""Nothing unsafe is loaded, damaged files and bad values give one line naming them, and what the project writes
is strict JSON: torch files are read with weights_only=True, checkpoints are matched on params, data and code,
set-aside checkpoints are never overwritten, a boolean is not a number, the runtime device is checked."""

from __future__ import annotations

import ast
import io
import json
import math
import os
from contextlib import redirect_stderr
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import BaseModel

from multistage.models.files import ModelFileError, load_model, save_model
from multistage.models.registry import STAGE_ONE, STAGE_TWO, build
from multistage.train import (
    CheckpointError,
    LoopConfig,
    NonFiniteLossError,
    load_checkpoint,
    load_tensors_file,
    select_device,
    train,
)
from stages.common import (
    InputError,
    ParamsError,
    StageParams,
    atomic_write_json,
    code_digest,
    load_array,
    run_cli,
    stage_code_files,
    validate_section,
)
from tests.conftest import PROJECT, TINY_PARAMS
from tests.unit.test_train import _problem


# ------------------------------------------------------------------------------------------ weights_only
def _torch_load_calls(root: Path):
    for path in sorted(root.rglob("*.py")):
        if ".venv" in path.parts or "__pycache__" in path.parts:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                yield path.relative_to(root), node


def test_every_torch_load_in_the_tree_is_weights_only():
    calls = list(_torch_load_calls(PROJECT))
    assert calls, "no torch.load call found: the scan is broken"
    unsafe = []
    for path, node in calls:
        keyword = next((k for k in node.keywords if k.arg == "weights_only"), None)
        if keyword is None or not (isinstance(keyword.value, ast.Constant) and keyword.value.value is True):
            unsafe.append(f"{path}:{node.lineno}")
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def _evil(path: Path, payload: dict) -> None:
    torch.save({**payload, "hook": os.system}, path)  # a pickled callable: loading it with pickle could run code


def test_model_file_carrying_a_pickled_callable_is_refused(tmp_path):
    model = build("stage_one", "betatcvae", latent_dim=3, image_size=32)
    save_model(tmp_path / "good.pt", "stage_one", "betatcvae", model)
    payload = torch.load(tmp_path / "good.pt", weights_only=True)
    _evil(tmp_path / "evil.pt", payload)
    with pytest.raises(ModelFileError) as caught:
        load_model(tmp_path / "evil.pt", "stage_one")
    message = str(caught.value)
    assert str(tmp_path / "evil.pt") in message and "refused" in message and "posix.system" in message
    assert "\n" not in message


def test_checkpoint_carrying_a_pickled_callable_is_refused(tmp_path):
    (tmp_path / "c.pt").write_bytes(_checkpoint_bytes(tmp_path))  # a real checkpoint of the training loop
    _evil(tmp_path / "c.pt", torch.load(tmp_path / "c.pt", weights_only=True))
    with pytest.raises(CheckpointError, match=r"c\.pt holds pickled objects .*refused"):
        load_checkpoint(tmp_path / "c.pt", "f")


def test_chain_node_file_carrying_a_pickled_callable_is_refused(tmp_path):
    _evil(tmp_path / "node.pt", {"format": "multistage.chain_node/1", "state_dict": {}})
    with pytest.raises(ValueError, match=r"chain node file .*node\.pt holds pickled objects .*refused"):
        load_tensors_file(tmp_path / "node.pt", "chain node file")


def _tiny_options(kind: str, name: str) -> dict:
    config_class = (STAGE_ONE if kind == "stage_one" else STAGE_TWO)[name][1]
    fields = {f.name for f in __import__("dataclasses").fields(config_class)}
    options = {"image_size": 32} if "image_size" in fields else {}
    if "dataset_size" in fields:
        options["dataset_size"] = 100
    if "target_parameters" in fields:
        options["target_parameters"] = 50_000
    return options


@pytest.mark.parametrize("kind, name", [("stage_one", n) for n in STAGE_ONE] + [("stage_two", n) for n in STAGE_TWO])
def test_every_model_file_the_project_writes_loads_weights_only(tmp_path, kind, name):
    torch.manual_seed(0)
    model = build(kind, name, **_tiny_options(kind, name))
    save_model(tmp_path / "m.pt", kind, name, model, extra={"data": "data/prepared", "count": 3})
    torch.load(tmp_path / "m.pt", weights_only=True)  # no error: only tensors and plain values
    loaded, extra = load_model(tmp_path / "m.pt", kind)
    assert extra == {"data": "data/prepared", "count": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# ------------------------------------------------------------------------------------------ damaged files
def _checkpoint_bytes(tmp_path: Path) -> bytes:
    model, optimizer, step_fn = _problem()
    train(
        model,
        optimizer,
        step_fn,
        64,
        LoopConfig(steps=4, batch_size=8, checkpoint_every=2, log_every=2),
        tmp_path / "whole.pt",
        "f",
        show_progress=False,
    )
    return (tmp_path / "whole.pt").read_bytes()


def damage_bytes(path: Path, how: str, whole: bytes | None = None, seed: int = 0) -> None:
    """Write ``path`` as a damaged copy of ``whole`` (default: its own bytes): its first half ("truncated"), as many
    random bytes ("random") or nothing ("empty")."""
    whole = path.read_bytes() if whole is None else whole
    if how == "truncated":
        path.write_bytes(whole[: len(whole) // 2])
    elif how == "random":
        path.write_bytes(np.random.default_rng(seed).bytes(len(whole)))
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "not_a_checkpoint"])
def test_damaged_checkpoint_is_one_line_naming_it(tmp_path, damage):
    whole = _checkpoint_bytes(tmp_path)
    path = tmp_path / "stage.pt"
    if damage == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    else:
        damage_bytes(path, damage, whole)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, "f")
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)
    assert "delete it to start afresh" in str(caught.value)


def test_checkpoint_with_the_right_fingerprint_but_other_shapes_is_one_line(tmp_path):
    model, optimizer, step_fn = _problem()
    config = LoopConfig(steps=4, batch_size=8, checkpoint_every=2, log_every=2)
    train(model, optimizer, step_fn, 64, config, tmp_path / "c.pt", "f", show_progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["step"] = 2
    state["model"]["weight"] = torch.zeros(1, 5)  # the model's is (1, 3)
    torch.save(state, tmp_path / "c.pt")
    model, optimizer, step_fn = _problem()
    with pytest.raises(CheckpointError) as caught:
        train(model, optimizer, step_fn, 64, config, tmp_path / "c.pt", "f", show_progress=False)
    message = str(caught.value)
    assert str(tmp_path / "c.pt") in message and "do not fit the model" in message and "\n" not in message


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "pickled"])
def test_damaged_array_is_one_line_naming_it(tmp_path, damage):
    path = tmp_path / "y.npy"
    np.save(path, np.zeros((50, 1, 8, 8), dtype=np.float16))
    whole = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(whole[: len(whole) - 200])
    elif damage == "random":
        path.write_bytes(np.random.default_rng(1).bytes(len(whole)))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as caught:
        array = load_array(path, "paired set y", mmap=True)
        np.asarray(array[:1])
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_stale_checkpoints_are_numbered_never_overwritten(tmp_path):
    path = tmp_path / "s.pt"
    contents = []
    for run in range(3):
        model, optimizer, step_fn = _problem(seed=run)
        train(
            model,
            optimizer,
            step_fn,
            64,
            LoopConfig(steps=2, batch_size=8, checkpoint_every=1, log_every=1),
            path,
            f"params-{run}",
            show_progress=False,
        )
        contents.append(path.read_bytes())
    assert (tmp_path / "s.pt.stale").read_bytes() == contents[0]
    assert (tmp_path / "s.pt.stale.1").read_bytes() == contents[1]
    assert path.read_bytes() == contents[2]


# ------------------------------------------------------------------------------------------ NaN stop
def test_nan_stop_advice_matches_what_a_rerun_does(tmp_path):
    path = tmp_path / "n.pt"
    config = LoopConfig(steps=12, batch_size=8, checkpoint_every=4, log_every=4)

    def exploding(step_fn, at):
        def wrapped(indices, step):
            loss, logs = step_fn(indices, step)
            return (loss * float("nan"), logs) if step == at else (loss, logs)

        return wrapped

    model, optimizer, step_fn = _problem()
    with pytest.raises(NonFiniteLossError) as caught:
        train(model, optimizer, exploding(step_fn, 6), 64, config, path, "lr=0.05", show_progress=False)
    message = str(caught.value)
    assert "\n" not in message
    # "a rerun with the same params resumes from it": the same fingerprint resumes at the kept step 4
    assert "a rerun with the same params resumes from it" in message
    model, optimizer, step_fn = _problem()
    resumed = train(model, optimizer, step_fn, 64, config, path, "lr=0.05", show_progress=False)
    assert resumed.start_step == 4
    # "change a param ... training starts again from step 0 and the old checkpoint is set aside as a .stale file"
    assert "starts again from step 0" in message and ".stale" in message
    model, optimizer, step_fn = _problem()
    fresh = train(model, optimizer, step_fn, 64, config, path, "lr=0.01", show_progress=False)
    assert fresh.start_step == 0 and (tmp_path / "n.pt.stale").exists()


@pytest.mark.parametrize(
    "error",
    [
        NonFiniteLossError("stage one: non-finite loss (nan) at step 3; the last good checkpoint is kept"),
        CheckpointError("checkpoint checkpoints/stage_one.pt cannot be read (the file is empty); delete it"),
        ModelFileError("model file models/stage_one/model.pt cannot be read (the file is empty)"),
        InputError("paired set y pairs/y.npy cannot be read (mmap length is greater than file size)"),
        ParamsError("params.yaml: bad value for 'stage_one.steps': True"),
    ],
)
def test_run_cli_turns_each_failure_into_one_line_and_exit_2(error):
    def main():
        raise error

    stderr = io.StringIO()
    with redirect_stderr(stderr), pytest.raises(SystemExit) as stop:
        run_cli(main)
    assert stop.value.code == 2
    assert stderr.getvalue() == f"error: {error}\n"


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:banana", "cuda:7", "mps"])
def test_unusable_device_is_a_value_error_naming_it(device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 CUDA devices")
    with pytest.raises(ValueError, match=repr(device).replace("[", r"\[")):
        select_device(device)


# ------------------------------------------------------------------------------------------ strict JSON
def test_json_outputs_are_strict_with_null_for_non_finite(tmp_path):
    atomic_write_json(
        tmp_path / "m.json",
        {"a": math.nan, "b": [1.0, math.inf], "c": np.float32("nan"), "d": 2.5, "e": np.array([np.nan, 1.0])},
    )
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text}")) == {
        "a": None,
        "b": [1.0, None],
        "c": None,
        "d": 2.5,
        "e": [None, 1.0],
    }


# ------------------------------------------------------------------------------------------ bool for number
def _sections() -> dict[str, tuple[type[BaseModel], dict]]:
    import yaml

    from stages import (
        chain,
        evaluate,
        make_pairs,
        prepare,
        report,
        train_stage_one,
        train_stage_two,
    )
    from stages.common import RuntimeParams

    pendulum = yaml.safe_load((PROJECT / "params.yaml").read_text())["chains"]["pendulum"]
    node = {"kind": "gaussian_mlp", "output": "y0", "inputs": ["length"], "training": {}}
    return {
        "chains.pendulum": (chain.ChainParams, pendulum),
        "chains.pendulum.nodes.length_to_y0": (chain.NodeParams, node),
        "runtime": (RuntimeParams, TINY_PARAMS["runtime"]),
        "prepare": (prepare.PrepareParams, TINY_PARAMS["prepare"]),
        "stage_one": (train_stage_one.StageOneParams, TINY_PARAMS["stage_one"]),
        "pairs": (make_pairs.PairsParams, TINY_PARAMS["pairs"]),
        "stage_two": (train_stage_two.StageTwoParams, TINY_PARAMS["stage_two"]),
        "evaluate": (evaluate.EvaluateParams, TINY_PARAMS["evaluate"]),
        "registry": (report.RegistryParams, TINY_PARAMS["registry"]),
    }


def _numeric_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key (nested sub-sections included) whose type is a number or a list of numbers, not a boolean."""
    from stages.common import (
        _element_takes_number_not_bool,
        _takes_number_not_bool,
        _union_members,
    )

    keys = []
    for name, field in model.model_fields.items():
        members = _union_members(field.annotation)
        nested = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if nested:
            keys += _numeric_keys(nested[0], (*prefix, name))
        elif _takes_number_not_bool(field.annotation) or _element_takes_number_not_bool(field.annotation):
            keys.append((*prefix, name))
    return keys


BOOL_CASES = [(section, key) for section, (model, _) in _sections().items() for key in _numeric_keys(model)]


def test_the_bool_cases_cover_every_section():
    assert {section for section, _ in BOOL_CASES} == set(_sections()) - {"registry"}  # registry: no numbers
    assert ("stage_one", ("steps",)) in BOOL_CASES and ("stage_one", ("learning_rate",)) in BOOL_CASES
    assert ("stage_one", ("betatcvae", "beta")) in BOOL_CASES and ("runtime", ("threads",)) in BOOL_CASES
    assert len(BOOL_CASES) > 60


@pytest.mark.parametrize("section, key", BOOL_CASES, ids=[f"{s}.{'.'.join(k)}" for s, k in BOOL_CASES])
def test_a_boolean_is_not_a_number(section, key):
    model, good = _sections()[section]
    raw = json.loads(json.dumps(good))
    target = raw
    for part in key[:-1]:
        target = target.setdefault(part, {})
    annotation = _field(model, key).annotation
    from stages.common import _element_takes_number_not_bool

    target[key[-1]] = [True] if _element_takes_number_not_bool(annotation) else True
    with pytest.raises(ParamsError) as caught:
        validate_section(model, raw, section)
    dotted = ".".join((section, *key))
    assert f"bad value for '{dotted}'" in str(caught.value) and "boolean" in str(caught.value)


def _field(model: type[BaseModel], key: tuple[str, ...]):
    from stages.common import _union_members

    for part in key[:-1]:
        annotation = model.model_fields[part].annotation
        model = next(m for m in _union_members(annotation) if isinstance(m, type) and issubclass(m, BaseModel))
    return model.model_fields[key[-1]]


def test_booleans_still_pass_where_a_boolean_is_meant_and_numbers_where_numbers_are():
    from stages.make_pairs import PairsParams

    assert validate_section(PairsParams, {"use_mean": True, "samples_per_x": 2}, "pairs").use_mean is True
    assert validate_section(PairsParams, {"samples_per_x": 2.0}, "pairs").samples_per_x == 2

    class Mixed(StageParams):
        either: bool | int = 0

    assert validate_section(Mixed, {"either": True}, "mixed").either is True


def test_a_missing_runtime_section_means_the_defaults():
    from stages.common import load_runtime

    path = Path(__file__).parent / "__no_runtime__.yaml"
    try:
        path.write_text("stage_one: {}\n")
        runtime = load_runtime(path)
    finally:
        path.unlink(missing_ok=True)
    assert (runtime.device, runtime.threads, runtime.precision) == ("auto", 0, "fp32")


# ------------------------------------------------------------------------------------------ code fingerprint
def test_stage_code_is_what_dvc_yaml_lists(tmp_path):
    files = {str(p.relative_to(PROJECT)) for p in stage_code_files("stage_one", PROJECT / "dvc.yaml")}
    assert {
        "multistage/train.py",
        "stages/train_stage_one.py",
        "stages/common.py",
        "multistage/models/stage_one/betatcvae.py",
    } <= files
    assert not any(name.startswith("multistage/metrics") or "__pycache__" in name for name in files)
    assert stage_code_files("stage_two@msvae", PROJECT / "dvc.yaml") == stage_code_files(
        "stage_two", PROJECT / "dvc.yaml"
    )


def test_code_digest_changes_with_the_code_the_stage_runs(tmp_path):
    import shutil

    for name in ("multistage", "stages"):
        shutil.copytree(PROJECT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PROJECT / "dvc.yaml", tmp_path / "dvc.yaml")
    before = code_digest("stage_one", tmp_path / "dvc.yaml")
    (tmp_path / "multistage" / "metrics" / "mig.py").write_text("# not stage one's code\n", encoding="utf-8")
    assert code_digest("stage_one", tmp_path / "dvc.yaml") == before
    objective = tmp_path / "multistage" / "models" / "stage_one" / "betatcvae.py"
    objective.write_text(objective.read_text() + "\n# a changed objective\n")
    assert code_digest("stage_one", tmp_path / "dvc.yaml") != before
    with pytest.raises(InputError, match="dvc.yaml not found"):
        code_digest("stage_one", tmp_path / "elsewhere" / "dvc.yaml")
    with pytest.raises(InputError, match="no stage 'stage_9'"):
        code_digest("stage_9", tmp_path / "dvc.yaml")


def test_the_default_code_is_the_running_code_wherever_the_stage_runs(tmp_path, monkeypatch):
    import stages.common

    here = code_digest("stage_one")
    monkeypatch.chdir(tmp_path)  # a Prefect sweep point runs its stages in a folder of its own
    assert (
        code_digest("stage_one")
        == here
        == code_digest("stage_one", Path(stages.common.__file__).parents[1] / "dvc.yaml")
    )
    chain_files = {str(p.relative_to(PROJECT)) for p in stage_code_files("chain", PROJECT / "dvc.yaml")}
    assert "multistage/chains/runner.py" in chain_files and "stages/chain.py" in chain_files


# ------------------------------------------------------------------------------------------ check_params stage
def test_check_params_validates_every_section_with_the_stages_checks(tmp_path):
    import yaml

    from stages.check_params import check_all

    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert check_all(PROJECT / "params.yaml") == [
        "runtime",
        "prepare",
        "stage_one",
        "pairs",
        "stage_two",
        "evaluate",
        "registry",
        *(f"chains.{n}" for n in params["chains"]),
    ]
    for section, key, value in [
        ("stage_two", "steps", True),
        ("runtime", "device", "tpu"),
        ("evaluate", "mig_bins", -3),
    ]:
        bad = json.loads(json.dumps(params))
        bad[section][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
            check_all(tmp_path / "params.yaml")
