"""The evaluation's view of detail: which columns the detail probes read, the detail network behind the
detail-aware Fréchet distance, and the feature spaces the held-out pass extracts (``multistage.metrics.detail``
holds the probes and their scores, ``multistage.metrics.frechet`` the network).

Columns. Every factor, and every nuisance column (``nuisance.<name>`` of the prepared data), is a column; a
dataset without nuisance columns gets no detail scores. Factors in ``evaluate.categorical_factors`` and the
dataset's categorical nuisance (the scream variant's photo) are class columns (accuracy); columns that are angles
(the dataset's table of periods: dSprites' orientation and grating angle / phase) are circular; the rest are
continuous (R^2). Factors are scored on their values, not their class indices.

The detail network (``frechet.detail_classifier.*``): the factor classifier's architecture trained on the factors
(and class nuisance) plus a regression head on the continuous nuisance and the (cos, sin) of each circular one,
on ``detail_frechet.train_images`` rows of the training split.

The probes' features: a fixed map of each image, no training (``detail_feature_map`` in
``multistage.metrics.detail``, its docstring gives the measurement that chose it).
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from multistage.evaluation.config import EvaluationConfig
from multistage.metrics.detail import (
    circular_embedding,
    detail_feature_map,
    detail_scores,
    fit_detail_probes,
    sample_detail_scores,
)
from multistage.metrics.frechet import train_factor_classifier

DETAIL_METRICS = ("detail_probes", "detail_frechet")


def circular_periods(dataset) -> dict[str, float]:
    """The dataset's columns that are angles, with their period (only dSprites declares some)."""
    if dataset.meta.get("dataset") != "dsprites":
        return {}
    from multistage.data.dsprites import CIRCULAR_PERIODS

    return dict(CIRCULAR_PERIODS)


def categorical_nuisance(dataset) -> tuple[str, ...]:
    if dataset.meta.get("dataset") != "dsprites":
        return ()
    from multistage.data.dsprites import CATEGORICAL_NUISANCE

    return CATEGORICAL_NUISANCE


def has_nuisance(dataset) -> bool:
    return bool(getattr(dataset, "nuisance", None))


def column_kinds(dataset, categorical_factors: tuple[str, ...]) -> dict[str, str | float]:
    """Each column's kind: "class", "continuous" or its period (circular); factors first, then nuisance."""
    periods, categorical = circular_periods(dataset), set(categorical_factors) | set(categorical_nuisance(dataset))
    kinds: dict[str, str | float] = {}
    for name in (*dataset.factor_names, *sorted(dataset.nuisance)):
        kinds[name] = "class" if name in categorical else periods.get(name, "continuous")
    return kinds


def column_values(dataset, rows: np.ndarray, kinds: dict[str, str | float]) -> dict[str, np.ndarray]:
    """The true value of each column of ``kinds`` for ``rows``: factor values (class indices for class factors),
    nuisance values (integers for class nuisance)."""
    values = {}
    for name, kind in kinds.items():
        if name in dataset.factor_names:
            k = dataset.factor_names.index(name)
            values[name] = (dataset.factor_classes if kind == "class" else dataset.factor_values)[rows, k]
        else:
            column = np.asarray(dataset.nuisance[name])[rows]
            values[name] = column.astype(np.int64) if kind == "class" else column.astype(np.float64)
    return values


def regression_targets(dataset, rows: np.ndarray, kinds: dict[str, str | float]) -> tuple[np.ndarray, list[str]]:
    """The detail network's regression targets for ``rows``: each continuous nuisance column, and (cos, sin) of
    each circular one ((N, R) and the R names)."""
    columns, names = [], []
    for name in sorted(dataset.nuisance):
        kind, value = kinds[name], np.asarray(dataset.nuisance[name], dtype=np.float64)[rows]
        if kind == "continuous":
            columns.append(value[:, None])
            names.append(name)
        elif kind != "class":
            columns.append(circular_embedding(value, float(kind)))
            names += [f"{name}.cos", f"{name}.sin"]
    return (np.concatenate(columns, axis=1) if columns else np.zeros((len(rows), 0))), names


def train_detail_network(config: EvaluationConfig, dataset, images, device, timed, show_progress: bool):
    """The detail network (module docstring) and its held-out scores (``detail_classifier.accuracy.<factor>``,
    ``detail_classifier.r2.<output>``)."""
    settings = config.config_of("detail_frechet")
    kinds = column_kinds(dataset, config.categorical_factors)
    class_nuisance = [name for name in sorted(dataset.nuisance) if kinds[name] == "class"]
    rng = np.random.default_rng(settings.seed)
    train_pool = dataset.train_indices
    chosen = train_pool[np.sort(rng.permutation(len(train_pool))[: settings.train_images])]
    classes = [dataset.factor_classes[chosen]]
    sizes = list(dataset.factor_sizes)
    for name in class_nuisance:  # class nuisance: one more classification head, classes 0..K-1
        labels, index = np.unique(np.asarray(dataset.nuisance[name]), return_inverse=True)
        classes.append(index[chosen][:, None])
        sizes.append(len(labels))
    targets, target_names = regression_targets(dataset, chosen, kinds)
    with (
        timed("detail_classifier"),
        tqdm(total=settings.steps, desc="detail network", unit="step", disable=not show_progress) as bar,
    ):

        def progress(step: int, logs: dict) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        network, held_out = train_factor_classifier(
            images[chosen],
            np.concatenate(classes, axis=1),
            sizes,
            steps=settings.steps,
            batch_size=settings.batch_size,
            seed=settings.seed,
            device=device,
            factor_names=(*dataset.factor_names, *class_nuisance),
            progress=progress,
            regression_targets=targets if targets.shape[1] else None,
            regression_names=target_names,
        )
    scores = {}
    for key, value in held_out.items():
        kind = "r2" if key.startswith("r2.") else "accuracy"
        scores[f"detail_classifier.{kind}.{key.removeprefix('r2.')}"] = float(value)
    return network, scores


class DetailProbeData:
    """The detail probes of one evaluation: fitted once on the features (``detail_feature_map``) of
    ``detail_probes.train_images`` real images of the training split (drawn by ``evaluate.seed``), disjoint from
    the scored held-out rows of the test split, and of their copies blurred by ``blur_augmentation``, each column
    on its own feature group; ``extract`` maps the held-out pass's images to the same features."""

    def __init__(self, config: EvaluationConfig, dataset, images) -> None:
        self.settings = config.config_of("detail_probes")
        self.dataset, self.seed = dataset, config.seed
        self.kinds = column_kinds(dataset, config.categorical_factors)
        self.nuisance = tuple(sorted(dataset.nuisance))
        pool = dataset.train_indices
        rows = pool[np.sort(np.random.default_rng(config.seed).permutation(len(pool))[: self.settings.train_images])]
        self.probes = fit_detail_probes(
            images[rows],
            column_values(dataset, rows, self.kinds),
            self.kinds,
            self.settings.blur_augmentation,  # blur alone is not a loss of detail
            alpha=self.settings.ridge_alpha,
            seed=config.seed,
            threshold=self.settings.foreground_threshold,
        )

    def extract(self, images) -> np.ndarray:
        return detail_feature_map(images, self.settings.foreground_threshold)

    def scorer(self, features: dict[str, np.ndarray], indices: np.ndarray):
        """``row(x_hat_features, x_sample_features=None)``: the scores of X and Y (``x_hat_features`` None) or a
        variant's X-hat keys (``detail.<column>.x_hat``, ``.gap_closed``, ``detail.gap_closed``) and, given its
        samples' features, their colour spread (``detail.<column>.x_sample.marginal_gap_closed``,
        ``detail.x_sample_gap_closed``: ``sample_detail_scores``), for the held-out rows ``indices`` whose X and Y
        features are ``features``."""
        columns = column_values(self.dataset, indices, self.kinds)
        named = {"x": features["x"], "y": features["y"]}
        read = {name: self.probes.predict(values) for name, values in named.items()}  # once for every variant
        min_gap = self.settings.min_gap

        def row(x_hat_features: np.ndarray | None, x_sample_features: np.ndarray | None = None):
            if x_hat_features is None and x_sample_features is None:
                return detail_scores(self.probes, named, columns, self.nuisance, min_gap, read)
            scores: dict[str, float | None] = {"detail.gap_closed": None}
            if x_hat_features is not None:
                with_x_hat = named | {"x_hat": x_hat_features}
                scores = detail_scores(self.probes, with_x_hat, columns, self.nuisance, min_gap, read)
            if x_sample_features is not None:
                with_samples = named | {"x_sample": x_sample_features}
                scores |= sample_detail_scores(
                    self.probes, with_samples, columns, self.nuisance, min_gap, readings=read
                )
            return {key: value for key, value in scores.items() if not key.endswith((".x", ".y"))}

        return row
