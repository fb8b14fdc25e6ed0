"""The MS-VAE downstream classification test (MS-VAE paper section 4, "Downstream Classification", figure 6).

"We predict attributes of objects ... using an MLP that is trained with three different inputs: C, Z, and both C
and Z concatenated together. Ideally, the MLP trained with both C and Z would achieve the highest accuracy as the
inferred latent variables contain complementary information about the object attributes." Here C is the stage-one
code (the encoder means), Z the stage-two residual code (the residual encoder's means), and the attributes are the
ground-truth factors. One scikit-learn ``MLPClassifier`` (inputs standardised; Adam; with 2000 training rows or
more, stopped once the accuracy on 10% of them held out stops improving) per input and factor is trained on a
random (1 - test_fraction) of the images and scored (accuracy) on the rest.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from annotated_types import Ge, Gt, Lt
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from multistage.metrics.checks import check_codes, check_factors, varying_factors

__all__ = ["downstream_accuracy", "DownstreamConfig", "downstream_metric"]


def downstream_accuracy(
    inputs: Mapping[str, np.ndarray],
    factor_classes: np.ndarray,
    factor_names: Sequence[str],
    test_fraction: float = 0.25,
    hidden_units: Sequence[int] = (64,),
    max_iter: int = 300,
    seed: int = 0,
) -> dict[str, float]:
    """{"downstream.mlp.<input>.<factor>": test accuracy, "downstream.mlp.<input>.mean": mean over factors} for
    each named input array (N, d_input) (e.g. {"c": C, "z": Z, "c_z": [C, Z]}). A factor with a single value gets
    NaN (and is left out of the mean)."""
    factor_names = tuple(factor_names)
    if not inputs:
        raise ValueError("no inputs given")
    arrays = {name: check_codes(array, f"inputs[{name!r}]") for name, array in inputs.items()}
    rows = next(iter(arrays.values())).shape[0]
    if any(array.shape[0] != rows for array in arrays.values()):
        raise ValueError("every input must have one row per image")
    factor_classes = check_factors(factor_classes, factor_names, rows)
    if not 0.0 < test_fraction < 1.0 or rows < 4:
        raise ValueError(f"need test_fraction in (0, 1) and at least 4 rows, got {test_fraction} and {rows}")
    order = np.random.default_rng(seed).permutation(rows)
    split = min(max(1, int(round(rows * (1.0 - test_fraction)))), rows - 1)
    train, test = order[:split], order[split:]
    varying = varying_factors(factor_classes[train])
    result: dict[str, float] = {}
    for name, array in arrays.items():
        scores = []
        for k, factor in enumerate(factor_names):
            if not varying[k]:
                result[f"downstream.mlp.{name}.{factor}"] = float("nan")
                continue
            model = make_pipeline(
                StandardScaler(),
                MLPClassifier(
                    hidden_layer_sizes=tuple(hidden_units),
                    max_iter=max_iter,
                    early_stopping=train.size >= 2000,
                    random_state=seed,
                ),
            )
            model.fit(array[train], factor_classes[train, k])
            accuracy = float(np.mean(model.predict(array[test]) == factor_classes[test, k]))
            result[f"downstream.mlp.{name}.{factor}"] = accuracy
            scores.append(accuracy)
        result[f"downstream.mlp.{name}.mean"] = float(np.mean(scores)) if scores else float("nan")
    return result


@dataclass(frozen=True)
class DownstreamConfig:
    hidden_units: tuple[int, ...] = (64,)
    max_iter: Annotated[int, Ge(1)] = 300
    test_fraction: Annotated[float, Gt(0), Lt(1)] = 0.25


def downstream_metric(inputs, config: DownstreamConfig, seed: int) -> dict[str, float]:
    """Registry adapter: the downstream MLP on each of ``named_codes`` (MLP convergence warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return downstream_accuracy(
            inputs.named_codes,
            inputs.factor_classes,
            inputs.factor_names,
            config.test_fraction,
            config.hidden_units,
            config.max_iter,
            seed,
        )
