"""The metrics of the factor set: the codes of every image of the data set (or a seeded sample of them), scored by
every registered ``factor_set`` metric the config asks for, plus the discrete code's class accuracy (JointVAE)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from multistage.evaluation.config import EvaluationConfig
from multistage.evaluation.registry import METRICS, MetricInputs
from multistage.evaluation.representation import (
    check_finite_codes,
    code_names,
    discrete_blocks,
    factor_set_codes,
    representation_from_codes,
)
from multistage.metrics.checks import varying_factors
from multistage.metrics.clustering import discrete_information, kmeans_accuracy, majority_accuracy, matched_accuracy


def factor_set_scores(
    config: EvaluationConfig,
    dataset,
    stage_one,
    encode: Callable,
    ground_truth: bool,
    timed,
    codes_file: str | Path | None = None,
    show_progress: bool = False,
) -> dict[str, float | str]:
    """Scores of the registered factor-set metrics in ``config.metrics`` (those needing ground truth only when the
    data has it); ``skipped.<metric>`` notes where the factor set cannot feed one. ``timed(group)`` records each
    metric's seconds; ``encode``/``codes_file`` as in :func:`factor_set_codes`."""
    names = tuple(dataset.factor_names)
    runnable = [
        metric
        for metric in METRICS.values()
        if metric.scope == "factor_set"
        and metric.name in config.metrics
        and (ground_truth or "ground_truth" not in metric.needs)
    ]
    if not runnable:
        return {}
    scores: dict[str, float | str] = {}
    rng = np.random.default_rng(config.seed)
    count = len(dataset) if config.factor_images is None else min(config.factor_images, len(dataset))
    indices = np.arange(len(dataset)) if count == len(dataset) else np.sort(rng.choice(len(dataset), count, False))
    with timed("factor_set_codes"):
        codes = factor_set_codes(dataset, stage_one, indices, encode, config.batch_size, codes_file, show_progress)
    check_finite_codes(codes, "factor set")
    blocks = discrete_blocks(stage_one)
    scores["factor_set.images"] = float(count)
    factor_classes = dataset.factor_classes[indices] if ground_truth else None
    inputs = MetricInputs(
        mu=codes["mu"],
        logvar=codes["logvar"],
        representation=representation_from_codes(codes["mu"], codes.get("alpha"), blocks),
        code_names=tuple(code_names(stage_one)),
        factor_classes=factor_classes,
        factor_names=names,
        factor_sizes=tuple(dataset.factor_sizes) if ground_truth else (),
        exclude_factors=tuple(name for name in config.exclude_factors if name in names),
        categorical_factors=tuple(config.categorical_factors),
    )

    start = 0
    for i, size in enumerate(blocks):  # JointVAE: what each discrete code carries, and the classes it finds
        alpha = codes["alpha"][:, start : start + size]
        scores |= {f"x.discrete.c{i}.{key}": value for key, value in discrete_information(alpha).items()}
        categories = alpha.argmax(axis=1)
        for k, name in enumerate(names if ground_truth else ()):
            scores[f"x.discrete.c{i}.accuracy.{name}"] = matched_accuracy(categories, factor_classes[:, k])
            scores[f"x.discrete.c{i}.majority_accuracy.{name}"] = majority_accuracy(categories, factor_classes[:, k])
        start += size
    if blocks and ground_truth:
        with timed("discrete_baselines"):
            scores |= kmeans_baselines(dataset.images, indices, codes["mu"], factor_classes, names, blocks, config.seed)
    if ground_truth:
        varying = int(varying_factors(factor_classes).sum())
        if varying < 2:  # these classify which factor was fixed
            for metric in [m for m in runnable if "two_varying_factors" in m.needs]:
                scores[f"skipped.{metric.name}"] = f"needs at least two factors that vary; the factor set has {varying}"
                runnable.remove(metric)
    for metric in runnable:
        with timed(metric.name):
            scores |= metric(inputs, config.config_of(metric.name), config.seed)
    return scores


KMEANS_ROWS = 10000  # images of the factor set the k-means baselines cluster


def kmeans_baselines(
    images, indices: np.ndarray, mu: np.ndarray, factor_classes: np.ndarray, names, blocks, seed: int
) -> dict[str, float]:
    """The baselines of a discrete code's class accuracy (JointVAE sec. 4.1 scores the code against them): k-means
    with k = the factor's class count on the pixels and on the continuous code's means, scored like the code
    (``x.discrete.kmeans_{pixels,code}.accuracy.<factor>`` Hungarian-matched, ``.majority_accuracy.<factor>``).
    Only for the factors with as many classes as a discrete code has values (the classes such a code can find), on
    up to ``KMEANS_ROWS`` images of the factor set drawn by ``seed``."""
    wanted = [k for k, name in enumerate(names) if len(np.unique(factor_classes[:, k])) in set(blocks)]
    if not wanted:
        return {}
    rows = np.sort(np.random.default_rng(seed).choice(len(indices), min(len(indices), KMEANS_ROWS), replace=False))
    pixels = np.asarray(images[indices[rows]], dtype=np.float32).reshape(len(rows), -1) / 255.0
    scores = {}
    for k in wanted:
        for source, features in (("pixels", pixels), ("code", mu[rows])):
            result = kmeans_accuracy(features, factor_classes[rows, k], seed)
            scores[f"x.discrete.kmeans_{source}.accuracy.{names[k]}"] = result["matched"]
            scores[f"x.discrete.kmeans_{source}.majority_accuracy.{names[k]}"] = result["majority"]
    return scores
