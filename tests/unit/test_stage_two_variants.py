"""The stage-two interface (multistage/models/stage_two/base.py) and the baselines and ablations of issue 6 at tiny
size: neutral settings against independent computations, the Big-VAE parameter match, the AdaIN vs concatenation
paths, the Z-first phases, and the stage's params (sub-sections, values taken from stage one)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multistage.models import build
from multistage.models.stage_one.base import gaussian_kl_per_unit, gaussian_log_density
from multistage.models.stage_one.betatcvae import BetaTCVAE, BetaTCVAEConfig
from multistage.models.stage_two.ablations import CodeDecoder
from multistage.models.stage_two.base import StageTwoModel
from multistage.models.stage_two.baselines import (
    big_vae_parameter_count,
    match_parameter_count,
    parameter_count,
)

MINE = ("msvae", "betatcvae_l", "bigvae", "end_to_end", "c_input", "concat", "z_first")
SHAPE = (3, 32, 32)
CODE, RESIDUAL = 4, 2
NEUTRAL = {"alpha": 1.0, "beta": 1.0, "gamma": 1.0, "warmup_steps": 0}


def tiny(name: str, **options) -> StageTwoModel:
    """``name`` at 3 x 32 x 32 with |C| = 4, |Z| = 2 (and N = 64 where the model needs it)."""
    from multistage.models.registry import STAGE_TWO

    fields = STAGE_TWO[name][1].__dataclass_fields__
    base = {"image_channels": 3, "image_size": 32, "residual_dim": RESIDUAL}
    base |= {k: v for k, v in {"code_dim": CODE, "dataset_size": 64, "base_channels": 8}.items() if k in fields}
    return build("stage_two", name, **(base | options))


def condition(model: StageTwoModel, n: int) -> torch.Tensor | None:
    return {"y": torch.rand(n, *SHAPE), "c": torch.randn(n, CODE), "none": None}[model.conditioning]


@pytest.mark.parametrize("name", MINE)
def test_every_variant_keeps_the_interface(name):
    torch.manual_seed(0)
    model = tiny(name)
    x, n = torch.rand(6, *SHAPE), 6
    cond = condition(model, n)
    loss, logs = model.objective(x, cond, 0)
    value = float(loss.detach())
    assert loss.ndim == 0 and math.isfinite(value) and logs["loss"] == pytest.approx(value)
    assert {"recon"} <= set(logs) and all(isinstance(v, float) for v in logs.values())
    loss.backward()
    assert any(p.grad is not None for p in model.optimised_parameters())
    model.eval()
    z = model.infer_residual(x, cond)
    assert z.shape == (n, model.latent_dim) and model.sample_residual(n).shape == (n, model.latent_dim)
    for images in (model.generate(cond, z), model.reconstruct(x, cond), model.sample(cond, n=n)):
        assert images.shape == (n, *SHAPE) and images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(model.reconstruct(x, cond), model.generate(cond, z))
    generator = torch.Generator().manual_seed(3)
    torch.testing.assert_close(
        model.sample(cond, n=n, generator=generator),
        model.generate(cond, torch.randn(n, model.latent_dim, generator=torch.Generator().manual_seed(3))),
    )
    if model.conditioning == "none":
        assert model.latent_dim == CODE + RESIDUAL and model.code(x).shape[0] == n
    else:
        assert model.latent_dim == RESIDUAL
        with pytest.raises(NotImplementedError):
            model.code(x)


# ------------------------------------------------------------------------------------------------ neutral points
def test_code_penalty_at_alpha_beta_gamma_one_is_the_monte_carlo_kl():
    """beta-TCVAE eq. 3: MI + TC + dim-KL = E[log q(c|x) - log p(c)] on the same sample, for any estimator."""
    torch.manual_seed(1)
    model = tiny("end_to_end", **NEUTRAL)
    mu, logvar = torch.randn(16, CODE), torch.randn(16, CODE) * 0.3
    c = mu + torch.exp(0.5 * logvar) * torch.randn(16, CODE)
    penalty, terms = model.code_penalty(c, mu, logvar, None)
    expected = (gaussian_log_density(c, mu, logvar).sum(1) - gaussian_log_density(c, 0 * c, 0 * c).sum(1)).mean()
    assert float(penalty) == pytest.approx(float(expected), rel=1e-5, abs=1e-5)
    assert terms["regularisation_weight"] == 1.0
    warm = tiny("end_to_end", **(NEUTRAL | {"warmup_steps": 4}))
    assert float(warm.code_penalty(c, mu, logvar, 0)[0]) == pytest.approx(float(expected) / 4, rel=1e-5)


def test_end_to_end_loss_is_recon_plus_penalty_on_c_plus_kl_on_z():
    model = tiny("end_to_end", **NEUTRAL)
    x = torch.rand(8, *SHAPE)
    torch.manual_seed(5)
    loss, logs = model.objective(x, None, None)
    torch.manual_seed(5)  # the same reparameterisation noise, computed here independently
    mu, logvar = model.encoder(x).chunk(2, dim=1)
    latent = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    c, z = latent[:, :CODE], latent[:, CODE:]
    y = torch.sigmoid(model.code_decoder(c))
    recon = F.binary_cross_entropy_with_logits(model.adain_decoder(y, z), x, reduction="sum") / len(x)
    kl_c = (
        gaussian_log_density(c, mu[:, :CODE], logvar[:, :CODE]).sum(1) - gaussian_log_density(c, 0 * c, 0 * c).sum(1)
    ).mean()
    kl_z = gaussian_kl_per_unit(mu[:, CODE:], logvar[:, CODE:]).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float((recon + kl_c + kl_z).detach()), rel=1e-5)
    assert logs["kl_z"] == pytest.approx(float(kl_z.detach()), rel=1e-5)


def test_bigvae_at_beta_one_is_the_plain_elbo():
    model = tiny("bigvae", beta=1.0)
    x = torch.rand(8, *SHAPE)
    torch.manual_seed(2)
    loss, logs = model.objective(x, None, 0)
    torch.manual_seed(2)
    mu, logvar = model.encode(x)
    logits = model.decoder(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(1).mean()
    assert float(loss.detach()) == pytest.approx(float((recon + kl).detach()), rel=1e-5)
    assert logs["kl"] == pytest.approx(float(kl.detach()), rel=1e-5)


def test_betatcvae_l_is_the_stage_one_model_with_c_plus_z_latents():
    model = tiny("betatcvae_l", beta=6.0, warmup_steps=3)
    assert isinstance(model.vae, BetaTCVAE) and model.vae.config.latent_dim == CODE + RESIDUAL
    reference = BetaTCVAE(
        BetaTCVAEConfig(
            image_channels=3, image_size=32, latent_dim=CODE + RESIDUAL, beta=6.0, warmup_steps=3, dataset_size=64
        )
    )
    reference.load_state_dict(model.vae.state_dict())
    x = torch.rand(8, *SHAPE)
    torch.manual_seed(4)
    loss, _ = model.objective(x, None, 1)
    torch.manual_seed(4)
    assert float(loss.detach()) == pytest.approx(float(reference.objective(x, 1)[0].detach()), rel=1e-6)


def test_code_conditioned_variants_at_beta_zero_are_their_reconstruction_term():
    for name in ("c_input", "concat"):
        model = tiny(name, beta=0.0)
        x, c = torch.rand(4, *SHAPE), torch.randn(4, CODE)
        loss, logs = model.objective(x, c, 0)
        assert float(loss.detach()) == pytest.approx(logs["recon"], rel=1e-6) and logs["kl"] > 0


# ------------------------------------------------------------------------------------------------ Big-VAE size
def test_big_vae_count_formula_and_the_match_to_ms_vae():
    for b, h in ((8, 16), (32, 256), (45, 301)):
        model = tiny("bigvae", base_channels=b, hidden_units=h)
        assert parameter_count(model) == big_vae_parameter_count(3, 32, CODE + RESIDUAL, b, h)
    # the default sizes on 3 x 64 x 64: stage one (beta-TCVAE, 10 latents) + MS-VAE stage two (|Z| = 5)
    stage_one = BetaTCVAE(BetaTCVAEConfig(image_channels=3, image_size=64, latent_dim=10, dataset_size=100))
    msvae = build("stage_two", "msvae", image_channels=3, image_size=64, residual_dim=5)
    target = parameter_count(stage_one) + parameter_count(msvae)
    big = build(
        "stage_two", "bigvae", image_channels=3, image_size=64, code_dim=10, residual_dim=5, target_parameters=target
    )
    assert abs(parameter_count(big) - target) <= 0.005 * target  # the stated tolerance: 0.5%
    assert big.config.base_channels > 32 and (
        big.config.base_channels,
        big.config.hidden_units,
    ) == match_parameter_count(3, 64, 15, target)
    rebuilt = build("stage_two", "bigvae", **{k: getattr(big.config, k) for k in big.config.__dataclass_fields__})
    assert parameter_count(rebuilt) == parameter_count(big)  # the saved config rebuilds the same network


# ------------------------------------------------------------------------------------------------ injection paths
def test_adain_keeps_z_out_of_the_code_path_and_concat_puts_it_in():
    torch.manual_seed(0)
    adain = CodeDecoder(CODE, RESIDUAL, 3, 32, "adain")
    concat = CodeDecoder(CODE, RESIDUAL, 3, 32, "concat")
    assert adain.fully_connected[0].in_features == CODE and concat.fully_connected[0].in_features == CODE + RESIDUAL
    c, z1, z2 = torch.randn(4, CODE), torch.randn(4, RESIDUAL), torch.randn(4, RESIDUAL)
    # AdaIN starts as plain instance normalisation (gamma = 1, beta = 0): z has no effect until trained
    torch.testing.assert_close(adain(c, z1), adain(c, z2))
    assert not torch.allclose(concat(c, z1), concat(c, z2))
    for normalisation in adain.normalisations:  # once the modulation is trained, z acts only through AdaIN
        torch.nn.init.normal_(normalisation.modulation_network[-1].weight, std=0.5)
    assert not torch.allclose(adain(c, z1), adain(c, z2))
    z = z1.clone().requires_grad_(True)
    features = adain.fully_connected(c)  # the code path never sees z
    assert features.grad_fn is not None and z.grad is None
    adain(c, z).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------------ Z first
def test_z_first_trains_z_then_c_with_z_frozen():
    model = tiny("z_first", z_steps=2, **NEUTRAL)
    x = torch.rand(8, *SHAPE)
    groups = {
        "residual": list(model.residual_encoder.parameters()) + list(model.residual_decoder.parameters()),
        "code": list(model.code_encoder.parameters()) + list(model.decoder.parameters()),
    }

    def touched(step: int) -> dict[str, bool]:
        model.zero_grad(set_to_none=True)
        loss, logs = model.objective(x, None, step)
        loss.backward()
        return {name: any(p.grad is not None for p in ps) for name, ps in groups.items()} | {"phase": logs["phase"]}

    assert touched(0) == {"residual": True, "code": False, "phase": 1.0}
    assert touched(2) == {"residual": False, "code": True, "phase": 2.0}
    assert touched(1)["phase"] == 1.0 and model.objective(x, None, None)[1]["phase"] == 2.0
    latent = model.infer_residual(x, None)
    torch.testing.assert_close(latent[:, CODE:], model.residual_encoder(x)[:, :RESIDUAL])


# ------------------------------------------------------------------------------------------------ the stage's params
def test_stage_params_sub_sections_and_values_from_stage_one():
    from stages.common import ParamsError, validate_section
    from stages.train_stage_two import StageTwoParams, build_variant, model_options

    raw = {
        "variants": ["msvae", "bigvae", "z_first"],
        "residual_dim": 2,
        "steps": 4,
        "msvae": {"base_channels": 8},
        "z_first": {"z_steps": 3, "beta": 9.0, "learning_rate": 0.01},
    }
    params = validate_section(StageTwoParams, raw, "stage_two")
    assert params.training("z_first")["learning_rate"] == 0.01 and params.training("msvae")["learning_rate"] == 1e-3
    stage_one = BetaTCVAE(
        BetaTCVAEConfig(image_channels=3, image_size=32, latent_dim=CODE, beta=6.0, alpha=0.5, dataset_size=64)
    )
    options = model_options(params, "z_first", SHAPE, stage_one, dataset_size=64)
    assert options["code_dim"] == CODE and options["alpha"] == 0.5  # from stage one
    assert options["beta"] == 9.0 and options["z_steps"] == 3 and options["dataset_size"] == 64  # its own
    big = build_variant(params, "bigvae", SHAPE, stage_one)
    msvae = build_variant(params, "msvae", SHAPE)
    target = parameter_count(stage_one) + parameter_count(msvae)
    assert big.config.target_parameters == target and abs(parameter_count(big) - target) <= 0.01 * target
    for bad, key in (
        ({"concat": {"injection": "adain"}}, "unknown key 'stage_two.concat.injection'"),
        ({"variants": ["msvae", "gan"]}, "stage_two.variants.1"),
        ({"variants": ["msvae", "msvae"]}, "each variant at most once"),
    ):
        with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
            validate_section(StageTwoParams, raw | bad, "stage_two")
    negative = validate_section(StageTwoParams, raw | {"z_first": {"z_steps": -1}}, "stage_two")
    with pytest.raises(ParamsError, match=r"'stage_two\.z_first\.z_steps': must be >= 0"):
        build_variant(negative, "z_first", SHAPE, stage_one, 64)
