"""`dvc repro` on every procedural and bundled dataset, on tiny params (issue 3, acceptance 1).

One tiny git + DVC repository serves every case (its MLflow store is created once); each case points
``prepare.dataset`` at its dataset and runs `dvc repro report`, so every image dataset goes through the whole chain:
prepare, stage one, pairs, stage two (MS-VAE), evaluate and the report. The pendulum (float32 series 1 x 100) runs
prepare and stage one (its series MLP): the convolutional stage two cannot take series, and its own hierarchy is the
`chain@pendulum` stage (tests/integration/test_chain_pendulum.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_PARAMS, make_tiny_repo, sh, write_params

pytestmark = pytest.mark.e2e

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# case -> (prepare overrides, dvc repro target, expected data shape after the first axis, factor count)
CASES = {
    "dsprites-binary": ({"dataset": "dsprites", "dsprites": {"variant": "binary"}}, "report", (1, 64, 64), 5),
    "dsprites-textured": ({"dataset": "dsprites", "dsprites": {"variant": "textured"}}, "report", (3, 64, 64), 5),
    "dsprites-color": ({"dataset": "dsprites", "dsprites": {"variant": "color"}}, "report", (3, 64, 64), 5),
    "dsprites-noisy": ({"dataset": "dsprites", "dsprites": {"variant": "noisy"}}, "report", (3, 64, 64), 5),
    "dsprites-scream": ({"dataset": "dsprites", "dsprites": {"variant": "scream"}}, "report", (3, 64, 64), 5),
    "pendulum": (
        {"dataset": "pendulum", "pendulum": {"length_steps": 8, "damping_steps": 8, "mass_steps": 8}},
        "stage_one",
        (1, 100),
        3,
    ),
    "digits": ({"dataset": "digits"}, "report", (1, 32, 32), 1),
    "mnist5k": ({"dataset": "mnist5k"}, "report", (1, 32, 32), 1),
    "fashion_mnist": ({"dataset": "fashion_mnist"}, "report", (1, 32, 32), 1),
}
CHAIN = ["check_params", "prepare", "stage_one", "pairs", "stage_two@msvae", "evaluate", "report"]


def ran_stages(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def datasets_repo(tmp_path_factory) -> Path:
    """The project's code and dvc.yaml in one fresh git + DVC repository shared by the cases below."""
    return make_tiny_repo(tmp_path_factory.mktemp("datasets") / "repo")


def tiny_params(overrides: dict) -> dict:
    params = json.loads(json.dumps(TINY_PARAMS))
    params["prepare"] = {"n_images": 160, "seed": 0, "test_fraction": 0.25, **overrides}
    params["stage_one"].update(steps=4, checkpoint_every=4, log_every=4)
    params["stage_two"].update(steps=4, checkpoint_every=4, log_every=4)
    # the core scores only (MIG, Fréchet distance, M1..M4): the other metrics have their own tests, and here the point
    # is that each dataset flows through every stage
    params["evaluate"].update(eval_images=40, batch_size=20, figure_images=2, metrics=[])
    params["evaluate"]["classifier"].update(steps=4, train_images=100)
    return params


@pytest.mark.parametrize("case", list(CASES))
def test_dvc_repro_runs_on_each_dataset(datasets_repo, case):
    overrides, target, shape, n_factors = CASES[case]
    if overrides["dataset"] == "fashion_mnist" and not FASHION_MNIST.is_dir():
        pytest.skip(f"Fashion-MNIST is not installed under {FASHION_MNIST} (make fashion-mnist)")
    write_params(datasets_repo, tiny_params(overrides))
    result = sh(["dvc", "repro", target], datasets_repo)
    assert ran_stages(result.stdout) == CHAIN[: CHAIN.index(target) + 1]

    meta = json.loads((datasets_repo / "data" / "prepared" / "meta.json").read_text())
    assert meta["dataset"] == overrides["dataset"]
    if "dsprites" in overrides:
        assert meta["variant"] == overrides["dsprites"]["variant"]
    assert tuple(meta["image_shape"]) == shape and len(meta["factor_names"]) == n_factors
    images = np.load(datasets_repo / "data" / "prepared" / "images.npy", mmap_mode="r")
    assert images.shape == (160, *shape)
    assert images.dtype == (np.float32 if len(shape) == 2 else np.uint8)
    assert float(images.max()) > float(images.min())  # not blank

    if target != "prepare":
        scores = json.loads((datasets_repo / "metrics" / "stage_one.json").read_text())
        assert scores and all(value == value for value in scores.values() if isinstance(value, float))  # no NaN
    if target == "report":
        assert (datasets_repo / "report" / "index.html").is_file()
        evaluation = json.loads((datasets_repo / "metrics" / "evaluate.json").read_text())
        assert evaluation["x.mig.histogram20"] == evaluation["x.mig.histogram20"]  # present, not NaN
        # the same params again: nothing reruns
        assert ran_stages(sh(["dvc", "repro", target], datasets_repo).stdout) == []
