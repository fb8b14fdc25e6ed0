"""The dSprites benchmark's settings: the profile is disentanglement_lib's, each model's leaves are the study's."""

from __future__ import annotations

import json

import pytest

from bench import benchmark_dsprites as benchmark


def test_the_profile_holds_the_published_setting_and_each_model_its_grid_value():
    params = benchmark.point_params("dipvae_i", 2)
    prepare, stage_one, evaluate = params["prepare"], params["stage_one"], params["evaluate"]
    assert prepare["dataset"] == "dsprites" and prepare["dsprites"]["variant"] == "binary"
    assert prepare["image_size"] == 64 and prepare["n_images"] is None
    assert (stage_one["latent_dim"], stage_one["batch_size"], stage_one["learning_rate"]) == (10, 64, 1e-4)
    assert stage_one["steps"] == 300000 and stage_one["seed"] == 2
    # DIP-VAE-I: lambda_d = 10 lambda_od; DIP-VAE-II: lambda_d = lambda_od
    assert stage_one["model"] == "dipvae" and stage_one["dipvae"]["variant"] == "i"
    assert stage_one["dipvae"]["lambda_d"] == 10 * stage_one["dipvae"]["lambda_od"]
    second = benchmark.point_params("dipvae_ii", 0)["stage_one"]["dipvae"]
    assert second["variant"] == "ii" and second["lambda_d"] == second["lambda_od"]
    assert evaluate["mig_bins"] == 20 and benchmark.MIG_POINTS == 10000  # MIG on 10,000 points with 20 bins
    assert evaluate["sap"]["protocol"] == "disentanglement_lib"
    assert evaluate["dci"]["regressor"] == "gbt" and evaluate["dci"]["gbt_estimators"] == 100
    assert (evaluate["factorvae_score"]["train_votes"], evaluate["factorvae_score"]["eval_votes"]) == (10000, 5000)
    assert {benchmark.point_params(m, 0)["stage_one"]["model"] for m in benchmark.MODELS} == {
        "betavae",
        "annealedvae",
        "betatcvae",
        "dipvae",
        "factorvae",
    }


def test_bad_points_are_one_named_error(tmp_path):
    with pytest.raises(benchmark.BenchmarkError, match="unknown model 'vae'.*betatcvae"):
        benchmark.run_point("vae", 0, steps=1, out_dir=tmp_path)
    with pytest.raises(benchmark.BenchmarkError, match="exactly one of cpu_minutes"):
        benchmark.run_point("betatcvae", 0, cpu_minutes=1.0, steps=10, out_dir=tmp_path)
    with pytest.raises(benchmark.BenchmarkError, match="no benchmark points"):
        benchmark.merge(tmp_path / "empty", tmp_path / "s.json", tmp_path / "s.md", tmp_path / "f.png")
    assert not list(tmp_path.iterdir())


def record(model: str, seed: int, mig: float, budget: float | None = 4.0) -> dict:
    factors = ("shape", "scale", "orientation", "posX", "posY")
    per_factor = {f"mig.{f}": mig * (i + 1) / 5 for i, f in enumerate(factors)}
    scores = {metric: mig for metric in benchmark.METRICS} | dict(sorted(per_factor.items()))  # as the JSON keeps it
    return {
        "model": model,
        "label": benchmark.LABELS[model],
        "seed": seed,
        "steps": 1000,
        "cpu_minutes_budget": budget,
        "cpu_minutes": 4.1,
        "threads": 1,
        "factor_images": 100000,
        "overrides": {"stage_one.learning_rate": 0.001},
        "protocol": {"dci": {"gbt_estimators": 10}, "sap": {}, "factorvae_score": {}},
        "stage_one": {"learning_rate": 0.001},
        "scores": scores,
    }


def test_merge_gives_medians_ranges_and_per_factor_mig_and_refuses_mixed_points(tmp_path):
    paths = (tmp_path / "s.json", tmp_path / "s.md", tmp_path / "f.png")
    records = [record("betatcvae", 0, 0.1), record("betatcvae", 1, 0.3), record("betatcvae", 2, 0.2)]
    table = benchmark.merge(tmp_path, *paths, records=records + [record("factorvae", 0, 0.05)])
    summary = json.loads(paths[0].read_text())
    assert summary["betatcvae.mig_median"] == pytest.approx(0.2)
    assert summary["betatcvae.mig_seeds"] == [0.1, 0.3, 0.2] and summary["betatcvae.mig_range"] == [0.1, 0.3]
    assert summary["betatcvae.per_factor_mig"]["posY"] == pytest.approx(0.2)  # median of 0.1, 0.3, 0.2
    assert summary["betatcvae.factors_captured_median"] == 3  # factors at per-factor MIG >= 0.1: 1, 4 and 3
    assert "| beta-TCVAE | 3 | 1000 | 4.1 | 0.200 (0.100-0.300) |" in table and "| FactorVAE | 1 |" in table
    # per-factor medians in the header's order (shape / scale / orientation / posX / posY), whatever the key order
    assert table.splitlines()[2].endswith("| 0.04 / 0.08 / 0.12 / 0.16 / 0.20 |")
    assert paths[2].stat().st_size > 10000
    with pytest.raises(benchmark.BenchmarkError, match="betatcvae.*run differently"):
        benchmark.merge(tmp_path, *paths, records=records + [record("betatcvae", 3, 0.2, budget=8.0)])


def test_merge_of_another_folder_writes_beside_it(tmp_path):
    folder = tmp_path / "lever"
    folder.mkdir()
    for seed, mig in ((0, 0.1), (1, 0.3)):
        (folder / f"betatcvae-s{seed}.json").write_text(json.dumps(record("betatcvae", seed, mig)))
    assert benchmark.main(["--merge", "--out-dir", str(folder)]) == 0
    summary = json.loads((tmp_path / "lever.json").read_text())
    assert summary["betatcvae.mig_median"] == pytest.approx(0.2)
    assert (tmp_path / "lever.md").read_text().startswith("| model |") and (tmp_path / "lever.png").is_file()
