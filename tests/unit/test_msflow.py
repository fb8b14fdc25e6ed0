"""MS-FLOW (MS-VAE appendix D): the coupling flow is exactly invertible with the right log-determinant, the
log-likelihood has a known answer at initialisation, the mixture density is scikit-learn's, and the model trains.
Tiny and single-threaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multistage.models import registry
from multistage.models.files import load_model, save_model
from multistage.models.stage_two.base import ConfigError
from multistage.models.stage_two.msflow import LOG_256, MSFlow, MSFlowConfig, dequantise
from multistage.nn.coupling import ConditionalAffineCoupling, ConditionalCouplingFlow

torch.set_num_threads(1)


def randomise(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Every parameter drawn at random (the zero-initialised last layers would make the flow the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * std)


def tiny_flow(**options) -> MSFlow:
    torch.manual_seed(0)
    return MSFlow(
        MSFlowConfig(**({"image_channels": 1, "image_size": 3, "coupling_layers": 4, "hidden_units": 8} | options))
    )


def test_coupling_layer_is_invertible_and_its_log_det_is_the_jacobians():
    generator = torch.Generator().manual_seed(1)
    layer = ConditionalAffineCoupling(
        torch.tensor([0, 3, 4]), torch.tensor([1, 2, 5]), condition_features=2, hidden=6
    ).double()
    randomise(layer)
    w, h = torch.randn(4, 6, generator=generator, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    u, log_det = layer(w, h)
    assert torch.equal(u[:, [0, 3, 4]], w[:, [0, 3, 4]]) and not torch.allclose(u[:, [1, 2, 5]], w[:, [1, 2, 5]])
    assert torch.allclose(layer.inverse(u, h), w, atol=1e-12)
    for row in range(4):
        jacobian = torch.autograd.functional.jacobian(lambda v, row=row: layer(v[None], h[row : row + 1])[0][0], w[row])
        assert log_det[row].item() == pytest.approx(torch.linalg.slogdet(jacobian)[1].item(), abs=1e-10)


def test_flow_changes_every_dimension_and_starts_as_the_identity():
    flow = ConditionalCouplingFlow(7, condition_features=3, layers=2, hidden=5)
    first, second = flow.couplings
    assert torch.equal(first.kept, second.changed) and torch.equal(first.changed, second.kept)
    assert sorted(torch.cat([first.kept, first.changed]).tolist()) == list(range(7))
    w = torch.randn(3, 7)
    u, log_det = flow(w, torch.randn(3, 3))
    assert torch.equal(u, w) and torch.equal(log_det, torch.zeros(3))


def test_whole_model_density_is_the_change_of_variables_of_its_map():
    """log p(v|y) = log N(z; 0, I) + log|det dz/dv|, the determinant taken by autograd over the whole map (logit,
    conditional elementwise layer, couplings) on a 3 x 3 image; and generate inverts it exactly."""
    model = tiny_flow(data_init=False).double()
    randomise(model)
    generator = torch.Generator().manual_seed(2)
    v = torch.rand(2, 1, 3, 3, generator=generator, dtype=torch.float64)
    y = torch.rand(2, 1, 3, 3, generator=generator, dtype=torch.float64)
    z, _ = model.latent_and_log_det(v, y)
    for row in range(2):
        jacobian = torch.autograd.functional.jacobian(
            lambda flat, row=row: model.latent_and_log_det(flat.reshape(1, 1, 3, 3), y[row : row + 1])[0][0],
            v[row].reshape(-1),
        )
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(z[row]).sum() + torch.linalg.slogdet(jacobian)[1]
        assert model.log_density(v[row : row + 1], y[row : row + 1]).item() == pytest.approx(expected.item(), abs=1e-9)
    assert torch.allclose(model.generate(y, z), v, atol=1e-12)


def test_log_likelihood_at_initialisation_is_the_logit_space_standard_normal():
    """Every parameter zero: p(v|y) is N(0, I) in w = logit(alpha + (1 - 2 alpha) v), whatever y; the 8-bit
    log-likelihood subtracts D log 256 (the dequantisation correction)."""
    model = tiny_flow(data_init=False, logit_alpha=0.05)
    x = torch.tensor([0, 17, 128, 255, 3, 90, 200, 64, 1], dtype=torch.uint8).reshape(1, 1, 3, 3)
    noise = torch.full((1, 1, 3, 3), 0.25)
    v = (x.double() + 0.25) / 256.0
    s = 0.05 + 0.9 * v
    w = torch.log(s / (1 - s))
    expected = (
        torch.distributions.Normal(0.0, 1.0).log_prob(w).sum()
        + torch.log(0.9 / (s * (1 - s))).sum()
        - 9 * math.log(256.0)
    )
    for y in (torch.zeros(1, 1, 3, 3), torch.rand(1, 1, 3, 3)):
        assert model.log_likelihood(x, y, noise=noise).item() == pytest.approx(expected.item(), abs=1e-3)
    assert model.log_likelihood(x.float() / 255, y, noise=noise).item() == pytest.approx(expected.item(), abs=1e-3)


def test_mixture_density_is_sklearns_and_the_mixture_plus_flow_density_is_exact():
    from sklearn.datasets import load_digits

    images = torch.from_numpy(np.rint(load_digits().images[:300] * 255 / 16).astype(np.uint8))[:, None]
    model = tiny_flow(image_size=8, mixture_components=3, hidden_units=4, coupling_layers=2)
    sklearn_mixture = model.fit_mixture(images[:200], seed=0)
    noise = torch.rand(images[200:].shape, generator=torch.Generator().manual_seed(3))
    v = dequantise(images[200:], noise).reshape(100, -1)
    ours = model.mixture_log_likelihood(images[200:], flow=False, noise=noise)
    expected = torch.from_numpy(sklearn_mixture.score_samples(v.double().numpy())) - 64 * LOG_256
    assert torch.allclose(ours, expected, atol=1e-8, rtol=0)
    assert np.allclose(model.mixture.means.numpy(), sklearn_mixture.means_)

    # mixture + flow: log sum_k pi_k p_flow(v | mu_k), the flow evaluated once per component by hand
    randomise(model.flow, std=0.05)
    by_hand = torch.stack(
        [
            model.mixture.log_weights[k].float()
            + model.log_likelihood(
                images[200:], model.mixture.means[k].float().reshape(1, 1, 8, 8).expand(100, -1, -1, -1), noise=noise
            )
            for k in range(3)
        ],
        dim=1,
    )
    assert torch.allclose(
        model.mixture_log_likelihood(images[200:], noise=noise).float(), torch.logsumexp(by_hand, dim=1), atol=1e-3
    )

    # the paired y: a component mean ("mean") or a draw around it ("sample"), shaped like x
    y = model.mixture_condition(images[:5], "mean", torch.Generator().manual_seed(0))
    means = model.mixture.means.float().reshape(3, 1, 8, 8).clamp(0, 1)
    assert all(any(torch.equal(row, mean) for mean in means) for row in y)
    y_sample = model.mixture_condition(images[:5], "sample", torch.Generator().manual_seed(0))
    assert y_sample.shape == (5, 1, 8, 8) and not torch.equal(y_sample, y)


def test_training_raises_the_likelihood_and_the_model_file_round_trips(tmp_path):
    from sklearn.datasets import load_digits

    images = torch.from_numpy(np.rint(load_digits().images[:256] * 255 / 16).astype(np.uint8))[:, None]
    model = registry.build(
        "stage_two", "msflow", image_channels=1, image_size=8, coupling_layers=2, hidden_units=32, mixture_components=2
    )
    model.fit_mixture(images)
    generator = torch.Generator().manual_seed(0)
    y = model.mixture_condition(images, "mean", generator)
    noise = torch.rand(images.shape, generator=generator)
    model.eval()
    before = model.log_likelihood(images, y, noise=noise).mean().item()
    model.train()
    optimiser = torch.optim.Adam(model.optimised_parameters(), lr=3e-3)
    for step in range(40):
        batch = torch.randint(0, 256, (64,), generator=generator)
        loss, logs = model.objective(images[batch], y[batch], step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert bool(model.elementwise.initialised)
    assert logs["bits_per_dim"] == pytest.approx(logs["loss"] / (64 * math.log(2)), rel=1e-5)
    model.eval()
    after = model.log_likelihood(images, y, noise=noise).mean().item()
    assert after > before + 50, (before, after)

    # the residual is exact: generate(y, infer_residual(x, y)) is x's midpoint dequantisation
    z = model.infer_residual(images[:4], y[:4])
    assert z.shape == (4, model.residual_dim) == (4, 64)
    assert torch.allclose(model.reconstruct(images[:4], y[:4]), (images[:4].float() + 0.5) / 256, atol=1e-4)

    save_model(tmp_path / "model.pt", "stage_two", "msflow", model)
    loaded, _ = load_model(tmp_path / "model.pt", "stage_two")
    assert torch.allclose(
        loaded.mixture_log_likelihood(images[:8], noise=noise[:8]),
        model.mixture_log_likelihood(images[:8], noise=noise[:8]),
    )


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="logit_alpha"):
        MSFlowConfig(image_size=8, logit_alpha=0.5)
    with pytest.raises(ConfigError, match="coupling_layers"):
        MSFlowConfig(image_size=8, coupling_layers=0)
    with pytest.raises(RuntimeError, match="no fitted mixture"):
        tiny_flow().mixture_log_likelihood(torch.zeros(1, 1, 3, 3))
