"""The sweep's grid, its point overrides and its table (pipeline/sweep.py), without running a pipeline: the
deployment test runs the real thing."""

from __future__ import annotations

import csv
import json

import pytest

from pipeline import sweep
from stages.common import ParamsError, apply_overrides
from tests.conftest import TINY_PARAMS


def test_grid_is_every_combination_and_missing_axes_keep_the_params():
    points = sweep.grid(TINY_PARAMS, betas=[4, 1], seeds=[0, 1])
    model = TINY_PARAMS["stage_one"]["model"]
    assert points == [{"model": model, "beta": b, "seed": s} for s in (0, 1) for b in (1.0, 4.0)]
    (only,) = sweep.grid(TINY_PARAMS, seeds=[3])
    key = sweep.beta_key(model, TINY_PARAMS["stage_one"])
    assert only == {"model": model, "beta": sweep.apply_key(TINY_PARAMS, key), "seed": 3}
    with pytest.raises(ValueError, match="at least one"):
        sweep.grid(TINY_PARAMS)


def test_point_overrides_reach_the_model_s_own_beta():
    point = {"model": TINY_PARAMS["stage_one"]["model"], "beta": 8.0, "seed": 2}
    overrides = sweep.point_params(point, TINY_PARAMS)
    params = apply_overrides(TINY_PARAMS, overrides)
    assert sweep.point_of(params) == point
    assert sweep.point_label(point) == f"{point['model']}-beta8-seed2"
    assert TINY_PARAMS["stage_one"]["seed"] == 0  # the original is left as it was


def test_a_model_without_beta_is_an_error_naming_those_with_one():
    stage_one = {
        "model": "jointvae",
        "jointvae": {"gamma_z": 30.0},
        "betavae": {"beta": 4.0},
        "betatcvae": {"beta": 6.0},
    }
    with pytest.raises(ParamsError, match="'jointvae' has no 'beta'.*betatcvae, betavae"):
        sweep.beta_key("jointvae", stage_one)
    assert sweep.beta_key("betavae", stage_one) == "stage_one.betavae.beta"
    assert sweep.beta_key("betatcvae", {"model": "betatcvae", "beta": 2.0}) == "stage_one.beta"  # a flat section


def test_table_files_and_plot(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = {key: float(i) for i, key in enumerate(sweep.COLUMNS.values())}
    rows = [
        sweep.table_row(
            {"model": "betatcvae", "beta": beta, "seed": 0}, scores | {"x.mig.histogram20": mig}, state="Completed"
        )
        for beta, mig in ((4.0, 0.3), (1.0, 0.1), (1.0, 0.2))
    ]
    sweep.write_table(rows)
    written = json.loads((tmp_path / "sweep" / "results.json").read_text())
    assert [(r["beta"], r["mig_x"]) for r in written] == [(1.0, 0.1), (1.0, 0.2), (4.0, 0.3)]
    assert written[0]["frechet_x_hat"] == scores["frechet.factor_classifier.x_hat"]
    with open(tmp_path / "sweep" / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    png = (tmp_path / "sweep" / "mig_vs_beta.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
    table = sweep.format_table(written)
    assert table.splitlines()[0].split()[:4] == ["model", "beta", "seed", "state"] and len(table.splitlines()) == 4
