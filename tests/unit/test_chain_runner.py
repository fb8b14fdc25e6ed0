"""The runner's checkpoints: a rerun resumes every node; a changed node retrains itself and exactly the nodes
that train on what it derives."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from multistage.chains import VariableTable, chain_from_mapping, load_chain, save_chain, train_chain, with_training
from multistage.chains.pendulum import PendulumTableOptions, simulate_table

torch.set_num_threads(1)
LOOP = {"steps": 3, "batch_size": 8, "log_every": 1, "checkpoint_every": 1}


def started(chain) -> dict[str, int]:
    return {name: report.result.start_step for name, report in chain.reports.items()}


def with_option(spec, node: str, **options):
    nodes = tuple(dataclasses.replace(n, options={**n.options, **options}) if n.name == node else n for n in spec.nodes)
    return dataclasses.replace(spec, nodes=nodes)


def test_pendulum_chain_resumes_and_retrains_only_the_changed_node(tmp_path):
    table = simulate_table(PendulumTableOptions(series=60, test_series=10))
    nodes = {
        "length_to_y0": {"kind": "gaussian_mlp", "inputs": ["length"], "output": "y0", "options": {"hidden": [8]}},
        "damping_to_y1": {
            "kind": "gaussian_mlp",
            "inputs": ["damping", "y0"],
            "output": "y1",
            "options": {"hidden": [8]},
        },
        "residual": {
            "kind": "residual_vae",
            "inputs": ["y1"],
            "output": "theta",
            "options": {"hidden": [8], "encoder_hidden": [8], "film_hidden": 4},
        },
    }
    spec = with_training(chain_from_mapping("pendulum", nodes), LOOP)
    first = train_chain(spec, table, tmp_path / "checkpoints", show_progress=False)
    assert started(first) == {"length_to_y0": 0, "damping_to_y1": 0, "residual": 0}
    again = train_chain(spec, table, tmp_path / "checkpoints", show_progress=False)
    assert started(again) == {"length_to_y0": 3, "damping_to_y1": 3, "residual": 3}

    roots = {"length": torch.tensor([[1.5], [2.5]]), "damping": torch.tensor([[0.3], [1.2]])}
    latents = {"residual": torch.tensor([[0.5], [-1.0]])}
    assert torch.equal(first.generate(roots, latents)["theta"], again.generate(roots, latents)["theta"])

    # the nodes after length_to_y0 train on observed y0 and y1, not on what it generates: they stay
    changed = train_chain(
        with_option(spec, "length_to_y0", hidden=[16]), table, tmp_path / "checkpoints", show_progress=False
    )
    assert started(changed) == {"length_to_y0": 0, "damping_to_y1": 3, "residual": 3}
    assert (tmp_path / "checkpoints" / "length_to_y0.pt.stale").exists()

    save_chain(changed, tmp_path / "saved")
    loaded = load_chain(tmp_path / "saved")
    assert torch.equal(loaded.generate(roots, latents)["theta"], changed.generate(roots, latents)["theta"])


def test_a_changed_stage_one_retrains_the_stage_two_that_reads_its_y(tmp_path):
    images = (np.random.default_rng(0).random((16, 1, 32, 32)) > 0.7).astype(np.uint8) * 255
    nodes = {
        "stage_one": {
            "kind": "stage_one",
            "output": "y",
            "options": {"model": "betavae", "observed": "x", "latent_dim": 2, "warmup_steps": 0},
        },
        "stage_two": {
            "kind": "stage_two",
            "inputs": ["y"],
            "output": "x",
            "options": {"model": "msvae", "residual_dim": 1, "base_channels": 4, "adain_hidden": 4},
        },
    }
    spec = with_training(chain_from_mapping("image", nodes), {**LOOP, "steps": 1})

    def run(chain_spec):
        table = VariableTable({"x": images}, (np.arange(16) >= 12).astype(np.int8))
        return started(train_chain(chain_spec, table, tmp_path, show_progress=False))

    assert run(spec) == {"stage_one": 0, "stage_two": 0}
    assert run(spec) == {"stage_one": 1, "stage_two": 1}
    assert run(with_option(spec, "stage_one", beta=4.0)) == {"stage_one": 0, "stage_two": 0}
