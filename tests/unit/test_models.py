"""Unit tests for multistage.nn and multistage.models: estimator known answers, shapes, AdaIN, one-step training,
registry errors and pairing. Tiny and single-threaded (run with OMP_NUM_THREADS=1)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from multistage.models import STAGE_ONE, STAGE_TWO, build, build_config, build_model
from multistage.models.stage_one.betatcvae import (
    BetaTCVAE,
    BetaTCVAEConfig,
    estimate_log_qz,
    gaussian_log_density,
    log_density_matrix,
    log_qz_stratified,
    log_qz_weighted,
    tc_decomposition,
)
from multistage.models.stage_two.base import ConfigError
from multistage.models.stage_two.msvae import MSVAE, MSVAEConfig
from multistage.models.stage_two.pairing import make_pairs
from multistage.nn import AdaIN, ConvDecoder, ConvEncoder

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------ estimator known answers


def synthetic_posteriors(n: int = 64, dims: int = 3, std: float = 0.3, seed: int = 0):
    """n Gaussian posteriors with known mu/logvar (float64) and one sample z_n ~ q(z|n) each."""
    generator = torch.Generator().manual_seed(seed)
    mu = torch.randn(n, dims, generator=generator, dtype=torch.float64)
    logvar = torch.full((n, dims), 2 * math.log(std), dtype=torch.float64)
    z = mu + std * torch.randn(n, dims, generator=generator, dtype=torch.float64)
    return z, mu, logvar


def exact_log_aggregates(z, mu, logvar):
    """Exact log q(z_i) and log prod_j q(z_ij) for the empirical q(z) = 1/N sum_n q(z|n), by logsumexp over all N."""
    n = mu.shape[0]
    matrix = log_density_matrix(z, mu, logvar)
    log_qz = torch.logsumexp(matrix.sum(dim=2), dim=1) - math.log(n)
    log_prod_qzi = (torch.logsumexp(matrix, dim=1) - math.log(n)).sum(dim=1)
    return log_qz, log_prod_qzi


def test_gaussian_log_density_matches_torch_normal():
    z, mu, logvar = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z)
    torch.testing.assert_close(gaussian_log_density(z, mu, logvar), expected)


def test_stratified_is_exact_when_the_batch_is_the_dataset_and_converges_as_batch_grows():
    z, mu, logvar = synthetic_posteriors()
    n = z.shape[0]
    exact_qz, exact_prod = exact_log_aggregates(z, mu, logvar)
    log_qz, log_prod = log_qz_stratified(z, mu, logvar, dataset_size=n)
    torch.testing.assert_close(log_qz, exact_qz, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_prod, exact_prod, rtol=0, atol=1e-12)

    generator = torch.Generator().manual_seed(1)
    mean_abs_error = {}
    for m in (8, 32):
        errors = []
        for _ in range(100):
            rows = torch.randperm(n, generator=generator)[:m]
            estimate, _ = log_qz_stratified(z[rows], mu[rows], logvar[rows], dataset_size=n)
            errors.append((estimate - exact_qz[rows]).mean().abs())
        mean_abs_error[m] = torch.stack(errors).mean().item()
    assert mean_abs_error[8] > mean_abs_error[32] > 1e-6  # and 0 at M = N (above)


def test_stratified_is_unbiased_for_qz_itself():
    """appendix B.2 eq. S5: E_batch[q_hat(z)] = q(z) for batches holding n* (not for log q(z): Jensen, eq. S9)."""
    z, mu, logvar = synthetic_posteriors(n=40, dims=2, std=0.8)
    n, m = 40, 6
    exact_qz, _ = exact_log_aggregates(z, mu, logvar)
    generator = torch.Generator().manual_seed(2)
    estimates = []
    for _ in range(3000):
        others = torch.randperm(n - 1, generator=generator)[: m - 1] + 1  # n* = 0 plus m - 1 others
        rows = torch.cat([torch.zeros(1, dtype=torch.long), others])
        log_qz, _ = log_qz_stratified(z[rows], mu[rows], logvar[rows], dataset_size=n)
        estimates.append(log_qz[0].exp())
    estimates = torch.stack(estimates)
    standard_error = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact_qz[0].exp()) < 4 * standard_error
    assert estimates.log().mean() < exact_qz[0]  # the log is biased low


def test_weighted_is_exact_minus_log_n_at_full_batch_and_never_better_than_log_m():
    """MWS (eq. S4) at M = N: log q(z) is exactly log N too low and log prod q(z_j) exactly L log N too low; for any
    batch of distinct indices it is at least log M too low — its error grows with M instead of vanishing."""
    z, mu, logvar = synthetic_posteriors()
    n, dims = z.shape
    exact_qz, exact_prod = exact_log_aggregates(z, mu, logvar)
    log_qz, log_prod = log_qz_weighted(z, mu, logvar, dataset_size=n)
    torch.testing.assert_close(log_qz, exact_qz - math.log(n), rtol=0, atol=1e-12)
    torch.testing.assert_close(log_prod, exact_prod - dims * math.log(n), rtol=0, atol=1e-12)
    generator = torch.Generator().manual_seed(3)
    for m in (8, 32):
        rows = torch.randperm(n, generator=generator)[:m]
        estimate, _ = log_qz_weighted(z[rows], mu[rows], logvar[rows], dataset_size=n)
        assert torch.all(estimate <= exact_qz[rows] - math.log(m) + 1e-12)


def test_index_code_mi_saturates_at_log_nm_for_weighted_and_log_n_for_stratified():
    n_data, m = 10_000, 32
    mu = torch.arange(m, dtype=torch.float64)[:, None] * 10.0 + torch.zeros(m, 2, dtype=torch.float64)
    logvar = torch.full((m, 2), -10.0, dtype=torch.float64)  # sharp, non-overlapping posteriors
    z = mu.clone()
    weighted = tc_decomposition(z, mu, logvar, n_data, "weighted")["index_code_mi"].item()
    stratified = tc_decomposition(z, mu, logvar, n_data, "stratified")["index_code_mi"].item()
    assert weighted == pytest.approx(math.log(n_data * m), abs=1e-9)
    assert stratified == pytest.approx(math.log(n_data), abs=1e-9)


@pytest.mark.parametrize("estimator", ["stratified", "weighted"])
def test_decomposition_sums_to_the_monte_carlo_kl(estimator):
    z, mu, logvar = synthetic_posteriors(n=16)
    terms = tc_decomposition(z, mu, logvar, 1000, estimator)
    monte_carlo_kl = (gaussian_log_density(z, mu, logvar) - gaussian_log_density(z, 0 * z, 0 * z)).sum(1).mean()
    total = terms["index_code_mi"] + terms["tc"] + terms["dim_kl"]
    torch.testing.assert_close(total, monte_carlo_kl, rtol=0, atol=1e-10)


def test_total_correlation_is_near_zero_for_independent_codes_and_positive_for_correlated():
    n, m, std = 512, 256, 0.5
    generator = torch.Generator().manual_seed(4)
    tcs = {}
    for correlated in (False, True):
        mu = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        if correlated:
            mu[:, 1] = mu[:, 0]  # Gaussian with correlation 1/1.25 = 0.8: TC = -1/2 log(1 - 0.64) = 0.51 nats
        logvar = torch.full((n, 2), 2 * math.log(std), dtype=torch.float64)
        z = mu + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
        rows = torch.randperm(n, generator=generator)[:m]
        log_qz, log_prod = estimate_log_qz(z[rows], mu[rows], logvar[rows], n, "stratified")
        tcs[correlated] = (log_qz - log_prod).mean().item()
    assert abs(tcs[False]) < 0.05
    assert tcs[True] > 0.35


def test_estimators_reject_bad_arguments():
    z, mu, logvar = synthetic_posteriors(n=8)
    with pytest.raises(ValueError, match="dataset_size"):
        log_qz_stratified(z, mu, logvar, dataset_size=4)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate_log_qz(z, mu, logvar, 100, "naive")


# ------------------------------------------------------------------------------------------ networks


@pytest.mark.parametrize("size", [64, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_encoder_decoder_shapes_and_memory_format(size, channels):
    torch.manual_seed(0)
    encoder, decoder = ConvEncoder(channels, size, 8), ConvDecoder(4, channels, size)
    x = torch.rand(2, channels, size, size)
    features = encoder(x)
    assert features.shape == (2, 8)
    logits = decoder(torch.randn(2, 4))
    assert logits.shape == (2, channels, size, size)
    torch.testing.assert_close(encoder(x.contiguous(memory_format=torch.channels_last)), features)
    encoder.to(memory_format=torch.channels_last)
    torch.testing.assert_close(encoder(x), features, rtol=1e-4, atol=1e-5)


def test_conv_networks_reject_unsupported_sizes():
    with pytest.raises(ValueError, match="image_size"):
        ConvEncoder(1, 48, 4)
    with pytest.raises(ValueError, match="expects"):
        ConvEncoder(1, 64, 4)(torch.rand(1, 3, 64, 64))


def test_adain_normalises_then_modulates():
    torch.manual_seed(0)
    adain = AdaIN(num_channels=4, condition_dim=3, hidden=8)
    h = torch.randn(2, 4, 6, 6) * 3 + 1
    z = torch.randn(2, 3)
    variance, mean = torch.var_mean(h, dim=(2, 3), keepdim=True, correction=0)
    plain_normalisation = (h - mean) / torch.sqrt(variance + adain.eps)
    torch.testing.assert_close(adain(h, z), plain_normalisation)  # gamma = 1, beta = 0 at initialisation
    torch.nn.init.normal_(adain.modulation_network[-1].weight)
    torch.nn.init.normal_(adain.modulation_network[-1].bias)
    gamma, beta = adain.modulation(z)
    out = adain(h, z)
    variance = h.var(dim=(2, 3), correction=0)
    torch.testing.assert_close(out.mean(dim=(2, 3)), beta, rtol=1e-4, atol=1e-4)
    expected_std = gamma.abs() * torch.sqrt(variance / (variance + adain.eps))
    torch.testing.assert_close(out.std(dim=(2, 3), correction=0), expected_std, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------ models


def one_step_decreases_loss(model, inputs):
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(11)
    loss_before, logs = model.objective(*inputs)
    optimiser.zero_grad()
    loss_before.backward()
    optimiser.step()
    torch.manual_seed(11)  # same reparameterisation noise
    with torch.no_grad():
        loss_after, _ = model.objective(*inputs)
    assert loss_after.item() < loss_before.item()
    return logs


def test_betatcvae_logs_and_one_step():
    torch.manual_seed(0)
    model = BetaTCVAE(BetaTCVAEConfig(image_channels=1, image_size=32, latent_dim=4, dataset_size=1000))
    x = (torch.rand(16, 1, 32, 32) > 0.7).to(torch.uint8) * 255
    logs = one_step_decreases_loss(model, (x,))
    expected = {"loss", "recon", "kl", "index_code_mi", "tc", "dim_kl", "regularisation_weight"}
    assert set(logs) == expected | {f"kl_unit.{j}" for j in range(4)}
    assert logs["regularisation_weight"] == 1.0
    assert all(math.isfinite(value) for value in logs.values())
    assert logs["kl"] == pytest.approx(sum(logs[f"kl_unit.{j}"] for j in range(4)), rel=1e-5)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (16, 4)
    assert model.decode(mu).shape == (16, 1, 32, 32)
    probabilities = model.reconstruct(x)
    assert probabilities.min() >= 0 and probabilities.max() <= 1


def test_betatcvae_needs_the_dataset_size():
    model = BetaTCVAE(BetaTCVAEConfig(image_size=32))
    with pytest.raises(ValueError, match="dataset_size"):
        model.objective(torch.rand(4, 1, 32, 32))


def test_msvae_starts_at_y_logs_and_one_step():
    torch.manual_seed(0)
    config = MSVAEConfig(image_channels=3, image_size=32, residual_dim=3, base_channels=8)
    model = MSVAE(config)
    y = torch.rand(6, 3, 32, 32).clamp(1e-3, 1 - 1e-3)
    z = torch.randn(6, 3)
    torch.testing.assert_close(model.generate(y, z), y, rtol=0, atol=1e-5)
    x = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    mu, logvar = model.residual_encoder(x, y)
    assert mu.shape == logvar.shape == (6, 3)
    logs = one_step_decreases_loss(model, (x, y.to(torch.float16)))
    assert set(logs) == {"loss", "recon", "kl", "kl_unit.0", "kl_unit.1", "kl_unit.2"}
    assert all(math.isfinite(value) for value in logs.values())
    with_y = MSVAE(MSVAEConfig(image_channels=1, image_size=32, residual_dim=2, residual_encoder_sees_y=True))
    assert with_y.residual_encoder(torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32))[0].shape == (2, 2)


def test_msvae_options_against_an_independent_loss():
    """Free bits, KL warm-up and the learned-variance Gaussian recomputed by hand from the same encoder outputs,
    decoder logits and noise; FiLM and the non-zero initialisation let z move the output at step 0."""
    x = torch.rand(5, 3, 32, 32)
    y = torch.rand(5, 3, 32, 32).clamp(0.05, 0.95)

    def terms(model, step):
        torch.manual_seed(1)
        loss, logs = model.objective(x, y, step)
        torch.manual_seed(1)
        mu, logvar = model.residual_encoder(x, y)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl_units = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).mean(0)
        return loss.item(), logs, torch.sigmoid(model.decode(y, z)), kl_units

    options = dict(image_channels=3, image_size=32, residual_dim=4, base_channels=8, zero_init=False)
    model = MSVAE(MSVAEConfig(**options, free_bits=0.75, kl_warmup_steps=10, beta=2.0))
    loss, logs, mean, kl_units = terms(model, 4)
    bce = -(x * mean.log() + (1 - x) * (1 - mean).log()).sum() / 5
    expected = bce + 2.0 * 0.4 * kl_units.clamp(min=0.75).sum()
    assert loss == pytest.approx(expected.item(), rel=1e-4)
    assert logs["kl"] == pytest.approx(kl_units.sum().item(), rel=1e-4)  # the logged KL is the true one
    assert terms(model, 0)[0] == pytest.approx(bce.item(), rel=1e-4)  # no KL at the start of the warm-up
    assert terms(model, None)[0] == pytest.approx((bce + 2.0 * kl_units.clamp(min=0.75).sum()).item(), rel=1e-4)

    gaussian = MSVAE(MSVAEConfig(**options, likelihood="gaussian_learned"))
    loss, logs, mean, kl_units = terms(gaussian, None)
    variance = 0.05
    nll = 0.5 * (((x - mean) ** 2).sum() / 5 / variance + 3 * 32 * 32 * math.log(2 * math.pi * variance))
    assert loss == pytest.approx((nll + kl_units.sum()).item(), rel=1e-4)
    assert logs["decoder_variance"] == pytest.approx(variance)
    assert any(p is gaussian.likelihood.raw_log_variance for p in gaussian.optimised_parameters())

    for modulation in ("adain", "film"):
        free = MSVAE(MSVAEConfig(**options, modulation=modulation))
        z = torch.randn(5, 4)
        assert (free.generate(y, z) - free.generate(y, -z)).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="modulation: must be one of adain, film"):
        MSVAEConfig(modulation="concat")
    with pytest.raises(ConfigError, match="likelihood: must be one of bernoulli, gaussian_learned"):
        MSVAEConfig(likelihood="gaussian")


def test_the_residual_encoder_initialisations():
    """PyTorch's default layer initialisation leaves mu nearly constant across images at step 0 (z is then the
    posterior noise alone); ``encoder_init="kaiming"`` makes mu vary with x far more (148x on this batch), and
    ``posterior_logvar_init`` sets the initial log-variance of every unit (its KL then follows)."""
    torch.manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    y = (x + 0.3 * torch.rand(64, 3, 32, 32)).clamp(0.01, 0.99)

    def spread(**options):
        torch.manual_seed(0)
        model = MSVAE(MSVAEConfig(image_channels=3, image_size=32, residual_dim=4, **options))
        with torch.no_grad():
            mu, logvar = model.residual_encoder(x, y)
        return mu.std(0).mean().item(), logvar

    default, default_logvar = spread()
    kaiming, _ = spread(encoder_init="kaiming")
    assert kaiming > 30 * default  # 148x when written
    assert default_logvar.abs().max() < 0.5
    _, logvar = spread(posterior_logvar_init=-6.0)
    torch.testing.assert_close(logvar, torch.full_like(logvar, -6.0), rtol=0, atol=0.05)
    with pytest.raises(ConfigError, match="encoder_init: must be one of default, kaiming"):
        MSVAEConfig(encoder_init="xavier")


def test_several_samples_per_x_average_the_reconstruction_term():
    """``samples_per_x`` = L (Kingma & Welling 2014, eq. 7): the reconstruction term is the mean over L draws of z
    of the one-sample term, recomputed here draw by draw from the same noise (in float64 from the logits); the KL is
    the analytic one, the same for every L; L = 0 is refused."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    y = (0.5 * x + 0.25).clamp(0.01, 0.99)
    for likelihood in ("bernoulli", "gaussian_learned"):
        torch.manual_seed(1)
        config = MSVAEConfig(image_channels=3, image_size=32, residual_dim=3, base_channels=8, zero_init=False)
        config.likelihood, config.samples_per_x = likelihood, 3
        model = MSVAE(config)
        torch.manual_seed(2)
        _, logs = model.objective(x, y)
        torch.manual_seed(2)
        with torch.no_grad():
            mu, logvar = model.residual_encoder(x, y)
            noise = torch.randn(3 * len(x), 3).chunk(3)
            per_draw = []
            for eps in noise:
                probabilities = torch.sigmoid(model.decode(y, mu + torch.exp(0.5 * logvar) * eps)).double()
                x64 = x.double()
                if likelihood == "bernoulli":
                    nll = -(x64 * probabilities.log() + (1 - x64) * (1 - probabilities).log()).sum() / len(x)
                else:
                    variance = torch.exp(model.likelihood.log_variance.double())
                    squared = ((x64 - probabilities) ** 2 / variance).sum() / len(x)
                    nll = 0.5 * (squared + x[0].numel() * torch.log(2 * math.pi * variance))
                per_draw.append(nll.item())
            mu, logvar = mu.double(), logvar.double()
            kl = (0.5 * (mu**2 + logvar.exp() - 1 - logvar)).sum(1).mean().item()
        assert logs["recon"] == pytest.approx(sum(per_draw) / 3, rel=1e-5)
        assert logs["kl"] == pytest.approx(kl, rel=1e-5)
        assert max(per_draw) - min(per_draw) > 1e-6  # the three draws differ: the mean is over distinct samples
    with pytest.raises(ConfigError, match="samples_per_x: must be > 0"):
        MSVAEConfig(samples_per_x=0)


def test_the_texture_path_starts_silent_and_draws_plane_waves():
    """FourierTexture: zero at initialisation (X-hat = y), its gain receives gradient at step 0, and each weight
    of a(z) draws one fixed plane wave below the Nyquist limit."""
    torch.manual_seed(0)
    model = MSVAE(MSVAEConfig(image_channels=3, image_size=32, residual_dim=3, base_channels=8, texture_waves=6))
    y = torch.rand(4, 3, 32, 32).clamp(0.05, 0.95)
    torch.testing.assert_close(model.generate(y, torch.randn(4, 3)), y, rtol=0, atol=1e-5)
    loss, _ = model.objective(torch.rand(4, 3, 32, 32), y, 0)
    loss.backward()
    assert model.adain_decoder.texture.gain.weight.grad.abs().sum() > 0
    waves = model.adain_decoder.texture.waves
    assert waves.shape == (12, 32, 32)
    spectrum = torch.fft.fft2(waves.double()).abs()
    peaks = spectrum.flatten(1).argmax(1)
    frequencies = torch.fft.fftfreq(32)
    fy, fx = frequencies[peaks // 32], frequencies[peaks % 32]
    assert bool(((fx**2 + fy**2).sqrt() <= 0.5 * math.sqrt(2) + 1e-9).all())
    torch.testing.assert_close(waves[0] ** 2 + waves[6] ** 2, torch.ones(32, 32))  # a cos / sin pair per wave


def test_film_is_adain_without_the_normalisation():
    torch.manual_seed(0)
    adain, film = AdaIN(6, 3, hidden=8, zero_init=False), AdaIN(6, 3, hidden=8, normalise=False, zero_init=False)
    film.load_state_dict(adain.state_dict())
    h, z = torch.randn(2, 6, 5, 5), torch.randn(2, 3)
    gamma, beta = adain.modulation(z)
    torch.testing.assert_close(film(h, z), gamma[:, :, None, None] * h + beta[:, :, None, None])
    normalised = (h - h.mean((2, 3), keepdim=True)) / (h.var((2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
    torch.testing.assert_close(adain(h, z), gamma[:, :, None, None] * normalised + beta[:, :, None, None])


# ------------------------------------------------------------------------------------------ registry


def test_registry_builds_and_fails_clearly():
    model = build("stage_one", "betatcvae", latent_dim=3, image_size=32)
    assert isinstance(model, BetaTCVAE) and model.config.latent_dim == 3
    assert isinstance(build_model("msvae", image_size=32), MSVAE)
    assert build_config("stage_two", "msvae", residual_dim=7).residual_dim == 7
    with pytest.raises(ValueError, match=r"unknown stage_one model 'vae'.*betatcvae"):
        build("stage_one", "vae")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'latent_size'.*allowed options: .*latent_dim"):
        build("stage_one", "betatcvae", latent_size=3)
    with pytest.raises(ValueError, match=r"unknown model kind 'stage_3'"):
        build("stage_3", "msvae")
    every = ", ".join(sorted([*STAGE_ONE, *STAGE_TWO]))
    with pytest.raises(ValueError, match=re.escape(f"unknown model 'gan'; allowed models: {every}")):
        build_model("gan")


# ------------------------------------------------------------------------------------------ pairing


def test_make_pairs():
    torch.manual_seed(0)
    model = BetaTCVAE(BetaTCVAEConfig(image_channels=1, image_size=32, latent_dim=3, dataset_size=100))
    images = (np.random.default_rng(0).random((10, 1, 32, 32)) > 0.5).astype(np.uint8) * 255
    indices = np.array([7, 2, 5, 2, 9])
    calls = []
    pairs = make_pairs(
        model,
        images,
        indices,
        samples_per_x=3,
        batch_size=2,
        seed=5,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert pairs["x_index"].dtype == np.int64 and pairs["x_index"].tolist() == np.repeat(indices, 3).tolist()
    assert pairs["c"].shape == (15, 3) and pairs["c"].dtype == np.float32
    assert pairs["y"].shape == (15, 1, 32, 32) and pairs["y"].dtype == np.float16
    assert pairs["y"].min() >= 0 and pairs["y"].max() <= 1
    assert calls[-1] == (15, 15) and len(calls) == 3
    assert not np.allclose(pairs["c"][0], pairs["c"][1])  # sampled copies differ
    assert not np.allclose(pairs["c"][3], pairs["c"][9])

    again = make_pairs(model, images, indices, samples_per_x=3, batch_size=4, seed=5)
    np.testing.assert_allclose(again["c"], pairs["c"], rtol=1e-5, atol=1e-6)  # seed decides, not batch size
    np.testing.assert_allclose(again["y"].astype(np.float32), pairs["y"].astype(np.float32), atol=2e-3)
    other_seed = make_pairs(model, images, indices, samples_per_x=3, batch_size=2, seed=6)
    assert not np.allclose(other_seed["c"], pairs["c"])

    means = make_pairs(model, images, indices, samples_per_x=2, use_mean=True, seed=5)
    np.testing.assert_array_equal(means["c"][0::2], means["c"][1::2])
    np.testing.assert_array_equal(means["y"][0::2], means["y"][1::2])
    with torch.no_grad():
        expected_mu, _ = model.encode(torch.from_numpy(images[indices]))
    np.testing.assert_allclose(means["c"][0::2], expected_mu.numpy(), rtol=1e-5, atol=1e-6)
    assert model.training  # mode restored


def test_betatcvae_warmup_weight_scales_only_the_regulariser():
    torch.manual_seed(0)
    model = BetaTCVAE(
        BetaTCVAEConfig(image_channels=1, image_size=32, latent_dim=4, dataset_size=1000, warmup_steps=10)
    )
    x = (torch.rand(16, 1, 32, 32) > 0.7).to(torch.uint8) * 255
    torch.manual_seed(1)
    full, logs = model.objective(x)
    torch.manual_seed(1)
    first, logs_first = model.objective(x, step=0)
    torch.manual_seed(1)
    late, logs_late = model.objective(x, step=9)
    c = model.config
    penalty = c.alpha * logs["index_code_mi"] + c.beta * logs["tc"] + c.gamma * logs["dim_kl"]
    assert logs_first["regularisation_weight"] == pytest.approx(0.1)
    assert first.item() == pytest.approx(logs_first["recon"] + 0.1 * penalty, rel=1e-5)
    assert logs_late["regularisation_weight"] == 1.0 == logs["regularisation_weight"]
    assert full.item() == pytest.approx(logs["recon"] + penalty, rel=1e-5) == late.item()
