"""`dvc repro chain@pendulum` on small params: the MS-VAE appendix C chain trained in order by DVC (issue 9).

One run in a fresh git + DVC copy of the project (the declaration of params.yaml at a smaller size) checks what
the stage writes (the trained chain, the Figure 15/16 PNGs, the held-out z, flat metrics), that DVC reruns
nothing the second time, that the MLflow run records the device, and the measured checks of acceptance 3 on
the trained model: traversing L changes the period and leaves the decay nearly unchanged, traversing b the
reverse (the simulator's own numbers are the ground truth beside them). The sizes are the smallest at which
those checks hold with a margin (about 12 s of training on one thread); acceptance 2's |r| >= 0.9 is measured on the
full run (README), here only a clearly positive correlation is asserted.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3

import pytest
import yaml

from tests.conftest import PROJECT, TINY_PARAMS, make_tiny_repo, sh

pytestmark = pytest.mark.e2e


def small_params() -> dict:
    """TINY_PARAMS plus the project's pendulum declaration, shrunk."""
    chain = copy.deepcopy(yaml.safe_load((PROJECT / "params.yaml").read_text())["chains"]["pendulum"])
    chain["data"].update(series=1500, test_series=300)
    chain["training"].update(steps=1000, batch_size=128, learning_rate=0.002, checkpoint_every=500, log_every=100)
    for node in chain["nodes"].values():
        node["options"].update(hidden=[128, 128])
    chain["nodes"]["residual"]["options"].update(encoder_hidden=[128, 128])
    chain["nodes"]["residual"]["training"] = {"steps": 400}
    chain["evaluation"].update(held_out=200, traversal_points=3, neighbours=10)
    params = copy.deepcopy(TINY_PARAMS)
    params["chains"] = {"pendulum": chain}
    return params


@pytest.fixture(scope="module")
def pendulum_repo(tmp_path_factory):
    root = make_tiny_repo(tmp_path_factory.mktemp("chain") / "repo", small_params())
    first = sh(["dvc", "repro", "chain@pendulum"], root)
    second = sh(["dvc", "repro", "chain@pendulum"], root)
    return root, first, second


def test_dvc_repro_trains_the_pendulum_chain(pendulum_repo):
    root, first, second = pendulum_repo
    assert "Running stage 'chain@pendulum'" in first.stdout
    assert "Running stage" not in second.stdout  # nothing changed: nothing reruns
    out = root / "chains" / "pendulum"
    chain = json.loads((out / "nodes" / "chain.json").read_text())
    assert chain["order"] == ["length_to_y0", "damping_to_y1", "residual"]
    for name in ("traverse_length", "traverse_damping", "traverse_z", "z_vs_mass", "curves_residual"):
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    held_out = (out / "held_out_z.csv").read_text().splitlines()
    assert held_out[0] == "row,length,damping,mass,z_0" and len(held_out) == 1 + 200

    metrics = json.loads((root / "metrics" / "chain_pendulum.json").read_text())
    assert metrics["pendulum.held_out_sequences"] == 200
    assert metrics["pendulum.mass_abs_pearson_r.posterior_mean"] > 0.5
    for node in ("length_to_y0", "damping_to_y1", "residual"):  # trained from scratch, scored on held-out rows
        assert metrics[f"chain.{node}.resumed_from_step"] == 0 and math.isfinite(metrics[f"chain.{node}.test.nll"])

    with sqlite3.connect(root / "mlruns.db") as store:
        tags = dict(
            store.execute(
                "select t.key, t.value from tags t join runs r on r.run_uuid = t.run_uuid "
                "where r.name = 'chain@pendulum' and r.status = 'FINISHED'"
            ).fetchall()
        )
    assert tags["device"] == "cpu" and tags["chain"] == "pendulum"


def test_traversals_change_period_and_decay_apart(pendulum_repo):
    """Acceptance 3 measured: L moves the period, not the decay; b moves the decay, not the period."""
    root, _, _ = pendulum_repo
    metrics = json.loads((root / "metrics" / "chain_pendulum.json").read_text())

    def change(factor: str, quantity: str, source: str) -> float:
        return metrics[f"pendulum.traverse_{factor}.{quantity}_relative_change.{source}"]

    for source in ("simulator", "model"):  # changes relative to the traversal's mean: (last - first) / mean
        assert change("length", "period", source) > 0.3  # sqrt(3) = 1.73 times longer from L = 1 to 3
        assert abs(change("length", "period", source)) > 3 * abs(change("length", "decay", source))
        assert change("damping", "decay", source) > 0.5  # b / 2m: 20 times faster from b = 0.1 to 2
        assert abs(change("damping", "decay", source)) > 10 * abs(change("damping", "period", source))
    assert abs(change("length", "decay", "simulator")) < 0.01 and abs(change("damping", "period", "simulator")) < 0.02
