"""The training loop: deterministic batches, exact resume, the NaN guard, checkpoints for other params."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multistage.train import (
    CheckpointError,
    LoopConfig,
    NonFiniteLossError,
    batch_indices,
    linear_warmup,
    load_checkpoint,
    train,
)


def test_linear_warmup():
    assert linear_warmup(0, 0) == 1.0 and linear_warmup(500, 0) == 1.0
    assert linear_warmup(0, 4) == 0.25 and linear_warmup(1, 4) == 0.5 and linear_warmup(3, 4) == 1.0
    assert linear_warmup(10, 4) == 1.0


def test_batches_cover_each_epoch_once_and_depend_only_on_seed_and_step():
    n, batch = 10, 4
    steps = [batch_indices(n, batch, seed=3, step=s) for s in range(5)]  # 20 draws = 2 epochs
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert np.array_equal(batch_indices(n, batch, 3, 2), steps[2])
    assert not np.array_equal(batch_indices(n, batch, 4, 0), steps[0])
    with pytest.raises(ValueError, match="empty"):
        batch_indices(0, 4, 0, 0)


def _problem(seed=0):
    fixed = torch.Generator().manual_seed(0)
    data = torch.randn(64, 3, generator=fixed)
    target = data @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(64, generator=fixed)
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)

    def step_fn(indices, step):
        noise = 0.01 * torch.randn(len(indices))  # uses the global RNG: resume must restore it
        loss = ((model(data[indices]).squeeze(1) - target[indices] + noise) ** 2).mean()
        return loss, {"loss": loss.item()}

    return model, optimizer, step_fn


def test_resumed_training_equals_uninterrupted(tmp_path):
    config = LoopConfig(steps=30, batch_size=8, seed=1, checkpoint_every=10, log_every=5)
    model, optimizer, step_fn = _problem()
    straight = train(model, optimizer, step_fn, 64, config, tmp_path / "a.pt", "f", show_progress=False)

    # the same run, stopped after 20 steps (as a kill after the step-20 checkpoint would), then resumed
    model_b, optimizer_b, step_fn_b = _problem()
    train(
        model_b,
        optimizer_b,
        step_fn_b,
        64,
        LoopConfig(**{**config.__dict__, "steps": 20}),
        tmp_path / "b.pt",
        "f",
        show_progress=False,
    )
    state = torch.load(tmp_path / "b.pt", weights_only=True)
    state["step"] = 20  # the step-20 checkpoint of a 30-step run
    torch.save(state, tmp_path / "b.pt")
    model_c, optimizer_c, step_fn_c = _problem(seed=99)  # fresh weights: everything must come from the checkpoint
    resumed = train(model_c, optimizer_c, step_fn_c, 64, config, tmp_path / "b.pt", "f", show_progress=False)
    assert resumed.start_step == 20 and resumed.resumed
    assert [r["step"] for r in resumed.history] == [r["step"] for r in straight.history]
    for name, value in model.state_dict().items():
        assert torch.allclose(value, model_c.state_dict()[name], atol=1e-6), name
    assert resumed.history[-1]["loss"] == pytest.approx(straight.history[-1]["loss"], rel=1e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    model, optimizer, step_fn = _problem()
    calls = {"n": 0}

    def exploding(indices, step):
        calls["n"] += 1
        loss, logs = step_fn(indices, step)
        return (loss * float("nan"), logs) if calls["n"] == 13 else (loss, logs)

    config = LoopConfig(steps=30, batch_size=8, checkpoint_every=5, log_every=5)
    with pytest.raises(NonFiniteLossError, match="step 12.*last good checkpoint"):
        train(model, optimizer, exploding, 64, config, tmp_path / "c.pt", "f", show_progress=False)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights


def test_checkpoint_for_other_params_is_set_aside(tmp_path):
    model, optimizer, step_fn = _problem()
    config = LoopConfig(steps=10, batch_size=8, checkpoint_every=5, log_every=5)
    train(model, optimizer, step_fn, 64, config, tmp_path / "d.pt", "old", show_progress=False)
    assert load_checkpoint(tmp_path / "d.pt", "new") is None
    assert (tmp_path / "d.pt.stale").exists() and not (tmp_path / "d.pt").exists()
    (tmp_path / "e.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="e.pt cannot be read"):
        load_checkpoint(tmp_path / "e.pt", "f")
