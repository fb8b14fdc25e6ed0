"""dvc.yaml read as the DAG: matrix and foreach stages expanded, references filled from params and the item."""

from __future__ import annotations

import pytest
import yaml

from stages.common import ParamsError
from stages.dvc_graph import params_used, read_stages

PIPELINE = {
    "stages": {
        "prepare": {
            "cmd": "python -m stages.prepare",
            "deps": ["multistage/data", "stages/prepare.py"],
            "params": ["prepare"],
            "outs": ["data/prepared"],
        },
        "train": {
            "matrix": {"variant": "${train.variants}"},
            "cmd": "python -m stages.train --variant ${item.variant}",
            "deps": ["data/prepared", "multistage/models"],
            "params": ["train.steps", "train.${item.variant}"],
            "outs": ["models/${item.variant}"],
            "metrics": [{"metrics/train_${item.variant}.json": {"cache": False}}],
        },
        "chain": {
            "foreach": "${chains}",
            "do": {
                "cmd": "python -m stages.chain ${key}",
                "deps": ["stages/chain.py"],
                "params": ["chains.${key}"],
                "outs": ["chains/${key}"],
            },
        },
    }
}
PARAMS = {
    "prepare": {"n": 3},
    "train": {"variants": ["a", "b"], "steps": 5, "a": {"x": 1}, "b": {"x": 2}, "c": {}},
    "chains": {"pendulum": {"nodes": {}}},
}


def test_matrix_and_foreach_stages_are_expanded(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    stages = read_stages(tmp_path / "dvc.yaml", PARAMS)
    assert list(stages) == ["prepare", "train@a", "train@b", "chain@pendulum"]
    train_b = stages["train@b"]
    assert train_b.cmd.endswith("--variant b") and train_b.outs == ("models/b",)
    assert train_b.written == ("models/b", "metrics/train_b.json")
    assert train_b.code == ("multistage/models",)  # data/prepared is another stage's output, not code
    assert params_used(train_b, PARAMS) == {"train": {"steps": 5, "b": {"x": 2}}}
    assert stages["chain@pendulum"].outs == ("chains/pendulum",)


def test_a_reference_to_nothing_is_one_clear_error(tmp_path):
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    with pytest.raises(ParamsError, match=r"stage 'chain'.*\$\{chains\}"):
        read_stages(tmp_path / "dvc.yaml", {k: v for k, v in PARAMS.items() if k != "chains"})


def test_the_prefect_flow_reads_its_stages_from_the_projects_dvc_yaml():
    from pipeline.flow import PACKAGE_ROOT, pipeline_graph, variant_section
    from stages.common import read_params_file

    params = read_params_file(PACKAGE_ROOT / "params.yaml")
    params["stage_two"]["variants"] = ["msvae", "msgan"]
    graph = pipeline_graph(params)
    assert list(graph) == ["prepare", "stage_one", "pairs", "stage_two@msvae", "stage_two@msgan", "evaluate", "report"]
    assert {"metrics/evaluate.json", "metrics/headline.json", "figures"} == set(graph["evaluate"].written)
    assert "multistage/evaluation" in graph["evaluate"].code and "data/prepared" not in graph["evaluate"].code
    section = variant_section(graph["stage_two@msgan"], params)
    assert section["variants"] == ["msgan"] and section["msgan"] == params["stage_two"]["msgan"]
    assert set(section["msvae"]) == {"base_channels", "adain_hidden", "residual_encoder_sees_y"}  # Big-VAE's sizing
    assert "msflow" not in section  # another variant's sub-section leaves this task's cache alone
