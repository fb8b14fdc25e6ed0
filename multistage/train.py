"""The one training loop every model goes through.

It knows nothing of params.yaml or MLflow: a stage hands it a model, an optimiser, a ``step_fn`` that turns a
batch of dataset indices into ``(loss, logs)``, and an optional ``callback(step, logs)`` through which the stage
logs wherever it likes. The loop gives a progress bar (step, main loss terms, images/s, ETA); checkpoints written
atomically every ``checkpoint_every`` steps and at the end, read back with ``weights_only=True`` (a damaged,
foreign or misfitting file is a `CheckpointError` naming it); resume from the last checkpoint made for the same
``fingerprint`` (one made for anything else is set aside as ``<name>.stale``, ``.stale.1``, ..., never
overwritten); and a NaN guard that stops training with `NonFiniteLossError` before the optimiser touches the
weights. Batches come from `batch_indices`, a deterministic function of (seed, step), so a resumed run sees the
same data order; `linear_warmup` is the schedule of a regulariser rising from 0 to 1.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from multistage.io import atomic_path

StepFn = Callable[[np.ndarray, int], tuple[torch.Tensor, Mapping[str, float]]]
Callback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN or infinite; the last good checkpoint is left untouched."""


@dataclass
class LoopConfig:
    """How long and how a model is trained; every field is validated by the calling stage."""

    steps: int
    batch_size: int
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50
    gradient_clip: float | None = None
    progress_keys: tuple[str, ...] = ("loss", "recon")


@dataclass
class TrainResult:
    steps: int
    start_step: int
    seconds: float
    images_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def resumed(self) -> bool:
        return self.start_step > 0


def select_device(requested: str = "auto") -> torch.device:
    """The one place a device is chosen: ``cuda`` when available (or asked for), else ``cpu``."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for but CUDA is not available on this machine")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    """The one place seeds are set: Python, NumPy's legacy global state and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def linear_warmup(step: int, warmup_steps: int) -> float:
    """Weight in [0, 1] rising linearly over ``warmup_steps`` steps (1 throughout when ``warmup_steps`` is 0).

    KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): starting a VAE with the KL-side terms switched off lets
    the encoder put information into the code before the prior pulls it back; without it, beta-TCVAE on dSprites
    sits on a collapsed plateau (every KL term ~0) for thousands of steps (measured here: still collapsed after
    1,000 steps of batch 128 on binary dSprites, and after 215 steps of batch 256 on the textured variant).
    """
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def batch_indices(n_items: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices (into ``range(n_items)``) of the batch used at ``step``.

    Each epoch is a fresh permutation drawn from ``(seed, epoch)``; the batch at a step is a slice of it (wrapping
    into the next epoch when needed). Pure function of its arguments, which is what makes resume exact.
    """
    if n_items <= 0:
        raise ValueError("cannot draw batches from an empty training set")
    start = step * batch_size
    out = np.empty(batch_size, dtype=np.int64)
    filled = 0
    while filled < batch_size:
        epoch, offset = divmod(start + filled, n_items)
        permutation = np.random.default_rng([seed, epoch]).permutation(n_items)
        take = min(batch_size - filled, n_items - offset)
        out[filled : filled + take] = permutation[offset : offset + take]
        filled += take
    return out


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see half a file."""
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` if it was made for ``fingerprint``; ``None`` if absent or made for other
    params (that file is renamed ``*.stale`` so it is neither reused nor silently destroyed)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: say which, do not guess
        raise RuntimeError(f"checkpoint {path} cannot be read ({error}); delete it to start afresh") from error
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise RuntimeError(f"checkpoint {path} is not a multistage training checkpoint; delete it to start afresh")
    if state.get("fingerprint") != fingerprint:
        os.replace(path, path.with_suffix(path.suffix + ".stale"))
        return None
    return state


def _finite_gradients(parameters) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in parameters)


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: StepFn,
    n_items: int,
    config: LoopConfig,
    checkpoint_path: Path,
    fingerprint: str,
    callback: Callback | None = None,
    description: str = "train",
    show_progress: bool = True,
    extra_modules: Mapping[str, torch.nn.Module | torch.optim.Optimizer] | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.steps`` steps, resuming from ``checkpoint_path`` when it matches.

    ``step_fn(indices, step)`` computes the loss on the batch of dataset indices at that (0-based) step, which
    lets an objective follow a schedule (warm-up, capacity annealing); the loop does backward and the optimiser
    step. ``extra_modules`` are further state holders (a discriminator, its optimiser) saved and
    restored with the checkpoint. Logged values (every ``log_every`` steps and at the last step) carry
    ``images_per_second`` measured over the interval; they go to ``callback`` and into the returned history.
    """
    checkpoint_path = Path(checkpoint_path)
    extra_modules = dict(extra_modules or {})
    state = load_checkpoint(checkpoint_path, fingerprint)
    start_step = 0
    history: list[dict[str, float]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, module in extra_modules.items():
            module.load_state_dict(state["extra"][name])
        torch.set_rng_state(state["torch_rng"])
        start_step = int(state["step"])
        history = list(state.get("history", []))

    def save(step: int) -> None:
        atomic_torch_save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "extra": {name: module.state_dict() for name, module in extra_modules.items()},
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "history": history,
                "fingerprint": fingerprint,
            },
            checkpoint_path,
        )

    model.train()
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        desc=description + (" (resumed)" if start_step else ""),
        unit="step",
        disable=not show_progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    started = time.perf_counter()
    interval_start, interval_steps = started, 0
    step = start_step
    try:
        for step in range(start_step, config.steps):
            indices = batch_indices(n_items, config.batch_size, config.seed, step)
            loss, logs = step_fn(indices, step)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{description}: non-finite loss ({loss.item()}) at step {step}; terms: "
                    + ", ".join(f"{k}={v:.4g}" for k, v in logs.items() if "." not in k)
                    + f". The last good checkpoint ({checkpoint_path}) is kept; lower the learning rate "
                    "or check the data, then rerun to resume from it."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not _finite_gradients(model.parameters()):
                raise NonFiniteLossError(
                    f"{description}: non-finite gradient at step {step}; the last good checkpoint "
                    f"({checkpoint_path}) is kept."
                )
            if config.gradient_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.gradient_clip)
            optimizer.step()
            interval_steps += 1
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                now = time.perf_counter()
                record = {k: float(v) for k, v in logs.items()}
                record["images_per_second"] = interval_steps * config.batch_size / max(now - interval_start, 1e-9)
                record["step"] = float(done)
                history.append(record)
                if callback is not None:
                    callback(done, record)
                bar.set_postfix(
                    {k: f"{record[k]:.4g}" for k in config.progress_keys if k in record}
                    | {"img/s": f"{record['images_per_second']:.0f}"},
                    refresh=False,
                )
                interval_start, interval_steps = now, 0
            bar.update(1)
            if done % config.checkpoint_every == 0 and done != config.steps:
                save(done)
        step = config.steps
        save(step)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    trained = config.steps - start_step
    return TrainResult(
        steps=config.steps,
        start_step=start_step,
        seconds=seconds,
        images_per_second=trained * config.batch_size / seconds if trained and seconds > 0 else math.nan,
        history=history,
    )
