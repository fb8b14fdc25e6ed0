"""The stage-one zoo: every model keeps the interface, equals the plain ELBO at its neutral point, and each
objective's own piece (DIP penalty, discrete KL, discriminator TC, learned decoder variance) has a known answer.
Tiny and single-threaded (run with OMP_NUM_THREADS=1)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from multistage.models import build
from multistage.models.registry import STAGE_ONE
from multistage.models.stage_one import ConfigError, FactorVAE
from multistage.models.stage_one.dipvae import dip_covariance, dip_penalty, third_moment_norm
from multistage.models.stage_one.jointvae import discrete_kl_uniform
from multistage.models.stage_two.pairing import make_pairs
from multistage.nn.likelihoods import MIN_VARIANCE, build_likelihood
from multistage.train import LoopConfig, train

torch.set_num_threads(1)

MODELS = sorted(STAGE_ONE)
SMALL = {"image_channels": 1, "image_size": 32, "latent_dim": 3}
EXTRA = {
    "betatcvae": {"dataset_size": 1000},
    "jointvae": {"discrete_dims": (4, 3)},
    "factorvae": {"discriminator_hidden": 16, "discriminator_layers": 3},
}


def small_model(name: str, **options):
    torch.manual_seed(0)
    return build("stage_one", name, **(SMALL | EXTRA.get(name, {}) | options))


def binary_images(n: int = 12, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, size, size, generator=generator) > 0.7).to(torch.uint8) * 255


# ------------------------------------------------------------------------------------------ the interface


@pytest.mark.parametrize("name", MODELS)
def test_every_model_keeps_the_interface_and_trains(name):
    model = small_model(name)
    x = binary_images()
    optimiser = torch.optim.Adam(model.optimised_parameters(), lr=1e-3)
    torch.manual_seed(1)
    loss, logs = model.objective(x, step=0)
    assert {"loss", "recon", "kl", *model.logged_terms} <= set(logs)
    assert all(math.isfinite(v) for v in logs.values()) and logs["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert sum(logs[f"kl_unit.{j}"] for j in range(3)) == pytest.approx(logs.get("kl_z", logs["kl"]), rel=1e-5)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()

    model.eval()
    with torch.no_grad():
        mu, logvar = model.encode(x)
        assert mu.shape == logvar.shape == (12, 3)
        code = model.representation(x)
        assert code.shape == (12, model.code_dim) and len(model.code_names) == model.code_dim
        torch.testing.assert_close(code[:, :3], mu)
        first = model.sample_code(x, torch.Generator().manual_seed(5))
        again = model.sample_code(x, torch.Generator().manual_seed(5))
        torch.testing.assert_close(first, again)
        assert not torch.allclose(first[:, :3], mu)
        y = model.decode_mean(first)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        torch.testing.assert_close(model.reconstruct(x), model.decode_mean(code))


def test_jointvae_code_layout_names_and_one_hot_blocks():
    model = small_model("jointvae").eval()
    assert model.code_names == ["z0", "z1", "z2", "c0=0", "c0=1", "c0=2", "c0=3", "c1=0", "c1=1", "c1=2"]
    x = binary_images()
    with torch.no_grad():
        for code in (model.representation(x), model.sample_code(x)):
            blocks = code[:, 3:].split([4, 3], dim=1)
            for block in blocks:
                assert torch.all(block.sum(dim=1) == 1) and set(block.unique().tolist()) <= {0.0, 1.0}
        alpha = model.discrete_probabilities(x)[0]
        torch.testing.assert_close(model.representation(x)[:, 3:7].argmax(1), alpha.argmax(1))
    pairs = make_pairs(model, x.numpy(), samples_per_x=2, seed=3)
    assert pairs["c"].shape == (24, model.code_dim)
    assert np.all(pairs["c"][:, 3:7].sum(axis=1) == 1)


# ------------------------------------------------------------------------------------------ neutral points


NEUTRAL = {
    "betavae": {"beta": 1.0, "warmup_steps": 0},
    "annealedvae": {"gamma": 1.0, "capacity_min": 0.0, "capacity_max": 0.0},
    "betatcvae": {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "warmup_steps": 0},
    "dipvae": {"lambda_od": 0.0, "lambda_d": 0.0, "lambda_third": 0.0},
    "jointvae": {"gamma_z": 1.0, "gamma_c": 1.0, "capacity_z_max": 0.0, "capacity_c_max": 0.0},
    "factorvae": {"gamma": 0.0},
}


def independent_elbo(model, x: torch.Tensor, seed: int, monte_carlo_kl: bool = False) -> torch.Tensor:
    """-ELBO computed here from the model's networks: the same uniforms the objective draws, BCE of the decoder,
    the analytic Gaussian KL (or the Monte Carlo one) and the categorical KL against the uniform
    (torch.distributions)."""
    x = x.float() / 255
    torch.manual_seed(seed)
    uniforms = torch.rand(len(x), model.noise_width)
    posterior = model.posterior(x)
    code = model.code_from_uniforms(posterior, uniforms, relaxed=True)
    recon = -torch.distributions.Bernoulli(logits=model.decode(code)).log_prob(x).sum() / len(x)
    mu, logvar = posterior["mu"], posterior["logvar"]
    if monte_carlo_kl:
        z = code[:, : mu.shape[1]]
        normal = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        kl = (normal.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(1).mean()
    else:
        kl = (
            torch.distributions.kl_divergence(
                torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)
            )
            .sum(1)
            .mean()
        )
    if "logits" in posterior:
        for block in posterior["logits"].split(list(model.discrete_dims), dim=1):
            size = block.shape[1]
            uniform = torch.distributions.Categorical(probs=torch.full_like(block, 1 / size))
            kl = kl + torch.distributions.kl_divergence(torch.distributions.Categorical(logits=block), uniform).mean()
    return recon + kl


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("training", [True, False])
def test_each_objective_equals_the_plain_elbo_at_its_neutral_point(name, training):
    model = small_model(name, **NEUTRAL[name]).train(training)
    x = binary_images()
    torch.manual_seed(7)
    loss, _ = model.objective(x, step=3)
    expected = independent_elbo(model, x, seed=7, monte_carlo_kl=name == "betatcvae")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)


def test_weights_schedules_and_capacity_away_from_the_neutral_point():
    x = binary_images()
    beta = small_model("betavae", beta=4.0, warmup_steps=10)
    torch.manual_seed(1)
    _, logs = beta.objective(x, step=4)
    torch.manual_seed(1)
    loss = beta.objective(x, step=None)[0]
    assert logs["regularisation_weight"] == pytest.approx(0.5)
    assert logs["loss"] == pytest.approx(logs["recon"] + 0.5 * 4.0 * logs["kl"], rel=1e-5)
    assert loss.item() == pytest.approx(logs["recon"] + 4.0 * logs["kl"], rel=1e-5)

    annealed = small_model("annealedvae", gamma=100.0, capacity_min=1.0, capacity_max=5.0, capacity_steps=8)
    for step, capacity in ((1, 2.0), (3, 3.0), (100, 5.0), (None, 5.0)):
        _, logs = annealed.objective(x, step=step)
        assert logs["capacity"] == pytest.approx(capacity)
        assert logs["loss"] == pytest.approx(logs["recon"] + 100.0 * abs(logs["kl"] - capacity), rel=1e-5)

    joint = small_model("jointvae", capacity_c_max=100.0, capacity_c_steps=10, capacity_z_max=2.0, capacity_z_steps=4)
    _, logs = joint.objective(x, step=None)
    assert logs["capacity_c"] == pytest.approx(math.log(4) + math.log(3))  # capped at sum log K
    assert logs["capacity_z"] == 2.0
    assert logs["kl_c"] == pytest.approx(logs["kl_discrete.0"] + logs["kl_discrete.1"], rel=1e-5)
    assert logs["loss"] == pytest.approx(
        logs["recon"] + 30 * abs(logs["kl_z"] - 2.0) + 30 * abs(logs["kl_c"] - logs["capacity_c"]), rel=1e-5
    )


# ------------------------------------------------------------------------------------------ DIP-VAE


def test_dip_penalty_is_zero_at_identity_and_grows_with_correlation():
    assert dip_penalty(torch.eye(4), 10.0, 5.0)[0].item() == 0.0
    penalties = []
    for rho in (0.0, 0.2, 0.5, 0.9):
        covariance = torch.tensor([[1.0, rho], [rho, 1.0]])
        penalty, off_diagonal, on_diagonal = dip_penalty(covariance, 3.0, 7.0)
        assert off_diagonal.item() == pytest.approx(2 * rho**2) and on_diagonal.item() == 0.0
        penalties.append(penalty.item())
    assert penalties == sorted(penalties) and penalties[0] == 0.0 and penalties[-1] == pytest.approx(6 * 0.81)
    assert dip_penalty(torch.diag(torch.tensor([2.0, 0.5])), 1.0, 1.0)[0].item() == pytest.approx(1.25)

    # estimated on a batch: means with Cov 0.5 I plus posterior variances 0.5 are Cov_q(z) = I for DIP-VAE-II
    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(20000, 3, generator=generator) * math.sqrt(0.5)
    logvar = torch.full((20000, 3), math.log(0.5))
    assert dip_penalty(dip_covariance(mu, logvar, "ii"), 1.0, 1.0)[0].item() < 1e-3
    assert dip_penalty(dip_covariance(mu, logvar, "i"), 1.0, 1.0)[0].item() == pytest.approx(0.75, rel=0.05)
    correlated = mu.clone()
    correlated[:, 1] = correlated[:, 0]
    assert dip_penalty(dip_covariance(correlated, logvar, "ii"), 1.0, 0.0)[0].item() == pytest.approx(0.5, rel=0.05)


def test_third_moment_penalty_sees_skew_not_symmetry():
    generator = torch.Generator().manual_seed(0)
    symmetric = torch.randn(50000, 2, generator=generator)
    skewed = torch.empty(50000, 2).exponential_(generator=generator)  # third central moment 2 per dimension
    assert third_moment_norm(symmetric).item() < 0.01
    assert third_moment_norm(skewed).item() == pytest.approx(8.0, rel=0.15)  # 2^2 + 2^2 on the diagonal


# ------------------------------------------------------------------------------------------ JointVAE


def test_discrete_kl_is_analytic_and_matches_monte_carlo():
    model = small_model("jointvae", discrete_dims=(5,))
    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0, 0.0]])
    analytic = discrete_kl_uniform(logits)
    assert analytic[1].item() == pytest.approx(0.0, abs=1e-7)
    posterior = {"mu": torch.zeros(2, 3), "logvar": torch.zeros(2, 3), "logits": logits}
    rows = 40000
    repeated = {k: v.repeat_interleave(rows, dim=0) for k, v in posterior.items()}
    torch.manual_seed(0)
    samples = model.code_from_uniforms(repeated, torch.rand(2 * rows, model.noise_width))[:, 3:]
    log_alpha = F.log_softmax(repeated["logits"], dim=1)
    monte_carlo = ((samples * log_alpha).sum(1) + math.log(5)).reshape(2, rows).mean(1)
    torch.testing.assert_close(monte_carlo, analytic, atol=0.02, rtol=0)
    frequencies = samples[:rows].mean(0)
    torch.testing.assert_close(frequencies, F.softmax(logits[0], 0), atol=0.01, rtol=0)  # Gumbel-max is exact


# ------------------------------------------------------------------------------------------ FactorVAE


def fit_discriminator(model: FactorVAE, codes, steps: int = 300):
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        model.update_discriminator(codes(generator))
    with torch.no_grad():
        return model.total_correlation(codes(generator)).item()


def test_factorvae_discriminator_tc_is_about_zero_for_independent_codes_and_large_for_duplicated():
    def independent(generator):
        return torch.randn(256, 4, generator=generator)

    def duplicated(generator):
        z = torch.randn(256, 2, generator=generator)
        return torch.cat([z, z], dim=1)

    options = {
        "latent_dim": 4,
        "discriminator_hidden": 64,
        "discriminator_layers": 3,
        "discriminator_learning_rate": 1e-3,
    }
    assert abs(fit_discriminator(small_model("factorvae", **options), independent)) < 0.15
    assert fit_discriminator(small_model("factorvae", **options), duplicated) > 1.5


def test_factorvae_keeps_its_discriminator_out_of_the_vae_optimiser_and_in_the_checkpoint(tmp_path):
    x = binary_images(n=40).float() / 255

    def run(steps: int, path):
        torch.manual_seed(0)
        model = small_model("factorvae", architecture="mlp")
        optimiser = torch.optim.Adam(model.optimised_parameters(), lr=1e-3)
        loop = LoopConfig(steps=steps, batch_size=8, checkpoint_every=2, log_every=2)
        train(
            model,
            optimiser,
            lambda batch, step: model.objective(x[np.sort(batch)], step),
            len(x),
            loop,
            path,
            "fp",
            show_progress=False,
            extra_modules=model.auxiliary_state(),
        )
        return model

    model = small_model("factorvae")
    discriminator = {id(p) for p in model.discriminator.parameters()}
    assert discriminator and not discriminator & {id(p) for p in model.optimised_parameters()}
    straight = run(4, tmp_path / "straight.pt")
    run(2, tmp_path / "resumed.pt")
    resumed = run(4, tmp_path / "resumed.pt")  # continues from step 2, discriminator optimiser included
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    state = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert state["extra"]["discriminator_optimizer"]["state"]  # Adam moments were saved


# ------------------------------------------------------------------------------------------ likelihoods


def test_likelihoods_match_torch_distributions():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 5, generator=generator)
    output = torch.randn(4, 2, 5, generator=generator)
    bernoulli = build_likelihood("bernoulli", (2, 5))
    expected = -torch.distributions.Bernoulli(logits=output, validate_args=False).log_prob(x).sum() / 4
    torch.testing.assert_close(bernoulli.negative_log_likelihood(output, x), expected)
    fixed = build_likelihood("gaussian", (2, 5), variance=0.3)
    expected = -torch.distributions.Normal(output, math.sqrt(0.3)).log_prob(x).sum() / 4
    torch.testing.assert_close(fixed.negative_log_likelihood(output, x), expected)
    assert not list(fixed.parameters())
    per_pixel = build_likelihood("gaussian_learned_per_pixel", (2, 5), variance=0.2)
    with torch.no_grad():
        per_pixel.raw_log_variance.copy_(torch.linspace(-3, 0, 10).reshape(2, 5))
    expected = -torch.distributions.Normal(output, torch.exp(0.5 * per_pixel.log_variance)).log_prob(x).sum() / 4
    torch.testing.assert_close(per_pixel.negative_log_likelihood(output, x), expected)
    with pytest.raises(ValueError, match="only used by the Gaussian"):
        build_likelihood("bernoulli", (2, 5), variance=0.1)


@pytest.mark.parametrize("likelihood", ["gaussian_learned", "gaussian_learned_per_pixel"])
def test_learned_gaussian_variance_converges_to_the_true_noise_variance(likelihood):
    """Series x = a s + noise (s ~ N(0, 1), one factor, 16 elements), noise variance 0.09 on the first 8 elements
    and 0.36 on the last 8. Trained from a variance of 0.2, the learned global variance must reach their mean
    0.225 and the per-element ones each half's own value (within 25%; measured: 0.246; 0.103 and 0.361)."""
    generator = torch.Generator().manual_seed(0)
    length, n = 16, 2048
    loading = torch.randn(1, length, generator=generator)
    noise_std = torch.cat([torch.full((8,), 0.3), torch.full((8,), 0.6)])
    data = torch.randn(n, 1, generator=generator) @ loading + noise_std * torch.randn(n, length, generator=generator)
    data = data[:, None, :]
    torch.manual_seed(0)
    model = build(
        "stage_one",
        "betavae",
        image_channels=1,
        series_length=length,
        latent_dim=1,
        beta=1.0,
        likelihood=likelihood,
        gaussian_variance=0.2,
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(800):
        batch = data[torch.randint(0, n, (128,), generator=generator)]
        loss, logs = model.objective(batch, step)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    variance = torch.exp(model.likelihood.log_variance.detach()).reshape(-1)
    if likelihood == "gaussian_learned":
        assert logs["decoder_variance"] == pytest.approx(0.225, rel=0.25)
    else:
        assert variance[:8].mean().item() == pytest.approx(0.09, rel=0.25)
        assert variance[8:].mean().item() == pytest.approx(0.36, rel=0.25)
        assert logs["decoder_variance.max"] > 2 * logs["decoder_variance.min"]
    assert variance.min().item() >= MIN_VARIANCE


# ------------------------------------------------------------------------------------------ architectures, options


@pytest.mark.parametrize(
    "architecture, shape",
    [
        ("mlp", (3, 32, 32)),
        ("mlp", (1, 64, 64)),
        ("conv64", (3, 64, 64)),
        ("pooled64", (1, 64, 64)),
        ("series_mlp", (2, 50)),
        ("auto", (1, 100)),
    ],
)
def test_architectures_take_their_data(architecture, shape):
    options = {"image_channels": shape[0], "latent_dim": 2, "architecture": architecture}
    options |= {"series_length": shape[1]} if len(shape) == 2 else {"image_size": shape[1]}
    likelihood = "gaussian" if len(shape) == 2 else "bernoulli"
    model = build("stage_one", "betavae", likelihood=likelihood, **options)
    x = torch.rand(5, *shape) * (4.0 if len(shape) == 2 else 1.0) - (2.0 if len(shape) == 2 else 0.0)
    loss, _ = model.objective(x)
    assert torch.isfinite(loss) and model.decode_mean(model.representation(x)).shape == x.shape
    if len(shape) == 2:  # a series keeps its own range (no clamp to [0, 1])
        with torch.no_grad():
            model.decoder.network[-1].bias.fill_(-3.0)
        assert model.decode_mean(model.representation(x)).min() < -1


def test_pooled64_is_conv32_on_the_pooled_image_with_upsampled_logits():
    from multistage.nn.conv import ConvDecoder, ConvEncoder, PooledConvEncoder, UpsampledConvDecoder
    from multistage.nn.networks import resolve_architecture

    torch.manual_seed(0)
    encoder, decoder = PooledConvEncoder(1, 6), UpsampledConvDecoder(3, 1)
    plain_encoder, plain_decoder = ConvEncoder(1, 32, 6), ConvDecoder(3, 1, 32)
    plain_encoder.load_state_dict(encoder.network.state_dict())
    plain_decoder.load_state_dict(decoder.network.state_dict())
    x = binary_images(n=4, size=64).float() / 255
    # the 2x2 mean, written out: every 32 px pixel is the mean of its four 64 px pixels
    pooled = x.reshape(4, 1, 32, 2, 32, 2).mean(dim=(3, 5))
    torch.testing.assert_close(encoder(x), plain_encoder(pooled))
    z = torch.randn(4, 3)
    logits, coarse = decoder(z), plain_decoder(z)
    assert logits.shape == (4, 1, 64, 64)
    # bilinear x2 with half-pixel centres: an interior 64 px logit is 3/4 its own cell + 1/4 its neighbour (per axis)
    row = 0.75 * coarse[..., 5, :] + 0.25 * coarse[..., 4, :]
    expected = 0.75 * row[..., 7] + 0.25 * row[..., 6]
    torch.testing.assert_close(logits[..., 10, 14], expected)
    with pytest.raises(ValueError, match=r"'pooled64' needs \(64, 64\) images"):
        resolve_architecture("pooled64", (1, 32, 32))


def test_channels_last_gives_the_same_objective():
    model = small_model("betavae")
    x = binary_images()
    torch.manual_seed(3)
    expected = model.objective(x)[0]
    model.to(memory_format=torch.channels_last)
    torch.manual_seed(3)
    torch.testing.assert_close(model.objective(x)[0], expected, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"architecture": "conv64"}, "architecture"),
        ({"gaussian_variance": 0.1}, "gaussian_variance"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_bad_options_name_their_field(options, field):
    with pytest.raises(ConfigError) as error:
        build("stage_one", "betavae", **(SMALL | options))
    assert error.value.field == field
    with pytest.raises(ConfigError, match="discrete_dims"):
        build("stage_one", "jointvae", discrete_dims=(1,))
    with pytest.raises(ConfigError, match="capacity_max"):
        build("stage_one", "annealedvae", capacity_min=3.0, capacity_max=1.0)
    with pytest.raises(ConfigError, match="variant"):
        build("stage_one", "dipvae", variant="iii")


def test_stage_params_validate_every_model_section():
    from stages.common import ParamsError, validate_section
    from stages.train_stage_one import StageOneParams, check_model_options, model_options

    params = validate_section(StageOneParams, {"model": "dipvae", "dipvae": {"lambda_od": 3.0}}, "stage_one")
    assert params.used()["dipvae"]["lambda_od"] == 3.0 and "betatcvae" not in params.used()
    assert model_options(params)["lambda_od"] == 3.0
    assert check_model_options(params).lambda_od == 3.0
    with pytest.raises(ParamsError, match=r"unknown key 'stage_one.dipvae.beta'; allowed keys: variant, lambda_od"):
        validate_section(StageOneParams, {"dipvae": {"beta": 1.0}}, "stage_one")
    with pytest.raises(ParamsError, match=r"unknown key 'stage_one.alpha'"):
        validate_section(StageOneParams, {"alpha": 1.0}, "stage_one")
    bad = validate_section(StageOneParams, {"jointvae": {"temperature": -1.0}}, "stage_one")
    with pytest.raises(ParamsError, match=r"'stage_one.jointvae.temperature': must be > 0"):
        check_model_options(bad)  # every sub-section is checked, not only the chosen model's
    bad = validate_section(StageOneParams, {"gaussian_variance": 0.1}, "stage_one")
    with pytest.raises(ParamsError, match=r"'stage_one.gaussian_variance': is used by the Gaussian"):
        check_model_options(bad)
    with pytest.raises(ParamsError, match=r"'stage_one.architecture.*needs \(32, 32\) images"):
        check_model_options(
            validate_section(StageOneParams, {"architecture": "conv32"}, "stage_one"),
            {"image_channels": 1, "image_size": 64, "dataset_size": 100},
        )
