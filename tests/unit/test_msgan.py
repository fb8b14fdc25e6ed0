"""MS-GAN (MS-VAE appendix E): the discriminator judges pairs [x, y], z reaches the generator only through AdaIN,
the adversary trains inside the objective without NaNs, and a resumed run keeps the discriminator's optimiser.
Tiny (32 x 32, narrow networks) and single-threaded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multistage.models import registry
from multistage.models.stage_two.base import ConfigError
from multistage.models.stage_two.msgan import MSGAN, MSGANConfig, discriminator_loss, frozen, generator_loss
from multistage.nn.adain import AdaIN
from multistage.train import LoopConfig, train

torch.set_num_threads(1)

TINY = {
    "image_channels": 1,
    "image_size": 32,
    "residual_dim": 3,
    "base_channels": 8,
    "adain_hidden": 8,
    "discriminator_channels": 8,
}


def tiny_gan(seed: int = 0, **options) -> MSGAN:
    torch.manual_seed(seed)
    return registry.build("stage_two", "msgan", **(TINY | options))


def toy_pairs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright squares x at random places and y, their blurred copies: a residual (the sharp edge) to learn."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, 32, 32)
    corners = torch.randint(2, 20, (n, 2), generator=generator)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, 0, r : r + 10, c : c + 10] = 1.0
    y = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2)
    return x, y


def test_discriminator_sees_the_image_concatenated_with_y():
    model = tiny_gan()
    first = model.discriminator.network[0]
    assert first.in_channels == 2 * TINY["image_channels"]
    x, y = toy_pairs(4)
    model.eval()
    with torch.no_grad():
        base = model.discriminator(x, y)
        assert base.shape == (4,)
        assert not torch.allclose(model.discriminator(x, y.flip(0)), base)  # same images, other y: other logits
        assert not torch.allclose(model.discriminator(x.flip(0), y), base)


def test_z_reaches_the_generator_only_through_adain():
    model = tiny_gan()
    adains = [m for m in model.generator.modules() if isinstance(m, AdaIN)]
    assert len(adains) == 5  # one after every convolution of the encoder-decoder
    for adain in adains:  # the modulation starts at zero (gamma = 1, beta = 0): make it depend on z
        torch.nn.init.normal_(adain.modulation_network[-1].weight, std=0.5)
    torch.nn.init.normal_(model.generator.residual_head.weight, std=0.5)  # and the head starts at zero too
    x, y = toy_pairs(3)
    z1, z2 = torch.randn(3, 3), torch.randn(3, 3)
    with torch.no_grad():
        assert not torch.allclose(model.generate(y, z1), model.generate(y, z2), atol=1e-4)
        # the same generator with every AdaIN's gamma(z), beta(z) fixed to its value at z1: z2 then changes nothing,
        # so z has no path into G but the AdaIN statistics
        fixed = {adain: None for adain in adains}
        originals = {adain: adain.modulation for adain in adains}

        def recording(adain):
            def modulation(z):
                if fixed[adain] is None:
                    fixed[adain] = originals[adain](z)
                return fixed[adain]

            return modulation

        for adain in adains:
            adain.modulation = recording(adain)
        out1 = model.generate(y, z1)
        out2 = model.generate(y, z2)
    assert torch.equal(out1, out2)


def test_generator_starts_at_y_and_only_the_generator_is_the_loops():
    model = tiny_gan()
    _, y = toy_pairs(2)
    with torch.no_grad():
        assert torch.allclose(model.generate(y, torch.randn(2, 3)), y.clamp(1e-4, 1 - 1e-4), atol=1e-6)
    loop = {id(p) for p in model.optimised_parameters()}
    assert loop == {id(p) for p in model.generator.parameters()}
    assert not loop & {id(p) for p in model.discriminator.parameters()}
    assert set(model.auxiliary_state()) == {"discriminator_optimizer"}


@pytest.mark.parametrize("loss", ["nonsaturating", "hinge"])
def test_adversarial_steps_move_both_players_as_expected(loss):
    """Each player's step does what it should against the other held fixed: the objective's discriminator steps
    (the generator's loss never applied) lower D's loss and raise its accuracy on the toy pairs; generator steps
    against that D, frozen, lower G's loss and raise D's; joint training stays finite."""
    model = tiny_gan(loss=loss, discriminator_learning_rate=1e-3)
    x, y = toy_pairs()
    model.train()
    first = model.objective(x, y, 0)[1]
    for step in range(1, 20):  # D steps only
        model.objective(x, y, step)
    d_before = {k: v.clone() for k, v in model.discriminator.state_dict().items()}
    model.eval()  # eval mode: the objective changes nothing
    trained = model.objective(x, y)[1]
    assert all(torch.equal(v, model.discriminator.state_dict()[k]) for k, v in d_before.items())
    assert trained["discriminator_loss"] < first["discriminator_loss"] - 0.1
    assert trained["discriminator_real"] > trained["discriminator_fake"] + 0.05

    z = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(5))

    def losses() -> tuple[float, float]:
        with torch.no_grad():
            fake = model.generate(y, z)
            real_logits, fake_logits = model.discriminator(x, y), model.discriminator(fake, y)
            return (generator_loss(fake_logits, loss).item(), discriminator_loss(real_logits, fake_logits, loss).item())

    g_start, d_start = losses()
    optimiser = torch.optim.Adam(model.optimised_parameters(), lr=2e-3, betas=(0.5, 0.999))
    with frozen(model.discriminator):
        for _ in range(10):
            g = generator_loss(model.discriminator(model.generate(y, z), y), loss)
            optimiser.zero_grad()
            g.backward()
            optimiser.step()
    g_end, d_end = losses()
    assert g_end < g_start and d_end > d_start, (g_start, g_end, d_start, d_end)

    model.train()
    for step in range(10):
        generator_step_loss, step_logs = model.objective(x, y, step)
        optimiser.zero_grad()
        generator_step_loss.backward()
        optimiser.step()
        assert all(math.isfinite(v) for v in step_logs.values())


def test_generator_loss_does_not_train_the_discriminator():
    model = tiny_gan()
    x, y = toy_pairs(8)
    model.train()
    loss, _ = model.objective(x, y, 0)
    for p in model.discriminator.parameters():
        p.grad = None
    loss.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())


def test_resume_round_trips_the_discriminator_and_its_optimiser(tmp_path):
    x, y = toy_pairs(32)

    def run(path, steps, seed):
        model = tiny_gan(seed=seed)
        optimiser = torch.optim.Adam(model.optimised_parameters(), lr=1e-3)
        config = LoopConfig(steps=steps, batch_size=8, seed=0, checkpoint_every=2, log_every=2)
        step_fn = lambda batch, step: model.objective(x[np.sort(batch)], y[np.sort(batch)], step)  # noqa: E731
        result = train(
            model,
            optimiser,
            step_fn,
            len(x),
            config,
            path,
            "fingerprint",
            show_progress=False,
            extra_modules=model.auxiliary_state(),
        )
        return model, result

    straight, _ = run(tmp_path / "a.pt", 4, seed=0)
    run(tmp_path / "b.pt", 2, seed=0)
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    assert state["extra"]["discriminator_optimizer"]["state"]  # Adam moments of D are in the checkpoint
    resumed, result = run(tmp_path / "b.pt", 4, seed=7)  # other initial weights: all must come from the file
    assert result.start_step == 2
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    a, b = straight.discriminator_optimizer.state_dict(), resumed.discriminator_optimizer.state_dict()
    for key in a["state"]:
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(a["state"][key][moment], b["state"][key][moment])


def test_no_encoder_and_config_errors():
    model = tiny_gan()
    with pytest.raises(NotImplementedError):
        model.infer_residual(*toy_pairs(2))
    assert model.sample(toy_pairs(2)[1]).shape == (2, 1, 32, 32)
    with pytest.raises(ConfigError, match="loss"):
        MSGANConfig(loss="wasserstein")
    with pytest.raises(ConfigError, match="discriminator_learning_rate"):
        MSGANConfig(discriminator_learning_rate=0.0)
    assert MSGAN(MSGANConfig(image_size=64, discriminator_channels=4)).discriminator(
        torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    ).shape == (1,)
