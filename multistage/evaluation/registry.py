"""The metric registry: every metric the evaluate stage runs, under one signature.

A metric is a function ``fn(inputs, config, seed) -> dict[str, float | None]``: ``inputs`` a :class:`MetricInputs`
(it reads the fields its ``needs`` name), ``config`` an instance of its config dataclass (the one place its
defaults live; params.yaml's ``evaluate.<name>`` sets values), ``seed`` an integer that fixes every draw it makes.
It returns flat keys that name the estimator; a missing result is an absent key or None, never a string.

Adding a metric is one module (its pure function, a config dataclass and the adapter with the signature above)
and one line in :data:`METRICS`; the evaluate stage's params, validation and documentation follow from them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from multistage.metrics import (
    dci,
    detail,
    downstream,
    factorvae_score,
    frechet,
    indicators,
    kid,
    mig_sampling,
    reconstruction,
    sap,
    tc_decomposition,
    zdiff,
)

Scope = Literal["factor_set", "held_out"]
NEEDS = ("ground_truth", "two_varying_factors", "features", "images", "nuisance")


@dataclass(frozen=True)
class MetricInputs:
    """What a metric may read; the caller fills the fields that the metrics it runs need.

    Factor set (``scope="factor_set"``: once, on the codes of every image of the data set, or a sample of them):
    ``mu``, ``logvar`` (N, latent) Gaussian posteriors; ``representation`` the code C (the means, then the one-hot
    argmax of each discrete code); ``code_names`` one name per column of ``mu``. Ground truth: ``factor_classes``
    (N, factors) integer classes, ``factor_names``, ``factor_sizes``, the factors a second mean leaves out
    (``exclude_factors``) and the categorical ones (``categorical_factors``).
    Held out (``scope="held_out"``: called by the stage once per comparison): ``features`` of the real images and
    ``other_features`` of those compared with them, named by ``label`` in the keys; ``named_codes``, the arrays an
    MLP reads ({"c": C, "z": Z, "c_z": [C, Z]}) with the factors of the same rows in ``factor_classes``.
    Images: ``images`` (x), ``other_images`` (compared with x) and ``condition_images`` (stage one's y of the same
    x), float (N, C, H, W) in [0, 1]. Detail probes: fitted on ``probe_features`` of real images whose columns
    (factors and nuisance, by name) are ``probe_columns``, of kinds ``column_kinds`` ("continuous", "class" or a
    circular period); scored on ``named_features`` ({"x": ..., "y": ..., "x_hat": ...}) of rows whose true values
    are ``columns``; ``nuisance_columns`` name the columns of the summary; ``image_channels`` (when the features are
    ``detail_feature_map``'s) lets each column read its own feature group.
    """

    mu: np.ndarray | None = None
    logvar: np.ndarray | None = None
    representation: np.ndarray | None = None
    code_names: tuple[str, ...] = ()
    factor_classes: np.ndarray | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    exclude_factors: tuple[str, ...] = ()
    categorical_factors: tuple[str, ...] = ()
    features: np.ndarray | None = None
    other_features: np.ndarray | None = None
    label: str = ""
    named_codes: Mapping[str, np.ndarray] | None = None
    images: Any = None
    other_images: Any = None
    condition_images: Any = None
    probe_features: np.ndarray | None = None
    probe_columns: Mapping[str, np.ndarray] | None = None
    column_kinds: Mapping[str, str | float] | None = None
    named_features: Mapping[str, np.ndarray] | None = None
    columns: Mapping[str, np.ndarray] | None = None
    nuisance_columns: tuple[str, ...] = ()
    image_channels: int | None = None


MetricFunction = Callable[[MetricInputs, Any, int], dict[str, float | None]]


@dataclass(frozen=True)
class Metric:
    """A registry entry: ``name`` (the key of ``evaluate.metrics`` and of its params sub-section), the function,
    its config dataclass, where it runs (``scope``) and what it needs beyond its inputs (a subset of :data:`NEEDS`):
    ``ground_truth`` factors, ``two_varying_factors`` (it classifies which factor was fixed), classifier
    ``features`` (image data only), ``images`` (not series), ``nuisance`` columns in the data."""

    name: str
    function: MetricFunction
    config: type
    scope: Scope
    needs: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not dataclasses.is_dataclass(self.config):
            raise TypeError(f"metric {self.name!r}: config must be a dataclass, got {self.config!r}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown needs {sorted(unknown)}; known: {', '.join(NEEDS)}")

    def __call__(self, inputs: MetricInputs, config: Any = None, seed: int = 0) -> dict[str, float | None]:
        return self.function(inputs, self.config() if config is None else config, seed)


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add ``metric`` to :data:`METRICS`; a name registered twice is an error."""
    if metric.name in METRICS:
        raise ValueError(f"metric {metric.name!r} is registered twice")
    METRICS[metric.name] = metric
    return metric


GROUND_TRUTH = frozenset({"ground_truth"})
# one line per metric; the order is the order the stage runs them in and the default of evaluate.metrics
register(
    Metric(
        "tc_decomposition",
        tc_decomposition.tc_decomposition_metric,
        tc_decomposition.TcDecompositionConfig,
        "factor_set",
    )
)
register(Metric("indicators", indicators.indicators_metric, indicators.IndicatorsConfig, "factor_set"))
register(
    Metric("mig_sampling", mig_sampling.mig_sampling_metric, mig_sampling.MigSamplingConfig, "factor_set", GROUND_TRUTH)
)
register(Metric("sap", sap.sap_metric, sap.SapConfig, "factor_set", GROUND_TRUTH))
register(Metric("zdiff", zdiff.zdiff_metric, zdiff.ZdiffConfig, "factor_set", GROUND_TRUTH | {"two_varying_factors"}))
register(
    Metric(
        "factorvae_score",
        factorvae_score.factorvae_score_metric,
        factorvae_score.FactorVaeScoreConfig,
        "factor_set",
        GROUND_TRUTH | {"two_varying_factors"},
    )
)
register(Metric("dci", dci.dci_metric, dci.DciConfig, "factor_set", GROUND_TRUTH))
register(Metric("kl_per_unit", indicators.kl_per_unit_metric, indicators.KlPerUnitConfig, "held_out"))
register(Metric("kid", kid.kid_metric, kid.KidConfig, "held_out", GROUND_TRUTH | {"features"}))
register(Metric("downstream", downstream.downstream_metric, downstream.DownstreamConfig, "held_out", GROUND_TRUTH))
DETAIL = GROUND_TRUTH | {"features", "nuisance"}
register(Metric("detail_probes", detail.detail_probes_metric, detail.DetailProbesConfig, "held_out", DETAIL))
register(Metric("detail_frechet", frechet.detail_frechet_metric, frechet.DetailFrechetConfig, "held_out", DETAIL))
register(
    Metric(
        "foreground_error",
        reconstruction.foreground_error_metric,
        reconstruction.ForegroundErrorConfig,
        "held_out",
        frozenset({"images"}),
    )
)


def default_configs() -> dict[str, Any]:
    """Each registered metric's config with its defaults."""
    return {name: metric.config() for name, metric in METRICS.items()}
