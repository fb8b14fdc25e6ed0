"""Every stage-two variant through the DVC matrix (`stage_two@<variant>`) in ONE `dvc repro` at tiny size, on a
clone of the shared tiny pipeline (tests/conftest.py `dvc_baseline`, whose stage one, pairs and MS-VAE are reused):
only the new variants, evaluate and report run; the comparison table has a row per variant; the headline (MS-VAE)
scores are unchanged by the comparison; Big-VAE is as large as MS-VAE; a change to one variant's sub-section
touches that variant's stage only."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from multistage.models.files import load_model
from multistage.models.registry import STAGE_TWO
from stages.stage_two_files import model_file
from tests.conftest import TINY_PARAMS, clone_project, sh, write_params

HEADLINE = (
    "frechet.factor_classifier.x_hat",
    "conditioning.M2",
    "conditioning.M4",
    "x_hat.mig.histogram20",
    "reconstruction.x_hat.l1",
    "downstream.mlp.z.mean",
)


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.mark.e2e
def test_every_variant_trains_through_the_matrix_and_is_compared(dvc_baseline, tmp_path):
    root = clone_project(dvc_baseline.root, tmp_path / "variants")
    before = json.loads((root / "metrics" / "evaluate.json").read_text())
    params = yaml.safe_load((root / "params.yaml").read_text())
    variants = ["msvae", *(name for name in STAGE_TWO if name != "msvae")]  # every registered one (6B's too)
    params["stage_two"]["variants"] = variants
    for name in variants:
        params["stage_two"].setdefault(name, dict(TINY_PARAMS["stage_two"].get(name, {})))
    write_params(root, params)

    result = sh(["dvc", "repro"], root, timeout=1200)
    ran = ran_stages(result.stdout)
    assert sorted(ran) == sorted(
        [f"stage_two@{name}" for name in variants[1:]] + ["check_params", "evaluate", "report"]
    )
    assert "stage_two@msvae" not in ran  # the matrix reruns only what changed

    scores = json.loads((root / "metrics" / "evaluate.json").read_text())
    assert scores["evaluate.variants"] == ",".join(variants)
    for name in ["stage_one", *variants]:
        assert isinstance(scores[f"compare.{name}.parameters"], float), name
        fd = scores[f"compare.{name}.frechet.factor_classifier.x_hat"]
        assert fd is None or fd > 0, name  # null only for a model without an encoder of x
        assert scores[f"compare.{name}.code.mig.histogram20"] is None or isinstance(
            scores[f"compare.{name}.code.mig.histogram20"], float
        ), name
        assert not any(value == "n/a" for value in scores.values())  # missing results are null, never a string
        if name != "stage_one":
            assert isinstance(scores[f"compare.{name}.frechet.factor_classifier.x_sample"], float), name
            # every variant's samples are read by the colour probes (textured data), with or without an X-hat
            assert isinstance(scores[f"compare.{name}.detail.x_sample_gap_closed"], float), name
            summary = json.loads((root / "metrics" / f"stage_two_{name}.json").read_text())
            assert summary[f"stage_two.{name}.parameters"] == scores[f"compare.{name}.parameters"], name
            assert (root / "models" / "stage_two" / name / "model.pt").exists()
    assert scores["compare.msgan.detail.gap_closed"] is None  # no encoder of x: no X-hat to read, samples only
    assert isinstance(scores["compare.msvae.detail.gap_closed"], float)
    for name in ("msvae", "c_input", "concat"):  # conditioned variants: all four conditioning terms
        assert all(isinstance(scores[f"compare.{name}.conditioning.M{k}"], float) for k in range(1, 5)), name
    for name in ("betatcvae_l", "bigvae", "end_to_end", "z_first"):  # unconditioned: M3, M4 have no meaning
        assert scores[f"compare.{name}.conditioning.M3"] is None and scores[f"compare.{name}.conditioning.M4"] is None
    # the headline is MS-VAE's, as before the comparison existed: same keys, same values
    for key in HEADLINE:
        assert scores[key] == pytest.approx(before[key]) == pytest.approx(scores[f"compare.msvae.{key}"]), key
    # Big-VAE has as many parameters as MS-VAE (stage one + stage two), within 0.5%
    assert scores["compare.bigvae.parameters"] == pytest.approx(
        scores["compare.msvae.parameters_with_stage_one"], rel=0.005
    )

    page = (root / "report" / "index.html").read_text()
    table = page[page.index("Comparison of the stage-two variants") : page.index("<h2>Figures</h2>")]
    assert all(f"<code>{name}</code>" in table for name in ["stage_one", *variants])
    assert table.count("<tr>") == len(variants) + 2 and "data:image/png;base64," in table
    captions = json.loads((root / "figures" / "captions.json").read_text())
    assert any(entry["file"] == "comparison_reconstructions.png" for entry in captions)

    # one variant's sub-section changes: only that variant's stage is out of date
    params["stage_two"]["concat"]["beta"] = 2.0
    write_params(root, params)
    status = json.loads(sh(["dvc", "status", "--json"], root).stdout)
    # (check_params reruns on any params change; its constant stamp leaves the other stages as they are)
    assert sorted(status) == ["check_params", "stage_two@concat"]


def test_the_stage_trains_conditioned_variants_on_k_pairs_per_x_and_the_others_on_x(tmp_path, monkeypatch):
    """In-process (no DVC, no MLflow): prepare, stage one, pairs with samples_per_x = 2, then the stage function of
    a Y-, a C- and an unconditioned variant, two steps each."""
    from stages import make_pairs, prepare, train_stage_one, train_stage_two
    from stages.common import validate_section

    monkeypatch.chdir(tmp_path)
    device = torch.device("cpu")
    raw = json.loads(json.dumps(TINY_PARAMS))
    raw["prepare"]["n_images"] = 96
    prepare.run(validate_section(prepare.PrepareParams, raw["prepare"], "prepare"), show_progress=False)
    one = validate_section(train_stage_one.StageOneParams, raw["stage_one"] | {"steps": 2}, "stage_one")
    train_stage_one.run(one, device, show_progress=False)
    pairs = validate_section(make_pairs.PairsParams, raw["pairs"] | {"samples_per_x": 2}, "pairs")
    assert make_pairs.run(pairs, device, show_progress=False)["pairs.count"] == 2 * 72  # 96 images, 25% held out
    section = raw["stage_two"] | {"steps": 2, "checkpoint_every": 2, "log_every": 1}
    params = validate_section(train_stage_two.StageTwoParams, section, "stage_two")
    for variant in ("msvae", "c_input", "z_first"):
        summary = train_stage_two.run(params, variant, device, show_progress=False)
        assert math.isfinite(summary[f"stage_two.{variant}.loss"]), variant
        model, extra = load_model(model_file(variant), "stage_two")
        assert extra["conditioning"] == model.conditioning and model.config.image_size == 64
        if model.conditioning == "none":  # trained on the 72 training images, each once per epoch
            assert model.config.dataset_size == 72 and model.config.code_dim == 4
    assert [r["step"] for r in json.loads(Path("plots/stage_two_curves_c_input.json").read_text())] == [1, 2]
