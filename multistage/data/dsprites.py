"""Procedural dSprites, regenerated to its published specification, and its colour / noise / texture variants.

dSprites (Matthey, Higgins, Hassabis and Lerchner 2017) is the full product of five independent factors, 64 x 64
binary images: shape (3), scale (6), orientation (40), posX (32), posY (32), 737,280 images in the original's
index order (``np.ravel_multi_index(classes.T, FACTOR_SIZES)``). Variants (``variant=``): ``binary`` (the
published set), ``color``, ``noisy`` and ``scream`` (disentanglement_lib's definitions), and ``textured`` (this
project's: a per-image colour and a sinusoidal grating inside the sprite), each with nuisance detail that the
factors do not describe. The per-image draws are a fixed function of (seed, grid index), stored as
``nuisance.<name>`` columns; `DSpritesRenderer` draws fresh ones for ``observations_from_factors``.

The geometry of each shape, the factor values and the formula of every variant: docs/datasets.md,
"Procedural dSprites".
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from multistage.data import base, sources

FACTOR_NAMES: tuple[str, ...] = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES: tuple[int, ...] = (3, 6, 40, 32, 32)
SHAPE_NAMES: tuple[str, ...] = ("square", "ellipse", "heart")
GRID_SIZE = math.prod(FACTOR_SIZES)  # 737,280
IMAGE_SIZE = 64  # the rendering size; make_dsprites(image_size=32) resamples from it
IMAGE_SIZES = (32, 64)
VARIANTS: tuple[str, ...] = ("binary", "textured", "color", "noisy", "scream")
COLOUR_NAMES: tuple[str, ...] = ("colour_r", "colour_g", "colour_b")
#: Nuisance of the textured variant.
NUISANCE_NAMES: tuple[str, ...] = (
    *COLOUR_NAMES,
    "grating_angle",
    "grating_frequency",
    "grating_phase",
)
SCREAM_NUISANCE_NAMES: tuple[str, ...] = ("photo", "crop_row", "crop_col", "shift_r", "shift_g", "shift_b")
#: The nuisance columns each variant stores (the noisy variant's per-pixel noise is not a column).
VARIANT_NUISANCE: dict[str, tuple[str, ...]] = {
    "binary": (),
    "textured": NUISANCE_NAMES,
    "color": COLOUR_NAMES,
    "noisy": (),
    "scream": SCREAM_NUISANCE_NAMES,
}
#: Columns (factors and nuisance) whose values are angles, with their period: the orientation and the grating's phase
#: wrap at 2 pi, and a grating turned by pi is the same grating (its phase aside). The evaluation's detail probes
#: score these on the circle.
CIRCULAR_PERIODS: dict[str, float] = {
    "orientation": 2.0 * math.pi,
    "grating_angle": math.pi,
    "grating_phase": 2.0 * math.pi,
}
#: Nuisance columns that index a choice (a class) rather than measure a quantity.
CATEGORICAL_NUISANCE: tuple[str, ...] = ("photo",)
COLOR_VARIANT_RANGE = (0.5, 1.0)  # disentanglement_lib ColorDSprites: colour ~ U(0.5, 1)^3
PHOTO_THUMBNAIL = (350, 274)  # disentanglement_lib ScreamDSprites: thumbnail((350, 274))

SQUARE_SIDE = 19.2  # px at scale 1
ELLIPSE_SEMI_AXES = (12.75, 7.25)  # px at scale 1, (horizontal, vertical) at orientation 0
# The heart of the original dSprites, measured on its frames (docs/datasets.md, "Procedural dSprites"): two discs
# (the lobes) joined by the two tangent lines that run down to a point. px at scale 1, v up, from the position
# point, which for the heart is not its centre of mass: the lobes' centres sit HEART_LOBE_HEIGHT above it.
HEART_LOBE_RADIUS = 5.20
HEART_LOBE_OFFSET = 4.50  # each lobe's centre from the heart's axis
HEART_LOBE_HEIGHT = 3.96
HEART_TIP_DEPTH = 12.75  # the point, below the lobes' centres
# the tangent from the point to a lobe: its slope (|u| per unit of v) and the v where it touches the lobe,
# v measured from the lobes' centres
_HEART_TANGENT_ANGLE = math.acos(-HEART_LOBE_RADIUS / math.hypot(HEART_LOBE_OFFSET, HEART_TIP_DEPTH)) - math.atan2(
    HEART_TIP_DEPTH, HEART_LOBE_OFFSET
)
_HEART_TANGENT_SLOPE = math.tan(_HEART_TANGENT_ANGLE)
_HEART_TANGENT_V = -HEART_TIP_DEPTH + (
    HEART_TIP_DEPTH * math.cos(_HEART_TANGENT_ANGLE) + HEART_LOBE_OFFSET * math.sin(_HEART_TANGENT_ANGLE)
) * math.cos(_HEART_TANGENT_ANGLE)

_WINDOW = 32  # every sprite fits in a 32 x 32 window around its centre
_CENTRE_OFFSET, _CENTRE_SPAN = 16.0, 32.0  # centre = 16 + 32 * pos (px)

# Seed streams, so each random choice is independent of the others (1 and 2, the subset and the split, are
# `multistage.data.sources`').
_NUISANCE_STREAM, _NOISE_STREAM = 3, 4
_VARIANT_STREAMS = {"color": 5, "scream": 6, "noisy": 7}

Progress = Callable[[int, int], None]


def factor_values() -> dict[str, np.ndarray]:
    """The grid values of each factor (see the module table), float64, in class order."""
    return {
        "shape": np.arange(1.0, 4.0),
        "scale": np.linspace(0.5, 1.0, 6),
        "orientation": np.linspace(0.0, 2.0 * np.pi, 40),
        "posX": np.linspace(0.0, 1.0, 32),
        "posY": np.linspace(0.0, 1.0, 32),
    }


_VALUES = factor_values()


def grid_indices(classes: np.ndarray) -> np.ndarray:
    """Index in the full grid (shape slowest, posY fastest) of each row of ``classes`` (n, 5): int64 (n,)."""
    return np.ravel_multi_index(np.asarray(classes, dtype=np.int64).T, FACTOR_SIZES).astype(np.int64)


def classes_from_grid_indices(indices: np.ndarray) -> np.ndarray:
    """Factor classes (n, 5) int64 of grid indices (n,), the inverse of `grid_indices`."""
    return np.stack(np.unravel_index(np.asarray(indices, dtype=np.int64), FACTOR_SIZES), axis=1).astype(np.int64)


def values_from_classes(classes: np.ndarray) -> np.ndarray:
    """Factor values (n, 5) float64 of factor classes (n, 5)."""
    classes = np.asarray(classes, dtype=np.int64)
    return np.stack([_VALUES[name][classes[:, k]] for k, name in enumerate(FACTOR_NAMES)], axis=1)


def _check_classes(classes: np.ndarray) -> np.ndarray:
    return base.check_factor_classes(classes, FACTOR_NAMES, FACTOR_SIZES)


# ------------------------------------------------------------------------------------------ geometry


@dataclasses.dataclass
class _Windows:
    """The 32 x 32 window of each sprite: where it sits on the canvas and its on-pixels."""

    row0: np.ndarray  # int64 (n,) canvas row of the window's first row
    col0: np.ndarray  # int64 (n,) canvas column of the window's first column
    dx: np.ndarray  # float64 (n, 32) x (right) of each window column's pixel centre from the sprite centre, px
    dy: np.ndarray  # float64 (n, 32) y (down) of each window row's pixel centre from the sprite centre, px
    masks: np.ndarray  # bool (n, 32, 32)


def _sprite_windows(classes: np.ndarray) -> _Windows:
    """Rasterise the sprites of ``classes`` (n, 5) (already checked) inside their windows.

    A screen offset (dx right, dy down) from the centre is turned into shape coordinates (u along the
    shape's own x axis, v along its own up axis) by undoing the counter-clockwise (on screen) rotation theta:
    u = dx cos theta - dy sin theta, v = -dx sin theta - dy cos theta (with y up = -dy). Each shape's
    coordinates are then divided by its size so that the inside test is size-free. Only the (n, 32) row and
    column terms are formed per image; the (n, 32, 32) planes are one broadcast add each.
    """
    shape = classes[:, 0]
    scale = _VALUES["scale"][classes[:, 1]]
    theta = _VALUES["orientation"][classes[:, 2]]
    centre_x = _CENTRE_OFFSET + _CENTRE_SPAN * _VALUES["posX"][classes[:, 3]]
    centre_y = _CENTRE_OFFSET + _CENTRE_SPAN * _VALUES["posY"][classes[:, 4]]
    col0 = np.floor(centre_x).astype(np.int64) - _WINDOW // 2
    row0 = np.floor(centre_y).astype(np.int64) - _WINDOW // 2
    pixel_centres = np.arange(_WINDOW) + 0.5
    dx = col0[:, None] + pixel_centres - centre_x[:, None]
    dy = row0[:, None] + pixel_centres - centre_y[:, None]

    # Per shape: size of one unit of shape coordinates along u and v (px), and the v of the sprite centre.
    # (the heart's unit is the pixel at scale 1, its v measured from the lobes' centres)
    unit_u = np.array([SQUARE_SIDE / 2, ELLIPSE_SEMI_AXES[0], 1.0])
    unit_v = np.array([SQUARE_SIDE / 2, ELLIPSE_SEMI_AXES[1], 1.0])
    centre_v = np.array([0.0, 0.0, -HEART_LOBE_HEIGHT])
    cos, sin = np.cos(theta)[:, None], np.sin(theta)[:, None]
    to_u = 1.0 / (unit_u[shape] * scale)[:, None]
    to_v = 1.0 / (unit_v[shape] * scale)[:, None]
    u_from_column = (dx * cos * to_u).astype(np.float32)
    u_from_row = (-dy * sin * to_u).astype(np.float32)
    v_from_column = (-dx * sin * to_v).astype(np.float32)
    v_from_row = (-dy * cos * to_v + centre_v[shape][:, None]).astype(np.float32)

    masks = np.empty((len(classes), _WINDOW, _WINDOW), dtype=bool)
    for shape_class, inside in enumerate((_inside_square, _inside_ellipse, _inside_heart)):
        rows = np.flatnonzero(shape == shape_class)
        if rows.size == 0:
            continue
        if rows.size == len(classes):
            rows = slice(None)  # the usual case for sorted grids: no gather
        u = u_from_column[rows][:, None, :] + u_from_row[rows][:, :, None]
        v = v_from_column[rows][:, None, :] + v_from_row[rows][:, :, None]
        masks[rows] = inside(u, v)
    return _Windows(row0=row0, col0=col0, dx=dx, dy=dy, masks=masks)


def _inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """max(|u|, |v|) <= 1 (u, v in half-sides); overwrites u and v."""
    np.abs(u, out=u)
    np.abs(v, out=v)
    np.maximum(u, v, out=u)
    return u <= 1.0


def _inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u^2 + v^2 <= 1 (u, v in semi-axes); overwrites u and v."""
    np.multiply(u, u, out=u)
    np.multiply(v, v, out=v)
    u += v
    return u <= 1.0


def _inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside a lobe, or inside the V from the point up to where its sides touch the lobes, or between the lobes'
    centres below them (u, v in px at scale 1 from the lobes' centres, v up); overwrites u."""
    np.abs(u, out=u)
    lobes = (u - HEART_LOBE_OFFSET) ** 2 + v * v <= HEART_LOBE_RADIUS**2
    point = (v >= -HEART_TIP_DEPTH) & (v <= _HEART_TANGENT_V) & (u <= (v + HEART_TIP_DEPTH) * _HEART_TANGENT_SLOPE)
    between = (v > _HEART_TANGENT_V) & (v <= 0.0) & (u <= HEART_LOBE_OFFSET)
    return lobes | point | between


_WINDOW_OFFSETS = (np.arange(_WINDOW)[:, None] * IMAGE_SIZE + np.arange(_WINDOW)[None, :]).astype(np.int64)


def _window_flat_indices(windows: _Windows, channels: int = 1) -> np.ndarray:
    """Flat indices (n, 32, 32) of each window's pixels in channel 0 of an (n, channels, 64, 64) canvas."""
    n = len(windows.row0)
    image_pixels = channels * IMAGE_SIZE * IMAGE_SIZE
    start = np.arange(n, dtype=np.int64) * image_pixels + windows.row0 * IMAGE_SIZE + windows.col0
    return start[:, None, None] + _WINDOW_OFFSETS


def render_masks(classes: np.ndarray) -> np.ndarray:
    """Binary sprites for factor classes ``classes`` (n, 5): uint8 (n, 64, 64) in {0, 1} (module geometry)."""
    return _binary_images(_check_classes(classes), on_value=1)


def _binary_images(classes: np.ndarray, on_value: int) -> np.ndarray:
    """uint8 (n, 64, 64): ``on_value`` inside the sprite, 0 outside; ``classes`` already checked."""
    windows = _sprite_windows(classes)
    canvas = np.zeros((len(classes), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    canvas.reshape(-1)[_window_flat_indices(windows)] = windows.masks.view(np.uint8) * np.uint8(on_value)
    return canvas


# ------------------------------------------------------------------------------------------ texture


@dataclasses.dataclass(frozen=True)
class TextureOptions:
    """Nuisance distribution of the textured variant (see the module docstring); validated on creation."""

    colour_min: float = 0.5
    colour_max: float = 1.0
    grating_frequency_min: float = 0.08
    grating_frequency_max: float = 0.2
    grating_contrast: float = 0.5
    background_noise: float = 0.0

    def __post_init__(self) -> None:
        def check(name: str, low: float, high: float, allowed: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"{name} must be a number in {allowed}, got {value!r}")

        check("colour_min", 0.0, 1.0, "[0, 1]")
        check("colour_max", self.colour_min, 1.0, f"[colour_min={self.colour_min}, 1]")
        check("grating_frequency_min", 0.0, 0.5, "[0, 0.5] cycles/px (0.5 is the Nyquist limit)")
        check(
            "grating_frequency_max",
            self.grating_frequency_min,
            0.5,
            f"[grating_frequency_min={self.grating_frequency_min}, 0.5] cycles/px",
        )
        check("grating_contrast", 0.0, 1.0, "[0, 1]")
        check("background_noise", 0.0, 1.0, "[0, 1]")


def _nuisance_from_uniforms(uniforms: np.ndarray, options: TextureOptions) -> dict[str, np.ndarray]:
    """Map U(0, 1) draws (6, n) to the nuisance distributions, in NUISANCE_NAMES order."""
    colour_span = options.colour_max - options.colour_min
    frequency_span = options.grating_frequency_max - options.grating_frequency_min
    return {
        "colour_r": options.colour_min + colour_span * uniforms[0],
        "colour_g": options.colour_min + colour_span * uniforms[1],
        "colour_b": options.colour_min + colour_span * uniforms[2],
        "grating_angle": np.pi * uniforms[3],
        "grating_frequency": options.grating_frequency_min + frequency_span * uniforms[4],
        "grating_phase": 2.0 * np.pi * uniforms[5],
    }


def _variant_nuisance(variant: str, uniforms: np.ndarray, options: TextureOptions) -> dict[str, np.ndarray]:
    """Map U(0, 1) draws (k, n), k = len(VARIANT_NUISANCE[variant]), to the variant's nuisance."""
    if variant == "textured":
        return _nuisance_from_uniforms(uniforms, options)
    if variant == "color":
        low, high = COLOR_VARIANT_RANGE
        return {name: low + (high - low) * uniforms[k] for k, name in enumerate(COLOUR_NAMES)}
    if variant == "scream":
        photos = scream_photos()
        rows, columns = photos.shape[2] - IMAGE_SIZE + 1, photos.shape[3] - IMAGE_SIZE + 1
        return {
            "photo": np.floor(uniforms[0] * len(photos)),
            "crop_row": np.floor(uniforms[1] * rows),
            "crop_col": np.floor(uniforms[2] * columns),
            "shift_r": uniforms[3],
            "shift_g": uniforms[4],
            "shift_b": uniforms[5],
        }
    return {}


def draw_nuisance(
    n: int, rng: np.random.Generator, options: TextureOptions, variant: str = "textured"
) -> dict[str, np.ndarray]:
    """Fresh nuisance of ``variant`` for ``n`` images drawn with ``rng`` (float64 arrays (n,), VARIANT_NUISANCE)."""
    return _variant_nuisance(variant, rng.random((len(VARIANT_NUISANCE[variant]), n)), options)


def _stream_key(seed: int, stream: int) -> np.uint64:
    return np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]


def _hash_bits(key: np.uint64, counters: np.ndarray) -> np.ndarray:
    """splitmix64 output for state key + counter * golden gamma (Steele, Lea and Flood 2014): uint64."""
    with np.errstate(over="ignore"):
        state = counters.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
        state ^= state >> np.uint64(30)
        state *= np.uint64(0xBF58476D1CE4E5B9)
        state ^= state >> np.uint64(27)
        state *= np.uint64(0x94D049BB133111EB)
        state ^= state >> np.uint64(31)
    return state


def grid_nuisance(
    indices: np.ndarray, seed: int, options: TextureOptions, variant: str = "textured"
) -> dict[str, np.ndarray]:
    """Nuisance of ``variant`` for grid cells ``indices`` (n,) and ``seed``: a fixed function of (seed, grid index)."""
    indices = np.asarray(indices, dtype=np.int64)
    k = len(VARIANT_NUISANCE[variant])
    if k == 0:
        return {}
    # the textured variant keeps its original counter layout (6 draws per cell), so its images do not change
    width = len(NUISANCE_NAMES)
    counters = indices[None, :] * width + np.arange(k)[:, None]
    key = _stream_key(seed, _NUISANCE_STREAM if variant == "textured" else _VARIANT_STREAMS[variant])
    uniforms = (_hash_bits(key, counters) >> np.uint64(11)) * 2.0**-53
    return _variant_nuisance(variant, uniforms, options)


def _grid_noise_bytes(indices: np.ndarray, seed: int) -> np.ndarray:
    """Uniform bytes uint8 (n, 3, 64, 64) fixed by (seed, grid index): 8 bytes from each 64-bit hash."""
    words = 3 * IMAGE_SIZE * IMAGE_SIZE // 8
    counters = np.asarray(indices, dtype=np.uint64)[:, None] * np.uint64(words) + np.arange(words, dtype=np.uint64)
    bits = _hash_bits(_stream_key(seed, _VARIANT_STREAMS["noisy"]), counters)
    return bits.view(np.uint8).reshape(len(indices), 3, IMAGE_SIZE, IMAGE_SIZE)


def _grid_background_noise(indices: np.ndarray, seed: int, amplitude: float) -> np.ndarray:
    """U(0, amplitude) per pixel and channel, float32 (n, 3, 64, 64), fixed by (seed, grid index)."""
    per_image = 3 * IMAGE_SIZE * IMAGE_SIZE
    counters = np.asarray(indices, dtype=np.uint64)[:, None] * np.uint64(per_image) + np.arange(
        per_image, dtype=np.uint64
    )
    bits = _hash_bits(_stream_key(seed, _NOISE_STREAM), counters) >> np.uint64(40)
    noise = bits.astype(np.float32) * np.float32(amplitude * 2.0**-24)
    return noise.reshape(len(indices), 3, IMAGE_SIZE, IMAGE_SIZE)


def render_textured(
    classes: np.ndarray,
    nuisance: dict[str, np.ndarray],
    grating_contrast: float = 0.5,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Textured, coloured sprites: uint8 (n, 3, 64, 64) (module docstring for the formula).

    ``nuisance`` holds the NUISANCE_NAMES arrays (n,); ``background`` (float (n, 3, 64, 64) in [0, 1]) fills
    the pixels outside the sprite, black when None.
    """
    classes = _check_classes(classes)
    missing = [name for name in NUISANCE_NAMES if name not in nuisance]
    if missing:
        raise ValueError(f"nuisance is missing {missing}")
    n = len(classes)
    windows = _sprite_windows(classes)
    angle = nuisance["grating_angle"][:, None]
    frequency = nuisance["grating_frequency"][:, None]
    # sin(A + B) with A from the column (x) and B from the row (y): sin A cos B + cos A sin B.
    column_phase = 2.0 * np.pi * frequency * windows.dx * np.cos(angle) + nuisance["grating_phase"][:, None]
    row_phase = 2.0 * np.pi * frequency * windows.dy * np.sin(angle)
    sine = np.sin(column_phase).astype(np.float32)[:, None, :] * np.cos(row_phase).astype(np.float32)[:, :, None]
    sine += np.cos(column_phase).astype(np.float32)[:, None, :] * np.sin(row_phase).astype(np.float32)[:, :, None]
    # intensity = 1 - contrast (0.5 + 0.5 sine) = (1 - contrast / 2) - (contrast / 2) sine, zero outside.
    intensity = sine
    intensity *= np.float32(-grating_contrast / 2)
    intensity += np.float32(1 - grating_contrast / 2)
    intensity *= windows.masks

    flat = _window_flat_indices(windows, channels=3)
    if background is None:
        canvas = np.zeros((n, 3, IMAGE_SIZE * IMAGE_SIZE), dtype=np.float32)
    else:
        canvas = np.asarray(background, dtype=np.float32).reshape(n, 3, IMAGE_SIZE * IMAGE_SIZE) * np.float32(255)
    canvas_flat = canvas.reshape(-1)
    for channel, name in enumerate(("colour_r", "colour_g", "colour_b")):
        value = intensity * (255.0 * nuisance[name]).astype(np.float32)[:, None, None]
        channel_flat = flat + channel * IMAGE_SIZE * IMAGE_SIZE
        if background is not None:
            value = np.where(windows.masks, value, canvas_flat[channel_flat])
        canvas_flat[channel_flat] = value
    np.rint(canvas, out=canvas)
    return canvas.astype(np.uint8).reshape(n, 3, IMAGE_SIZE, IMAGE_SIZE)


@functools.lru_cache(maxsize=1)
def scream_photos() -> np.ndarray:
    """The scream variant's background photos: float32 (P, 3, H, W) in [0, 1], read-only.

    scikit-learn's bundled sample photos (china.jpg, flower.jpg; needs pillow), each thumbnailed (aspect kept,
    Lanczos) to fit 350 x 274 as disentanglement_lib does with *The Scream*, then cropped to their common size.
    """
    from PIL import Image
    from sklearn.datasets import load_sample_images

    thumbnails = []
    for photo in load_sample_images().images:
        image = Image.fromarray(np.asarray(photo, dtype=np.uint8))
        image.thumbnail(PHOTO_THUMBNAIL, Image.Resampling.LANCZOS)
        thumbnails.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / np.float32(255))
    height = min(photo.shape[1] for photo in thumbnails)
    width = min(photo.shape[2] for photo in thumbnails)
    photos = np.stack([photo[:, :height, :width] for photo in thumbnails])
    photos.flags.writeable = False
    return photos


def _check_nuisance(variant: str, nuisance: dict[str, np.ndarray]) -> None:
    missing = [name for name in VARIANT_NUISANCE[variant] if name not in nuisance]
    if missing:
        raise ValueError(f"nuisance of the {variant} variant is missing {missing}")


def render_color(classes: np.ndarray, nuisance: dict[str, np.ndarray]) -> np.ndarray:
    """Color dSprites: the sprite times the per-image colour (COLOUR_NAMES), black background; uint8 (n, 3, 64, 64)."""
    classes = _check_classes(classes)
    _check_nuisance("color", nuisance)
    masks = _binary_images(classes, on_value=1)
    colours = np.rint(255.0 * np.stack([nuisance[name] for name in COLOUR_NAMES], axis=1)).astype(np.uint8)
    return masks[:, None] * colours[:, :, None, None]


def render_noisy(classes: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Noisy dSprites: min(sprite + noise, 1) with uint8 noise (n, 3, 64, 64): white sprite on the noise."""
    classes = _check_classes(classes)
    noise = np.asarray(noise, dtype=np.uint8)
    if noise.shape != (len(classes), 3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"noise must be uint8 ({len(classes)}, 3, 64, 64), got {noise.shape}")
    masks = _binary_images(classes, on_value=1).astype(bool)
    return np.where(masks[:, None], np.uint8(255), noise)


def render_scream(classes: np.ndarray, nuisance: dict[str, np.ndarray]) -> np.ndarray:
    """Scream dSprites stand-in: background (crop + shift) / 2, sprite 1 - background; uint8 (n, 3, 64, 64).

    ``nuisance`` holds SCREAM_NUISANCE_NAMES: the photo index into `scream_photos`, the crop's top-left corner
    (row, column) and the per-channel shift in [0, 1].
    """
    classes = _check_classes(classes)
    _check_nuisance("scream", nuisance)
    photos = scream_photos()
    photo = nuisance["photo"].astype(np.int64)
    top, left = nuisance["crop_row"].astype(np.int64), nuisance["crop_col"].astype(np.int64)
    if (
        (photo < 0).any()
        or (photo >= len(photos)).any()
        or (top < 0).any()
        or (left < 0).any()
        or (top > photos.shape[2] - IMAGE_SIZE).any()
        or (left > photos.shape[3] - IMAGE_SIZE).any()
    ):
        raise ValueError(f"scream nuisance out of range for photos of shape {photos.shape}")
    background = np.empty((len(classes), 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i, (p, row, column) in enumerate(zip(photo.tolist(), top.tolist(), left.tolist())):
        background[i] = photos[p, :, row : row + IMAGE_SIZE, column : column + IMAGE_SIZE]
    shift = np.stack([nuisance[f"shift_{c}"] for c in "rgb"], axis=1).astype(np.float32)
    background += shift[:, :, None, None]
    # b = (crop + shift) / 2; 255 b outside the sprite, 255 (1 - b) inside: with m = 1 inside, 255 b (1 - 2 m) + 255 m
    masks = _binary_images(classes, on_value=1)[:, None].astype(np.float32)
    background *= np.float32(0.5 * 255) * (np.float32(1) - np.float32(2) * masks)
    background += np.float32(255) * masks
    np.rint(background, out=background)
    return background.astype(np.uint8)


# ------------------------------------------------------------------------------------------ datasets


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _channels(variant: str) -> int:
    return 1 if variant == "binary" else 3


class DSpritesRenderer:
    """Renders new observations for given factor classes: ``renderer(classes, rng) -> uint8 (n, C, 64, 64)``.

    Binary: the sprite as 0/255. The other variants: fresh nuisance (colour, texture, crop, noise) drawn with
    ``rng`` from the variant's distribution (``options`` for the textured one), the same distribution the
    generated dataset was drawn from.
    """

    def __init__(
        self, variant: str = "binary", options: TextureOptions | None = None, image_size: int = IMAGE_SIZE
    ) -> None:
        _check_variant(variant)
        _check_image_size(image_size)
        self.variant = variant
        self.options = options if options is not None else TextureOptions()
        self.image_size = image_size

    def __call__(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        classes = _check_classes(classes)
        n = len(classes)
        if self.variant == "noisy":
            images = render_noisy(classes, rng.integers(0, 256, size=(n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8))
        else:
            background = None
            if self.variant == "textured" and self.options.background_noise > 0:
                shape = (n, 3, IMAGE_SIZE, IMAGE_SIZE)
                background = rng.random(shape, dtype=np.float32) * np.float32(self.options.background_noise)
            nuisance = draw_nuisance(n, rng, self.options, self.variant)
            images = _render_variant(self.variant, classes, nuisance, self.options, background, noise=None)
        return _downsample(images, self.image_size)

    def __repr__(self) -> str:
        return f"DSpritesRenderer(variant={self.variant!r}, options={self.options!r}, image_size={self.image_size})"


def renderer_from_meta(meta: dict) -> DSpritesRenderer:
    """The renderer of a saved dSprites dataset, from its meta.json contents."""
    params = meta.get("params", {})
    texture = params.get("texture") or {}
    return DSpritesRenderer(
        meta.get("variant", "binary"), TextureOptions(**texture), params.get("image_size", IMAGE_SIZE)
    )


def _check_image_size(image_size) -> None:
    if isinstance(image_size, bool) or image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size!r}")


def _downsample(images: np.ndarray, image_size: int) -> np.ndarray:
    """The 64 x 64 rendering brought to ``image_size`` with the antialiased resampling every stored dataset gets
    (`sources.fit_images`), so a 32 x 32 dSprites is what a user downsampling the published file would have."""
    return images if image_size == IMAGE_SIZE else sources.fit_images(images, image_size, "resize")


base.register_renderer_factory("dsprites", renderer_from_meta)


def _render_variant(
    variant: str,
    classes: np.ndarray,
    nuisance: dict[str, np.ndarray],
    options: TextureOptions,
    background: np.ndarray | None,
    noise: np.ndarray | None,
) -> np.ndarray:
    """uint8 (n, C, 64, 64) of ``variant`` for checked ``classes``, given its nuisance (and noise for noisy)."""
    if variant == "binary":
        return _binary_images(classes, on_value=255)[:, None]
    if variant == "color":
        return render_color(classes, nuisance)
    if variant == "noisy":
        return render_noisy(classes, noise)
    if variant == "scream":
        return render_scream(classes, nuisance)
    return render_textured(classes, nuisance, options.grating_contrast, background)


def _render_grid_chunk(
    classes: np.ndarray,
    indices: np.ndarray,
    nuisance: dict[str, np.ndarray],
    variant: str,
    seed: int,
    options: TextureOptions,
) -> np.ndarray:
    """Images of one chunk of a generated dataset, uint8 (n, C, 64, 64); nuisance fixed by (seed, index)."""
    background = noise = None
    if variant == "textured" and options.background_noise > 0:
        background = _grid_background_noise(indices, seed, options.background_noise)
    if variant == "noisy":
        noise = _grid_noise_bytes(indices, seed)
    return _render_variant(variant, classes, nuisance, options, background, noise)


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def make_dsprites(
    out_dir: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    variant: str = "binary",
    test_fraction: float = 0.1,
    *,
    colour_min: float = 0.5,
    colour_max: float = 1.0,
    grating_frequency_min: float = 0.08,
    grating_frequency_max: float = 0.2,
    grating_contrast: float = 0.5,
    background_noise: float = 0.0,
    image_size: int = IMAGE_SIZE,
    num_workers: int | None = None,
    chunk_size: int = 256,
    progress: Progress | None = None,
) -> base.GroundTruthDataset:
    """Generate dSprites into ``out_dir`` (images.npy, factors.parquet, meta.json) and return it loaded.

    ``n_images=None`` renders the full grid of 737,280 images in the original order; an int draws that many
    grid cells without replacement (deterministic from ``seed``) and keeps them in grid order. The test split
    is ``round(test_fraction * n)`` rows chosen at random, deterministic from ``seed``. Images are rendered in
    chunks of ``chunk_size`` by
    ``num_workers`` threads (default: the CPUs this process may use; numpy releases the GIL) straight into a
    memory map at a temporary name that is renamed when complete; ``progress(done, total)`` is called after
    each chunk. Options are validated (ValueError naming the option) before anything is written.

    ``variant`` is one of VARIANTS (module docstring): ``"binary"`` (1 channel, the published dataset),
    ``"textured"`` (texture options as in `TextureOptions`; ignored by the other variants), ``"color"``,
    ``"noisy"``, ``"scream"`` (disentanglement_lib's definitions, 3 channels).

    ``image_size`` 32 renders at 64 x 64 and resamples each image to 32 x 32 (antialiased bilinear, as
    `sources.fit_images` does for stored datasets): the resolution lever of the CPU-minute study.
    """
    _check_variant(variant)
    _check_image_size(image_size)
    options = TextureOptions(
        colour_min=colour_min,
        colour_max=colour_max,
        grating_frequency_min=grating_frequency_min,
        grating_frequency_max=grating_frequency_max,
        grating_contrast=grating_contrast,
        background_noise=background_noise,
    )
    sources.check_common_options(n_images, seed, test_fraction)
    if n_images is not None and n_images > GRID_SIZE:
        raise ValueError(f"n_images must be None (full grid) or an int in [1, {GRID_SIZE}], got {n_images!r}")
    workers = _default_workers() if num_workers is None else num_workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"num_workers must be None or an int >= 1, got {num_workers!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    seed = int(seed)

    indices = sources.choose_rows(GRID_SIZE, n_images, seed)  # grid cells, sorted
    n = len(indices)
    classes = classes_from_grid_indices(indices)
    split = sources.random_split(n, test_fraction, seed)
    nuisance = grid_nuisance(indices, seed, options, variant)

    out_dir = Path(out_dir)
    base.begin_dataset_folder(out_dir)
    shape = (n, _channels(variant), image_size, image_size)
    with base.atomic_path(out_dir / base.IMAGES_FILE) as temporary:
        images = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=shape)

        def render(start: int, target: np.ndarray = images) -> int:  # bound now: ``images`` is deleted below
            stop = min(start + chunk_size, n)
            chunk_nuisance = {name: values[start:stop] for name, values in nuisance.items()}
            target[start:stop] = _downsample(
                _render_grid_chunk(classes[start:stop], indices[start:stop], chunk_nuisance, variant, seed, options),
                image_size,
            )
            return stop - start

        done = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as executor:
            futures = [executor.submit(render, start) for start in range(0, n, chunk_size)]
            try:
                for future in concurrent.futures.as_completed(futures):
                    done += future.result()
                    if progress is not None:
                        progress(done, n)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        dataset = base.GroundTruthDataset(
            images=images,
            factor_names=FACTOR_NAMES,
            factor_sizes=FACTOR_SIZES,
            factor_classes=classes,
            factor_values=values_from_classes(classes),
            nuisance=nuisance,
            split=split,
        )
        del images
    params: dict = {
        "seed": seed,
        "n_images": None if n_images is None else int(n_images),
        "test_fraction": float(test_fraction),
    }
    if variant == "textured":
        params["texture"] = dataclasses.asdict(options)
    if image_size != IMAGE_SIZE:
        params["image_size"] = image_size
    meta = {
        "dataset": "dsprites",
        "variant": variant,
        "params": params,
        "specification": "Matthey et al. 2017 dSprites, regenerated procedurally (multistage.data.dsprites)",
    }
    base.finish_dataset_folder(dataset, out_dir, meta)
    del dataset
    return base.load_dataset(out_dir)
