"""Detail recovery: how much of what the factors do not describe (colour, texture, ...) an image set still carries,
read by probes trained on real images only.

Stage one keeps the factors and drops the rest; stage two is meant to bring the rest back (MS-VAE sec. 1, 4). A
dataset's nuisance columns (``nuisance.<name>``: colour, grating angle / frequency / phase, ...) name that rest.
For each column (nuisance and factors alike) a probe is fitted on the features of real images (``probe_features``,
from rows disjoint from the scored ones) and then reads the same column off the features of three sets of the
scored rows: the real images X (the ceiling), stage one's reconstructions Y (the floor) and a stage-two X-hat.
The probe never sees a reconstruction while it is fitted, so a reconstruction scores well only where it looks like
the real image in what the column describes.

The probe: a ridge regression (``sklearn.linear_model.Ridge``) on standardised features for continuous and
circular columns, a multinomial logistic regression for class columns. The evaluate stage gives it the fixed,
untrained feature map ``detail_feature_map`` (below, with the measurement that chose it).

Each column reads the features of its own kind of detail (``column_feature_group``, given the image channels):
colour columns the colour statistics, grating columns the power spectrum, every other column (the factors, other
nuisance) the whole map. A column's score then says whether *that* detail is right, whatever the others do: with
one probe on the whole map, X blurred by sigma 0.7 scored colour R^2 0.25, because the colour probe leans on the
spectrum, which blur changes; reading the colour statistics alone it scores 0.51 (figures below).

The evaluate stage also fits the colour and geometry probes on a blurred copy of every fitting image
(``blur_augmentation``, a Gaussian of that sigma in pixels): reconstructions are blurrier than X, and blur is not a
change of colour.

The colour statistics are the foreground's mean colour and hue, not the brightest pixel. A decoder that cannot draw
the grating paints at best its conditional mean: the sprite in its colour at the grating's mean intensity (0.75 at
the default contrast), without stripes. With the maximum among the colour features, that image scored colour
R^2 0.15 against 0.90 for X, because the maximum of X reads the bright stripes. Without it, the mean colour of X
itself varies with the share of bright stripes a sprite happens to hold (its size, the grating's phase), so the
ceiling on X falls from about 0.90 to 0.78; every reconstruction in the right colour then reaches it, sharp or soft.

Measured with ``python -m bench.detail_scores robustness`` (8,000 fitting images, 2,000 scored, textured dSprites at
32 px; colour R^2, the mean over r, g, b; in order: X, true colours at full brightness without the grating, the
conditional mean, the conditional mean blurred by sigma 0.7, X blurred by sigma 0.7 and 1.5, grey sprites):

* one probe on the whole map: 0.96, 0, 0.95, 0.30, 0.25, 0, 0;
* each column on its feature group: 0.90, 0, 0.90, 0.51, 0.51, 0, 0;
* groups, and blurred copies (sigma 0.8) for the colour and geometry probes (the evaluate stage's fit): 0.78, 0.34,
  0.78, 0.79, 0.79, 0.55, 0.

The sprites at full brightness without the grating are a third brighter than X on average, and that brightness is
not X's colour: they score 0.34.

The texture probes stay fitted on sharp images: blur removes the grating's power at high frequency, which is
what they read, and fitted with the blurred copies too their ceiling on X fell (grating frequency R^2 0.49 ->
0.31 in one measurement with an earlier version of the command).

The score of one column (every score is "higher is better", 1 at best):

* continuous v: R^2 = 1 - sum_i (v_i - v^_i)^2 / sum_i (v_i - mean v)^2, clipped at 0 below;
* circular v with period P (an angle: a grating turned by pi is the same grating): the probe predicts the point
  u^_i of the plane for u_i = (cos(2 pi v_i / P), sin(2 pi v_i / P)), and the score is the R^2 of those points
  pooled over both coordinates, 1 - sum_i |u_i - u^_i|^2 / sum_i |u_i - mean u|^2, clipped at 0 below. v and
  v + P have the same u, so they score the same; an angle read off as its neighbour across the wrap (P - e
  for e) costs |u - u^|^2 ~ (2 pi e / P)^2, not the square of the period;
* class v: the accuracy (fraction of rows whose class is predicted).

The clip at 0: a negative R^2 means the probe does worse than predicting the mean, which is what it does on an
image carrying none of the column's information but lying off the distribution it was fitted on (a grey blob):
its predictions are then arbitrary, and how far below 0 they land says nothing about detail. Every set without
the information therefore scores 0.

The summary of a set S against the ceiling X and the floor Y, per column:

    gap_closed(S) = (score(S) - score(Y)) / (score(X) - score(Y)),

1 when S carries the column as well as the real images, 0 when no better than Y; it is None (reported as null)
when score(X) - score(Y) < ``min_gap`` (0.05): the column is then either not recoverable even from real images
(the grating's phase at 32 px) or already in Y (the factors), and a ratio of two small differences would be noise.
``detail.gap_closed`` is the mean of the nuisance columns' non-null values (None when all are null).

Samples. A sample G(Y, eps) belongs to no real image's nuisance: its colour is drawn, not reconstructed, so a
per-row score against x's colour would fault a generator for drawing a different, equally real colour. The
samples are scored on the distribution instead (``sample_detail_scores``): per nuisance column, the distance
between the probe's readings on the samples and on X (the 1-Wasserstein distance of ``scipy.stats``, summed over
the two coordinates of a circular column; the total variation between the predicted class frequencies for a class
column), against that of Y:

    marginal_gap_closed(S) = 1 - W(S, X) / W(Y, X),

1 when the samples' colours (gratings, ...) are spread as the real ones are, 0 when they are as concentrated as Y's
grey; None where the paired gap above is None (a column the probe cannot read off X, or that Y already holds).
It sees a generator that draws detail, not whether the detail matches an x: the rows of X shuffled score 1 here
and R^2 near 0 above. Only the colour columns are scored so: the readings of the texture probes spread on images
without any grating too (the sprites' own outline has a spectrum). Sharp grey sprites without a grating closed
0.81 of the grating frequency's marginal gap and 0.35 of the angle's (against a blurred grey Y), and -0.03 to
-0.05 of the colour columns' (``tests/unit/test_metrics_detail.py``). ``detail.x_sample_gap_closed`` is the mean
over the colour columns.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Gt, Le, Lt
from scipy.stats import wasserstein_distance
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

__all__ = [
    "detail_feature_map",
    "feature_groups",
    "column_feature_group",
    "blurred",
    "circular_embedding",
    "pooled_r2",
    "column_score",
    "gap_closed",
    "DetailProbes",
    "fit_detail_probes",
    "DetailProbesConfig",
    "detail_scores",
    "marginal_distance",
    "sample_detail_scores",
    "detail_probes_metric",
]


def detail_feature_map(images, threshold: float = 0.1) -> np.ndarray:
    """A fixed map of images (N, C, H, W) (uint8, or float in [0, 1]; numpy or torch) to the probes' features
    (N, 2 C + 6 + H (W // 2 + 1)), float64. With m the foreground mask (brightest channel > ``threshold``):

    * colour: per channel the mean over the foreground, and that mean divided by the largest channel's (the hue,
      free of brightness). Not the maximum over the image: on a textured sprite it reads the bright stripes, so a
      reconstruction in the right colour without the texture, the best that a decoder which cannot draw the
      texture does, scored as if its colour were wrong (module docstring);
    * shape and place: the foreground's area (fraction of the image), centroid (x, y) and second central moments
      (xx, yy, xy), in image-size units;
    * texture: sqrt of the power spectrum |FFT2(L)|^2 of L = (luminance - its foreground mean) * m (the luminance
      the channels' mean), normalised to sum 1 (the DC term is ~0 by construction). A grating of frequency f and
      angle a puts its power near +-f (cos a, sin a) wherever the sprite is, so angle and frequency are nearly
      linear functions of it; the phase is not (the spectrum drops it).

    Why this map and a ridge probe, measured on textured dSprites at 32 px (8,000 training-split images to fit,
    5,000 test-split images scored; R^2 on X, circular for the angles; ``python -m bench.detail_scores choice``):
    ridge on the raw pixels scores colour 0.32 to 0.38, grating frequency and angle below 0, scale 0.58, position
    0.62 (the best penalty of 1, 10, 100; the fit took 40 s); ridge on this map, one probe for every column, scores
    colour 0.95, frequency 0.41, angle 0.57, phase ~0, scale 0.90, position 0.998, and fits in about 6 s (with the
    image's maximum among the colour features, before the change above: colour 0.98, frequency 0.50; shape
    accuracy 0.87 with a logistic probe). Gradient-boosted trees on the map reached 0.57 and 0.73 for frequency and
    angle but cost about 7 s per column and output (minutes for all), more than the stage can spend. A map without
    training cannot be fooled by what a network learnt to ignore, and is the same for every run.
    """
    import torch

    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    x = images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)
    if x.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {x.shape}")
    n, channels, height, width = x.shape
    mask = (x.max(axis=1) > threshold).astype(np.float64)
    area = mask.sum(axis=(1, 2))
    safe_area = np.maximum(area, 1.0)
    rows, columns = np.mgrid[0:height, 0:width]
    rows, columns = rows / height, columns / width
    centre_x = (mask * columns).sum(axis=(1, 2)) / safe_area
    centre_y = (mask * rows).sum(axis=(1, 2)) / safe_area
    dx, dy = columns - centre_x[:, None, None], rows - centre_y[:, None, None]
    moments = [(mask * a * b).sum(axis=(1, 2)) / safe_area for a, b in ((dx, dx), (dy, dy), (dx, dy))]
    colour_mean = (x * mask[:, None]).sum(axis=(2, 3)) / safe_area[:, None]
    hue = colour_mean / np.maximum(colour_mean.max(axis=1, keepdims=True), 1e-6)
    luminance = x.mean(axis=1)
    centred = (luminance - ((luminance * mask).sum(axis=(1, 2)) / safe_area)[:, None, None]) * mask
    power = np.square(np.abs(np.fft.rfft2(centred)))
    power /= np.maximum(power.sum(axis=(1, 2), keepdims=True), 1e-12)
    shape = np.stack([area / (height * width), centre_x, centre_y, *moments], axis=1)
    return np.concatenate([colour_mean, hue, shape, np.sqrt(power).reshape(n, -1)], axis=1)


def feature_groups(channels: int) -> dict[str, slice]:
    """Where each kind of feature lies in ``detail_feature_map``'s output for images of ``channels`` channels:
    "colour" (foreground mean and hue per channel), "geometry" (area, centroid, second moments), "texture" (the
    spectrum)."""
    colour = 2 * int(channels)
    return {"colour": slice(0, colour), "geometry": slice(colour, colour + 6), "texture": slice(colour + 6, None)}


def column_feature_group(name: str) -> str | None:
    """The feature group a column's probe reads (module docstring): "colour" for colour columns, "texture" for
    grating columns, None (every feature) for the rest."""
    if name.startswith(("colour", "color")):
        return "colour"
    if name.startswith("grating"):
        return "texture"
    return None


def blurred(images, sigma: float) -> np.ndarray:
    """Images (N, C, H, W) (uint8, or float in [0, 1]) blurred by a Gaussian of ``sigma`` pixels in each image
    plane, as float in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(images)
    x = x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)
    return gaussian_filter(x, sigma=(0, 0, float(sigma), float(sigma)))


def circular_embedding(values: np.ndarray, period: float) -> np.ndarray:
    """(n,) angles with period ``period`` -> (n, 2) points (cos, sin) of 2 pi v / period on the unit circle."""
    if not period > 0:
        raise ValueError(f"the period of a circular column must be positive, got {period!r}")
    turns = 2.0 * math.pi * np.asarray(values, dtype=np.float64) / float(period)
    return np.stack([np.cos(turns), np.sin(turns)], axis=1)


def pooled_r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    """1 - sum |t_i - p_i|^2 / sum |t_i - mean t|^2 over rows (and pooled over the columns of 2-d arrays); NaN
    when the truth does not vary."""
    truth = np.asarray(truth, dtype=np.float64).reshape(len(truth), -1)
    prediction = np.asarray(prediction, dtype=np.float64).reshape(truth.shape)
    total = float(np.square(truth - truth.mean(axis=0)).sum())
    if total <= 0.0:
        return float("nan")
    return 1.0 - float(np.square(truth - prediction).sum()) / total


def column_score(truth: np.ndarray, prediction: np.ndarray, kind: str, period: float | None = None) -> float:
    """The score of one column (module docstring): ``kind`` "continuous" (prediction (n,)), "circular" (prediction
    (n, 2), the point predicted for (cos, sin) of 2 pi v / period) or "class" (prediction (n,) classes)."""
    if kind == "class":
        return float(np.mean(np.asarray(truth) == np.asarray(prediction)))
    if kind == "circular":
        if period is None:
            raise ValueError("a circular column needs its period")
        value = pooled_r2(circular_embedding(truth, period), prediction)
    elif kind == "continuous":
        value = pooled_r2(truth, prediction)
    else:
        raise ValueError(f"kind must be 'continuous', 'circular' or 'class', got {kind!r}")
    return max(0.0, value) if np.isfinite(value) else float("nan")


def gap_closed(score_x: float, score_y: float, score_other: float, min_gap: float = 0.05) -> float | None:
    """(score(S) - score(Y)) / (score(X) - score(Y)); None when the gap X - Y is below ``min_gap`` or undefined."""
    gap = score_x - score_y
    if not np.isfinite(gap) or not np.isfinite(score_other) or gap < min_gap:
        return None
    return float((score_other - score_y) / gap)


class DetailProbes:
    """One probe per column, fitted on the features of real images (module docstring).

    ``kinds`` maps each column to "continuous", "class" or a float, the period of a circular column. ``alpha``: the
    ridge penalty on standardised features. ``channels``: the images' channels when the features are
    ``detail_feature_map``'s, so that each column reads its own feature group (``column_feature_group``); None:
    every column reads every feature. ``blurred_rows``: a boolean per row, true for the blurred copies that the
    texture probes leave out. Deterministic (``seed`` fixes the logistic regression's solver).
    """

    def __init__(
        self,
        features: np.ndarray,
        columns: Mapping[str, np.ndarray],
        kinds: Mapping[str, str | float],
        alpha: float = 1.0,
        seed: int = 0,
        channels: int | None = None,
        blurred_rows: np.ndarray | None = None,
    ) -> None:
        features = _checked_features(features, "probe_features")
        sharp = np.ones(len(features), bool) if blurred_rows is None else ~np.asarray(blurred_rows, bool)
        self.scaler = StandardScaler().fit(features)
        standard = self.scaler.transform(features)
        self.kinds = dict(kinds)
        self.models: dict = {}
        groups = feature_groups(channels) if channels else {}
        self.slices = {name: groups.get(column_feature_group(name), slice(None)) for name in columns}
        for name, values in columns.items():
            # texture probes are fitted on the sharp rows only (module docstring)
            rows = sharp if column_feature_group(name) == "texture" else slice(None)
            values = np.asarray(values)
            if values.shape != (len(features),):
                raise ValueError(f"column {name!r} has shape {values.shape}, expected ({len(features)},)")
            kind = self.kinds[name]
            if kind == "class":
                if len(np.unique(values[rows])) < 2:
                    self.models[name] = ("constant", values[0])
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model = LogisticRegression(max_iter=300, random_state=seed)
                    model.fit(standard[rows][:, self.slices[name]], values[rows])
                self.models[name] = ("class", model)
            else:
                target = circular_embedding(values, float(kind)) if not isinstance(kind, str) else values
                model = Ridge(alpha=alpha).fit(standard[rows][:, self.slices[name]], target[rows])
                self.models[name] = ("ridge", model)

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Each fitted column's reading of ``features``: (n,) values or classes, (n, 2) points for a circular
        column (``circular_embedding``)."""
        standard = self.scaler.transform(_checked_features(features, "features"))
        return {
            name: np.full(len(standard), model) if how == "constant" else model.predict(standard[:, self.slices[name]])
            for name, (how, model) in self.models.items()
        }

    def scores(self, features: np.ndarray, columns: Mapping[str, np.ndarray]) -> dict[str, float]:
        """The score of each fitted column (``column_score``) on ``features`` of images whose true values are
        ``columns``."""
        return self.scores_of(self.predict(features), columns)

    def scores_of(self, readings: Mapping[str, np.ndarray], columns: Mapping[str, np.ndarray]) -> dict[str, float]:
        """``scores`` from ``readings`` that ``predict`` already returned."""
        result = {}
        for name, prediction in readings.items():
            kind = self.kinds[name]
            if isinstance(kind, str):
                result[name] = column_score(columns[name], prediction, kind)
            else:
                result[name] = column_score(columns[name], prediction, "circular", float(kind))
        return result


def _checked_features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"{name} must be (N, F) with N >= 2, got shape {features.shape}")
    if not np.all(np.isfinite(features)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return features


def _read_sets(
    probes: DetailProbes,
    named_features: Mapping[str, np.ndarray],
    required: Sequence[str],
    readings: Mapping[str, Mapping[str, np.ndarray]] | None,
) -> dict[str, Mapping[str, np.ndarray]]:
    """The probes' readings (``DetailProbes.predict``) of every set of ``named_features``, taken from ``readings``
    where it already holds them; raises when a ``required`` set is missing."""
    missing = [name for name in required if name not in named_features]
    if missing:
        listed = ", ".join(repr(name) for name in required)
        raise ValueError(f"named_features needs the sets {listed}; missing {missing}")
    known = readings or {}
    return {
        name: known[name] if name in known else probes.predict(features) for name, features in named_features.items()
    }


def detail_scores(
    probes: DetailProbes,
    named_features: Mapping[str, np.ndarray],
    columns: Mapping[str, np.ndarray],
    nuisance_columns: Sequence[str],
    min_gap: float = 0.05,
    readings: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, float | None]:
    """Keys ``detail.<column>.<set>`` for every set of ``named_features`` ("x" and "y" required, "x_hat"
    optional) and, with "x_hat", ``detail.<column>.gap_closed`` and ``detail.gap_closed`` (the mean over
    ``nuisance_columns`` of their non-null gaps). ``readings``: ``DetailProbes.predict`` of some sets, already
    computed (the evaluate stage reads X and Y once for every variant)."""
    read = _read_sets(probes, named_features, ("x", "y"), readings)
    scores = {label: probes.scores_of(values, columns) for label, values in read.items()}
    result: dict[str, float | None] = {}
    for label, values in scores.items():
        result |= {f"detail.{name}.{label}": value for name, value in values.items()}
    if "x_hat" in scores:
        gaps = {
            name: gap_closed(scores["x"][name], scores["y"][name], scores["x_hat"][name], min_gap)
            for name in scores["x"]
        }
        result |= {f"detail.{name}.gap_closed": value for name, value in gaps.items()}
        kept = [gaps[name] for name in nuisance_columns if gaps.get(name) is not None]
        result["detail.gap_closed"] = float(np.mean(kept)) if kept else None
    return result


def marginal_distance(reference: np.ndarray, other: np.ndarray, kind: str | float) -> float:
    """The distance between two sets of one column's readings (module docstring, "Samples"): the 1-Wasserstein
    distance (``scipy.stats.wasserstein_distance``) for a continuous column, its sum over the two coordinates for
    a circular one ((n, 2) points), the total variation between the class frequencies for a class column."""
    reference, other = np.asarray(reference), np.asarray(other)
    if kind == "class":
        classes = np.union1d(reference, other)
        frequency = lambda values: np.array([np.mean(values == c) for c in classes])  # noqa: E731
        return 0.5 * float(np.abs(frequency(reference) - frequency(other)).sum())
    reference = reference.reshape(len(reference), -1).astype(np.float64)
    other = other.reshape(len(other), -1).astype(np.float64)
    return float(sum(wasserstein_distance(reference[:, j], other[:, j]) for j in range(reference.shape[1])))


def sample_detail_scores(
    probes: DetailProbes,
    named_features: Mapping[str, np.ndarray],
    columns: Mapping[str, np.ndarray],
    nuisance_columns: Sequence[str],
    min_gap: float = 0.05,
    label: str = "x_sample",
    readings: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, float | None]:
    """Keys ``detail.<column>.<label>.marginal_gap_closed`` for each colour column and ``detail.<label>_gap_closed``
    (their mean over the non-null ones) for the set ``label`` of ``named_features`` against "x" and "y" (module
    docstring, "Samples"). A column is None where its paired gap is (``gap_closed``: the probe cannot read it off X
    better than off Y by ``min_gap``, ``columns`` being X's true values), or where W(Y, X) is 0. ``readings``: as
    for ``detail_scores``."""
    subset = {name: named_features[name] for name in ("x", "y", label) if name in named_features}
    read = _read_sets(probes, subset, ("x", "y", label), readings)
    paired = {name: probes.scores_of(read[name], columns) for name in ("x", "y")}
    result: dict[str, float | None] = {}
    kept = []
    for name in nuisance_columns:
        if name not in probes.models or column_feature_group(name) != "colour":  # module docstring, "Samples"
            continue
        kind = probes.kinds[name] if isinstance(probes.kinds[name], str) else "circular"
        x, y, sample = (read[key][name] for key in ("x", "y", label))
        floor = marginal_distance(x, y, kind)
        value = None
        if gap_closed(paired["x"][name], paired["y"][name], paired["x"][name], min_gap) is not None and floor > 0:
            value = 1.0 - marginal_distance(x, sample, kind) / floor
            kept.append(value)
        result[f"detail.{name}.{label}.marginal_gap_closed"] = value
    result[f"detail.{label}_gap_closed"] = float(np.mean(kept)) if kept else None
    return result


def fit_detail_probes(
    images,
    columns: Mapping[str, np.ndarray],
    kinds: Mapping[str, str | float],
    blur_sigma: float,
    alpha: float = 10.0,
    seed: int = 0,
    threshold: float = 0.1,
    chunk: int = 500,
) -> DetailProbes:
    """``DetailProbes`` fitted as the evaluate stage fits them: on ``detail_feature_map`` of the real ``images``
    (N, C, H, W), each column on its own feature group, and, when ``blur_sigma`` > 0, also on a copy of every image
    blurred by that sigma, which the texture probes leave out (module docstring). ``columns``: each column's N
    values; the features are computed ``chunk`` images at a time."""
    count = len(images)
    sigmas = [0.0] + ([float(blur_sigma)] if blur_sigma > 0 else [])
    features = [
        detail_feature_map(blurred(part, sigma) if sigma else part, threshold)
        for sigma in sigmas
        for part in (images[start : start + chunk] for start in range(0, count, chunk))
    ]
    return DetailProbes(
        np.concatenate(features),
        {name: np.concatenate([np.asarray(values)] * len(sigmas)) for name, values in columns.items()},
        kinds,
        alpha=alpha,
        seed=seed,
        channels=int(images.shape[1]),
        blurred_rows=np.arange(len(sigmas) * count) >= count,
    )


@dataclass(frozen=True)
class DetailProbesConfig:
    """``train_images`` real images of the training split the probes are fitted on; ``ridge_alpha`` the ridge
    penalty; a column's gap_closed is null when its ceiling-minus-floor is below ``min_gap``;
    ``foreground_threshold`` the mask of ``detail_feature_map``; ``blur_augmentation``: the sigma (pixels) of the
    blurred copy of each fitting image the probes are also fitted on (0: none; module docstring)."""

    train_images: Annotated[int, Ge(10)] = 8000
    ridge_alpha: Annotated[float, Gt(0.0)] = 10.0
    min_gap: Annotated[float, Gt(0.0), Le(1.0)] = 0.05
    foreground_threshold: Annotated[float, Ge(0.0), Lt(1.0)] = 0.1
    blur_augmentation: Annotated[float, Ge(0.0), Le(4.0)] = 0.8


def detail_probes_metric(inputs, config: DetailProbesConfig, seed: int) -> dict[str, float | None]:
    """Registry adapter: probes fitted on ``probe_features`` / ``probe_columns`` (``column_kinds``: "continuous",
    "class" or a circular period; each column on its feature group when ``image_channels`` is given), scored on
    ``named_features`` ("x", "y", optionally "x_hat") whose true values are ``columns``; the mean gap is over
    ``nuisance_columns``. Keys as ``detail_scores``."""
    probes = DetailProbes(
        inputs.probe_features,
        inputs.probe_columns,
        inputs.column_kinds,
        alpha=config.ridge_alpha,
        seed=seed,
        channels=inputs.image_channels,
    )
    return detail_scores(probes, inputs.named_features, inputs.columns, inputs.nuisance_columns, config.min_gap)
