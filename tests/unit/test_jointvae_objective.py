"""JointVAE's loss terms (paper eq. 7, sec. 3.2) for one training step, against an independent computation in
numpy/scipy (float64) from the same encoder outputs and uniforms: the reconstruction term summed over pixels, the
analytic Gaussian KL per unit, the analytic KL of the discrete code against the uniform prior, the capacities at that
step (C_c capped at log K), the Gumbel-softmax sample at the temperature fed to the decoder, and the total loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, ndtri, softmax

from multistage.models import build


@pytest.mark.parametrize("step", [0, 37, 5000])
def test_one_training_step_matches_an_independent_computation(step):
    torch.manual_seed(0)
    model = build(
        "stage_one",
        "jointvae",
        image_channels=1,
        image_size=32,
        latent_dim=4,
        discrete_dims=(10,),
        architecture="conv32",
        temperature=0.67,
        gamma_z=30.0,
        gamma_c=30.0,
        capacity_z_max=5.0,
        capacity_z_steps=400,
        capacity_c_max=5.0,
        capacity_c_steps=400,
    )
    x = torch.rand(6, 1, 32, 32).round()

    fed = []
    model.decoder.register_forward_pre_hook(lambda module, inputs: fed.append(inputs[0].detach().numpy().copy()))
    torch.manual_seed(123)
    _, logs = model.objective(x, step)
    torch.manual_seed(123)
    uniforms = torch.rand(6, model.noise_width).numpy().astype(np.float64)  # the draw the objective made

    with torch.no_grad():
        features = model.encoder(x).numpy().astype(np.float64)
    mu, logvar, logits = features[:, :4], features[:, 4:8], features[:, 8:]
    z = mu + np.exp(logvar / 2) * ndtri(uniforms[:, :4])
    gumbel = -np.log(-np.log(uniforms[:, 4:]))
    relaxed = softmax((log_softmax(logits, axis=1) + gumbel) / 0.67, axis=1)
    assert np.allclose(relaxed.sum(axis=1), 1.0)
    np.testing.assert_allclose(
        fed[0], np.concatenate([z, relaxed], axis=1), rtol=1e-4, atol=1e-5
    )  # the decoder's input
    with torch.no_grad():
        pixel_logits = model.decoder(torch.from_numpy(np.concatenate([z, relaxed], axis=1)).float()).numpy()
    target = x.numpy()
    recon = (np.logaddexp(0.0, pixel_logits) - target * pixel_logits).reshape(6, -1).sum(axis=1).mean()
    kl_units = (0.5 * (mu**2 + np.exp(logvar) - 1.0 - logvar)).mean(axis=0)
    alpha = softmax(logits, axis=1)
    kl_c = (alpha * np.log(alpha * 10)).sum(axis=1).mean()
    fraction = min(1.0, (step + 1) / 400)
    capacity_z, capacity_c = 5.0 * fraction, min(5.0 * fraction, math.log(10))
    loss = recon + 30.0 * abs(kl_units.sum() - capacity_z) + 30.0 * abs(kl_c - capacity_c)

    expected = {
        "recon": recon,
        "kl_z": kl_units.sum(),
        "kl_c": kl_c,
        "kl_discrete.0": kl_c,
        "capacity_z": capacity_z,
        "capacity_c": capacity_c,
        "loss": loss,
    } | {f"kl_unit.{j}": v for j, v in enumerate(kl_units)}
    for key, value in expected.items():
        assert logs[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    if step == 5000:
        assert logs["capacity_c"] == pytest.approx(math.log(10))  # the bound C_c <= log K


def test_scoring_uses_the_hard_argmax_of_the_discrete_code():
    torch.manual_seed(1)
    model = build("stage_one", "jointvae", image_channels=1, image_size=32, latent_dim=3, discrete_dims=(4, 2))
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        representation = model.representation(x)
        logits = model.posterior(x)["logits"]
    np.testing.assert_array_equal(representation[:, 3:7].argmax(1), logits[:, :4].argmax(1))
    np.testing.assert_array_equal(representation[:, 7:].argmax(1), logits[:, 4:].argmax(1))
    assert set(representation[:, 3:].unique().tolist()) == {0.0, 1.0}
