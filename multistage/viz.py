"""Figures: reconstruction triplets, latent traversals, training curves.

Image grids are torchvision's ``make_grid``/``save_image``; curves are matplotlib (Agg, no display needed). Both
are imported by the functions that draw: torchvision's import takes seconds (its models and operators come with
it), and `python -m stages.check_params` imports this module without drawing.
Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from multistage.io import atomic_path


def _replace_into(path: Path, write: Callable[[str], None]) -> Path:
    with atomic_path(path) as temporary:
        write(str(temporary))
    return Path(path)


def _as_rgb(images: torch.Tensor) -> torch.Tensor:
    images = images.detach().float().cpu().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def save_rows(path: str | Path, rows: Sequence[torch.Tensor], padding: int = 2) -> Path:
    """Save equally long rows of images (each ``(n, C, H, W)`` in [0, 1]) as one grid, one row per tensor."""
    if not rows:
        raise ValueError("no rows to draw")
    width = rows[0].shape[0]
    if any(r.shape[0] != width for r in rows):
        raise ValueError("every row must hold the same number of images")
    from torchvision.utils import make_grid, save_image  # here: importing torchvision takes seconds (module doc)

    grid = make_grid(torch.cat([_as_rgb(r) for r in rows]), nrow=width, padding=padding, pad_value=1.0)
    return _replace_into(Path(path), lambda tmp: save_image(grid, tmp))


def readable_scale(images: torch.Tensor) -> int:
    """The nearest-neighbour upscaling that draws images of this size at least 128 px wide (4x for 32 px)."""
    return max(1, -(-128 // int(images.shape[-1])))


def reconstruction_triplets(
    path: str | Path, x: torch.Tensor, y: torch.Tensor, x_hat: torch.Tensor, x_hat_label: str = "X-hat (stage two)"
) -> Path:
    """Labelled rows X | Y | X-hat (the data, the stage-one reconstruction, the stage-two reconstruction), upscaled
    so that small images can be read (``readable_scale``)."""
    return save_labelled_grid(path, [x, y, x_hat], ["X", "Y (stage one)", x_hat_label], scale=readable_scale(x))


def save_labelled_grid(
    path: str | Path,
    rows: Sequence[torch.Tensor],
    row_labels: Sequence[str],
    column_labels: Sequence[str] = (),
    title: str = "",
    scale: int = 4,
) -> Path:
    """Rows of images (each ``(n, C, H, W)`` in [0, 1]) as one grid, every image upscaled ``scale`` times
    (nearest neighbour, so pixels stay pixels), with a label left of each row and, optionally, above each column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(row_labels) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(row_labels)} row labels")
    width = rows[0].shape[0]
    if any(r.shape[0] != width for r in rows) or (column_labels and len(column_labels) != width):
        raise ValueError("every row must hold the same number of images, one per column label")
    images = torch.cat([_as_rgb(r) for r in rows])
    height, side = images.shape[-2:]
    images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    padding = max(1, scale)
    from torchvision.utils import make_grid

    grid = make_grid(images, nrow=width, padding=padding, pad_value=1.0).permute(1, 2, 0).numpy()
    cell_y, cell_x = height * scale + padding, side * scale + padding
    dpi = 100
    label_room = 1.4 + 0.06 * max(len(label) for label in row_labels)
    figure = plt.figure(figsize=(grid.shape[1] / dpi + label_room, grid.shape[0] / dpi + 0.6), dpi=dpi)
    axis = figure.add_axes((label_room / (grid.shape[1] / dpi + label_room), 0.02, 1.0, 0.9))
    axis.imshow(grid, interpolation="nearest")
    axis.set_yticks([padding + cell_y * (i + 0.5) for i in range(len(rows))], list(row_labels), fontsize=9)
    if column_labels:
        axis.set_xticks([padding + cell_x * (j + 0.5) for j in range(width)], list(column_labels), fontsize=8)
        axis.xaxis.tick_top()
    else:
        axis.set_xticks([])
    axis.tick_params(length=0)
    for spine in axis.spines.values():
        spine.set_visible(False)
    if title:  # above the column labels; the tight bounding box below makes room for both
        axis.set_title(title, fontsize=10, pad=22 if column_labels else 6)
    try:
        return _replace_into(Path(path), lambda tmp: figure.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(figure)


def discrete_traversal(
    decode: Callable[[torch.Tensor], torch.Tensor],
    base_code: torch.Tensor,
    block: tuple[int, int],
    unit: int,
    values: torch.Tensor,
) -> list[torch.Tensor]:
    """JointVAE figure 5: one row per value k of the discrete code occupying columns ``block = (start, size)`` of
    the code (set to the one-hot of k), the columns traversing continuous ``unit`` over ``values``."""
    start, size = block
    rows = []
    for k in range(size):
        codes = base_code.reshape(1, -1).repeat(len(values), 1)
        codes[:, start : start + size] = 0.0
        codes[:, start + k] = 1.0
        codes[:, unit] = values
        with torch.no_grad():
            rows.append(decode(codes))
    return rows


def traversal_values(limit: float = 2.5, count: int = 9) -> torch.Tensor:
    return torch.linspace(-limit, limit, count)


def latent_traversal(
    decode: Callable[[torch.Tensor], torch.Tensor],
    base_code: torch.Tensor,
    values: torch.Tensor,
    dims: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """One row per latent dimension (all, or ``dims``): ``base_code`` with that dimension set to each of
    ``values``, decoded.

    ``decode`` maps codes ``(n, L)`` to images ``(n, C, H, W)`` in [0, 1].
    """
    rows = []
    for dim in range(base_code.shape[-1]) if dims is None else dims:
        codes = base_code.reshape(1, -1).repeat(len(values), 1)
        codes[:, dim] = values
        with torch.no_grad():
            rows.append(decode(codes))
    return rows


def plot_curves(path: str | Path, history: Sequence[dict], keys: Sequence[str], title: str = "") -> Path:
    """Training curves: one panel per key against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in record for record in history)]
    figure, axes = plt.subplots(1, max(len(keys), 1), figsize=(3.2 * max(len(keys), 1), 2.6), squeeze=False)
    steps = np.array([record["step"] for record in history])
    for axis, key in zip(axes[0], keys):
        axis.plot(steps, [record.get(key, np.nan) for record in history])
        axis.set_title(key, fontsize=9)
        axis.set_xlabel("step", fontsize=8)
        axis.tick_params(labelsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    try:
        return _replace_into(Path(path), lambda tmp: figure.savefig(tmp, dpi=110))
    finally:
        plt.close(figure)


def plot_bars(path: str | Path, values: Sequence[float], labels: Sequence[str], title: str, ylabel: str) -> Path:
    """A bar chart, e.g. KL per latent unit ranked (JointVAE paper, Figure 8)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(max(3.0, 0.4 * len(values) + 1), 2.6))
    axis.bar(range(len(values)), values)
    axis.set_xticks(range(len(values)), labels, fontsize=7)
    axis.set_ylabel(ylabel, fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    try:
        return _replace_into(Path(path), lambda tmp: figure.savefig(tmp, dpi=110))
    finally:
        plt.close(figure)
