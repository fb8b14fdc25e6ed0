"""Node kinds at tiny sizes, against closed forms computed independently (scipy, torch.distributions), and the
image two-stage pipeline declared as a chain of registry models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch.distributions import Normal, kl_divergence

from multistage.chains import (
    ChainError,
    NodeSpec,
    VariableTable,
    chain_from_mapping,
    load_chain,
    save_chain,
    train_chain,
    with_training,
)
from multistage.chains.nodes import FiLM, build_node

torch.set_num_threads(1)


def arrays(rng, shapes: dict, n: int) -> dict[str, np.ndarray]:
    """Random float32 variables with non-trivial means and scales per element."""
    return {
        name: (rng.normal(size=(n, *shape)) * rng.uniform(0.2, 3.0, shape) + rng.uniform(-2, 2, shape)).astype(
            np.float32
        )
        for name, shape in shapes.items()
    }


def standardise(values: np.ndarray) -> np.ndarray:
    """One mean and one standard deviation per variable (over rows and elements)."""
    flat = values.reshape(len(values), -1)
    return (flat - flat.mean()) / flat.std()


def test_gaussian_mlp_nll_is_the_closed_form_in_the_output_units():
    rng = np.random.default_rng(0)
    shapes = {"a": (1,), "b": (3,), "v": (4,)}
    data = arrays(rng, shapes, 64)
    node = build_node(NodeSpec("g", "gaussian_mlp", output="v", inputs=("a", "b"), options={"hidden": [8]}), shapes, 64)
    node.prepare(data)
    with torch.no_grad():
        node.log_variance.copy_(torch.tensor([-2.0, -0.5, 0.0, 1.0]))
    values = {k: torch.from_numpy(v) for k, v in data.items()}
    loss, logs = node.objective(values)

    # independently: standardise with numpy, run the mean network, undo the scaling, score with scipy
    inputs = np.concatenate([standardise(data["a"]), standardise(data["b"])], axis=1)
    with torch.no_grad():
        mu = node.mean_network(torch.from_numpy(inputs.astype(np.float32))).double().numpy()
    v_mean, v_std = data["v"].astype(np.float64).mean(), data["v"].astype(np.float64).std()
    sigma = np.exp(0.5 * np.array([-2.0, -0.5, 0.0, 1.0])) * v_std
    expected = -norm.logpdf(data["v"], mu * v_std + v_mean, sigma).sum(axis=1).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-4)
    assert logs["nll"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    mean, log_variance = node.predict(values)
    assert np.allclose(mean.detach().numpy(), mu * v_std + v_mean, atol=1e-4)
    assert np.allclose(np.exp(0.5 * log_variance.detach().numpy()), sigma, rtol=1e-5)


def test_gaussian_mlp_recovers_the_noise_of_a_known_model(tmp_path):
    """v = 2 a + 1 + 0.3 eps: the learned standard deviation is 0.3, the held-out NLL 1/2 log(2 pi e 0.09)."""
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (3000, 1)).astype(np.float32)
    v = (2 * a + 1 + 0.3 * rng.normal(size=a.shape)).astype(np.float32)
    table = VariableTable({"a": a, "v": v}, (np.arange(3000) >= 2500).astype(np.int8))
    spec = with_training(
        chain_from_mapping(
            "line", {"fit": {"kind": "gaussian_mlp", "inputs": ["a"], "output": "v", "options": {"hidden": [16]}}}
        ),
        {"steps": 400, "batch_size": 128, "learning_rate": 0.01, "log_every": 100},
    )
    chain = train_chain(spec, table, tmp_path, show_progress=False)
    node = chain.nodes["fit"]
    sigma = float(torch.exp(0.5 * node.log_variance.detach()) * node.output_scaler.scale)
    assert sigma == pytest.approx(0.3, rel=0.1)
    assert chain.reports["fit"].test_logs["nll"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 0.09), abs=0.08)


def test_residual_vae_objective_is_gaussian_nll_plus_beta_kl():
    rng = np.random.default_rng(2)
    shapes = {"y1": (5,), "theta": (5,)}
    data = arrays(rng, shapes, 32)
    options = {"latent_dim": 2, "beta": 0.5, "hidden": [8], "encoder_hidden": [8], "film_hidden": 4}
    node = build_node(NodeSpec("r", "residual_vae", output="theta", inputs=("y1",), options=options), shapes, 32)
    node.prepare(data)
    values = {k: torch.from_numpy(v) for k, v in data.items()}
    residual = (data["theta"] - data["y1"]).astype(np.float64)

    # at initialisation the head is zero: the mean is y1 + the mean residual whatever z, the variance that of r
    _, logs = node.objective(values)
    mu, logvar = node.encode(values)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=1).mean().item()
    nll = -norm.logpdf(data["theta"], data["y1"] + residual.mean(), residual.std()).sum(axis=1).mean()
    assert logs["kl"] == pytest.approx(kl, rel=1e-5)
    assert logs["nll"] == pytest.approx(nll, rel=1e-5, abs=1e-4)
    assert logs["loss"] == pytest.approx(nll + 0.5 * kl, rel=1e-5, abs=1e-4)

    # with a live head and FiLM, the reconstruction is scored at z = mu + sigma eps, eps the objective's own draw
    with torch.no_grad():
        for parameter in node.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    torch.manual_seed(7)
    loss, logs = node.objective(values)
    torch.manual_seed(7)
    mu, logvar = node.encode(values)
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    mean = node.generate(values, z.detach()).numpy()
    sigma = np.exp(0.5 * node.log_variance.detach().numpy()) * residual.std()
    nll = -norm.logpdf(data["theta"], mean, sigma).sum(axis=1).mean()
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=1).mean().item()
    assert loss.item() == pytest.approx(nll + 0.5 * kl, rel=1e-4, abs=1e-3)
    assert not torch.allclose(node.generate(values, torch.zeros(32, 2)), node.generate(values, torch.ones(32, 2)))
    assert node.kl_weight(None) == 0.5


def test_film_starts_as_the_identity_and_residual_needs_matching_shapes():
    h, z = torch.randn(4, 6), torch.randn(4, 2)
    assert torch.equal(FiLM(6, 2, hidden=3)(h, z), h)
    with pytest.raises(ChainError) as caught:
        build_node(NodeSpec("r", "residual_vae", output="theta", inputs=("y1",)), {"y1": (5,), "theta": (6,)}, 8)
    assert caught.value.key == "nodes.r.options.residual"
    node = build_node(
        NodeSpec("r", "residual_vae", output="theta", inputs=("y1",), options={"residual": False, "warmup_steps": 4}),
        {"y1": (5,), "theta": (6,)},
        8,
    )
    assert node.kl_weight(0) == 0.25 and node.kl_weight(3) == 1.0


def test_the_image_two_stage_pipeline_is_a_chain_of_registry_models(tmp_path):
    """MS-VAE sec. 3.2 as a declaration: a stage-one node (x -> c, y = decode_mean(c)) and a stage-two node
    (y, z) -> x, declared in the wrong order, trained in the right one through the one runner."""
    rng = np.random.default_rng(3)
    images = np.zeros((24, 1, 32, 32), dtype=np.uint8)
    for i, (row, column) in enumerate(rng.integers(0, 24, (24, 2))):
        images[i, 0, row : row + 8, column : column + 8] = 255
    table = VariableTable({"x": images}, (np.arange(24) >= 20).astype(np.int8))
    nodes = {
        "stage_two": {
            "kind": "stage_two",
            "inputs": ["y"],
            "output": "x",
            "options": {"model": "msvae", "residual_dim": 2, "base_channels": 4, "adain_hidden": 8},
        },
        "stage_one": {
            "kind": "stage_one",
            "output": "y",
            "options": {"model": "betavae", "observed": "x", "code": "c", "latent_dim": 3, "warmup_steps": 0},
        },
    }
    spec = with_training(chain_from_mapping("image", nodes), {"steps": 2, "batch_size": 8, "log_every": 1})
    chain = train_chain(spec, table, tmp_path / "checkpoints", show_progress=False)
    assert chain.order == ["stage_one", "stage_two"]
    assert {name: len(report.result.history) for name, report in chain.reports.items()} == {
        "stage_one": 2,
        "stage_two": 2,
    }
    assert (tmp_path / "checkpoints" / "stage_two.pt").exists()
    assert all(math.isfinite(value) for report in chain.reports.values() for value in report.test_logs.values())

    # the paired set: every row got a code c ~ q(c|x) and y = E[p(y|c)] of the trained stage-one model
    assert table.values["c"].shape == (24, 3) and table.values["y"].shape == (24, 1, 32, 32)
    with torch.no_grad():
        y = chain.nodes["stage_one"].model.decode_mean(torch.from_numpy(table.values["c"])).numpy()
    assert np.abs(table.values["y"] - y).max() < 1e-3  # stored as float16 probabilities

    latents = {"stage_one": torch.randn(3, 3), "stage_two": torch.randn(3, 2)}
    generated = chain.generate({}, latents)
    assert generated["y"].shape == generated["x"].shape == (3, 1, 32, 32)
    assert 0.0 <= float(generated["x"].min()) and float(generated["x"].max()) <= 1.0
    inferred = chain.infer_latents(table.tensors(["x", "y"], np.arange(4)))
    assert inferred["stage_one"].shape == (4, 3) and inferred["stage_two"].shape == (4, 2)

    save_chain(chain, tmp_path / "saved")
    loaded = load_chain(tmp_path / "saved")
    assert loaded.order == chain.order
    assert torch.allclose(loaded.generate({}, latents)["x"], generated["x"], atol=1e-6)
