"""The dSprites benchmark's settings: the profile is disentanglement_lib's, each model's leaves are the study's."""

from __future__ import annotations

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
