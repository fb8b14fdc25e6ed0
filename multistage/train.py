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

import errno
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from multistage.io import atomic_path

StepFn = Callable[[np.ndarray, int], tuple[torch.Tensor, Mapping[str, float]]]
Callback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(RuntimeError):
    """Raised when a loss or gradient is NaN or infinite; the last good checkpoint is left untouched."""


class CheckpointError(ValueError):
    """A checkpoint file is damaged, not a training checkpoint, or does not fit the model; the message names it."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's unpickling errors run to a page)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {requested!r}; allowed: auto, cpu, cuda, cuda:<index>, mps")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} was asked for but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {requested!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {requested!r} was asked for but MPS is not available on this machine")
    return device


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


class WriteError(OSError):
    """A file could not be written (a full disk, a quota, a file-size limit); the message names it. The temporary
    file is gone and the previous version of the file, if any, is untouched."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
DISK_FULL_WORDS = ("No space left", "File too large", "quota exceeded", "Disk quota")
# what torch's zip writer says when a write comes up short (it raises RuntimeError, not OSError)
TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for want of room (ENOSPC, EDQUOT, EFBIG, or their text)."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(error, OSError) and any(word in str(error) for word in DISK_FULL_WORDS)


def atomic_torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: readers never see half a file. A write
    that fails for want of room is a :class:`WriteError` naming ``path``."""
    try:
        with atomic_path(path) as temporary:
            torch.save(obj, temporary)
    except (OSError, RuntimeError) as error:
        if is_disk_full(error) or any(text in str(error) for text in TORCH_SHORT_WRITE):
            reason = first_line(error) if isinstance(error, OSError) else "the write came up short"
            raise WriteError(
                f"cannot write {path}: {reason} (a full disk, a quota or a file-size limit?); "
                "the previous file, if any, is untouched"
            ) from None
        raise


def load_tensors_file(path: Path, what: str = "file") -> object:
    """``torch.load(path, weights_only=True)``: only tensors and plain containers are rebuilt, never code. A file
    that holds pickled objects (a callable, a class) or is damaged raises ValueError, one line naming ``path``."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        text = str(error)
        if "GLOBAL" in text or "Unsupported global" in text:
            found = next((line.strip() for line in text.splitlines() if "GLOBAL" in line or "global" in line), "")
            raise ValueError(
                f"{what} {path} holds pickled objects other than tensors and plain values, which could "
                f"run code when loaded ({found.rstrip('.')}); refused"
            ) from None
        raise ValueError(f"{what} {path} cannot be read (not a torch file, or damaged)") from None
    except EOFError:
        raise ValueError(f"{what} {path} cannot be read (the file is empty)") from None
    except Exception as error:  # a truncated zip, a foreign format
        raise ValueError(f"{what} {path} cannot be read ({first_line(error)})") from None


def stale_path(path: Path) -> Path:
    """A free name to set ``path`` aside under: ``<name>.stale``, else ``<name>.stale.1``, ``.stale.2``, ..."""
    candidate = path.with_name(path.name + ".stale")
    number = 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.stale.{number}")
    return candidate


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at ``path`` if it was made for ``fingerprint``; ``None`` if absent or made for other
    params, data or code (that file is renamed by :func:`stale_path` so it is neither reused nor silently
    destroyed). Read with ``weights_only=True``: a file that would run code when loaded is refused."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = load_tensors_file(path, "checkpoint")
    except ValueError as error:  # a truncated, empty, foreign or unsafe file: say which, do not guess
        raise CheckpointError(f"{error}; delete it to start afresh") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CheckpointError(f"checkpoint {path} is not a multistage training checkpoint; delete it to start afresh")
    if state.get("fingerprint") != fingerprint:
        os.replace(path, stale_path(path))
        return None
    return state


def _restore(state: dict, path: Path, model, optimizer, extra_modules: Mapping) -> None:
    """Load a matching checkpoint's states; one whose tensors do not fit the model is a :class:`CheckpointError`."""
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        for name, module in extra_modules.items():
            module.load_state_dict(state["extra"][name])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError) as error:
        raise CheckpointError(
            f"checkpoint {path} was made for these params, data and code but its tensors do not "
            f"fit the model ({first_line(error)}); delete it to start afresh"
        ) from None


def _after_nan(checkpoint_path: Path) -> str:
    """What a NaN stop leaves and what a rerun does (training is deterministic, and a checkpoint is resumed only
    by the same params, data and code)."""
    change = "Change a param (a lower learning rate, a different seed) or the data, then rerun"
    if not Path(checkpoint_path).exists():
        return f"No checkpoint was written yet. {change}."
    return (
        f"The last good checkpoint ({checkpoint_path}) is kept: a rerun with the same params resumes from it "
        f"and meets the same NaN. {change}: training starts again from step 0 and the old checkpoint is set "
        "aside as a .stale file."
    )


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
        _restore(state, checkpoint_path, model, optimizer, extra_modules)
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
                    + f". {_after_nan(checkpoint_path)}"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not _finite_gradients(model.parameters()):
                raise NonFiniteLossError(
                    f"{description}: non-finite gradient at step {step}. {_after_nan(checkpoint_path)}"
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
