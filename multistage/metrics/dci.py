"""DCI: disentanglement, completeness and informativeness (Eastwood & Williams 2018, section 3), as in
disentanglement_lib (``evaluation/metrics/dci.py``).

A regressor per factor k predicts v_k from the code; its importances give the (D, K) matrix R. Disentanglement of
unit i is 1 - H_K(R_i. / sum_k R_ik), weighted by the unit's share of the importance; completeness of factor k is
1 - H_D(R_.k / sum_i R_ik), weighted by the factor's share; informativeness is how well the regressors predict the
factors on the test split.

``regressor``: ``"gbt"`` (gradient-boosted trees, disentanglement_lib's choice; feature importances; test
accuracy) or ``"lasso"`` (Eastwood & Williams' linear choice on standardised codes; |coefficients|; test R^2).
A factor with a single value is left out; a constant unit has importance 0. Read D and C together with I: where
nothing is predicted (I ~ 0) the lasso's D and C are not meaningful.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from annotated_types import Ge, Gt
from scipy.stats import entropy
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import Lasso

from multistage.metrics.checks import check_codes, check_factors, seeded_subset, varying_factors

__all__ = ["REGRESSORS", "importance_matrix", "disentanglement", "completeness", "dci", "DciConfig", "dci_metric"]

REGRESSORS = ("gbt", "lasso")


def _one_minus_normalised_entropy(weights: np.ndarray, base: int) -> np.ndarray:
    """1 - H(row / row.sum()) / log(base) for each row (rows summing to 0 give 0; base 1 gives 1)."""
    totals = weights.sum(axis=1)
    if base < 2:
        return np.where(totals > 0, 1.0, 0.0)
    safe = np.where(totals[:, None] > 0, weights, 1.0)
    return np.where(totals > 0, 1.0 - entropy(safe.T, base=base), 0.0)


def disentanglement(importance: np.ndarray) -> float:
    """sum_i rho_i (1 - H_K(P_i.)) for an importance matrix (D units, K factors)."""
    importance = np.asarray(importance, dtype=np.float64)
    total = importance.sum()
    if total <= 0:
        return 0.0
    per_unit = _one_minus_normalised_entropy(importance, importance.shape[1])
    return float(np.sum(per_unit * importance.sum(axis=1) / total))


def completeness(importance: np.ndarray) -> float:
    """sum_k w_k (1 - H_D(P~_.k)), w_k = the factor's share of the total importance."""
    importance = np.asarray(importance, dtype=np.float64)
    total = importance.sum()
    if total <= 0:
        return 0.0
    per_factor = _one_minus_normalised_entropy(importance.T, importance.shape[0])
    return float(np.sum(per_factor * importance.sum(axis=0) / total))


def importance_matrix(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    regressor: str = "gbt",
    lasso_alpha: float = 0.02,
    gbt_estimators: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(R (D, K), informativeness per factor (K,)); columns of single-value factors are 0 / NaN."""
    if regressor not in REGRESSORS:
        raise ValueError(f"unknown DCI regressor {regressor!r}; allowed: {', '.join(REGRESSORS)}")
    num_units, num_factors = train_codes.shape[1], train_factors.shape[1]
    importance = np.zeros((num_units, num_factors))
    informativeness = np.full(num_factors, np.nan)
    varying = varying_factors(train_factors)
    mean, scale = train_codes.mean(axis=0), train_codes.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    train_x, test_x = (train_codes - mean) / scale, (test_codes - mean) / scale
    for k in np.flatnonzero(varying):
        if regressor == "gbt":
            model = GradientBoostingClassifier(n_estimators=gbt_estimators, random_state=seed)
            model.fit(train_x, train_factors[:, k])
            # scikit-learn's impurity importances can come out a rounding error below zero (about -1e-19 on
            # duplicated latents), and one negative entry makes that row's entropy -inf; disentanglement_lib takes
            # absolute values, and so do we
            importance[:, k] = np.abs(model.feature_importances_)
            informativeness[k] = float(np.mean(model.predict(test_x) == test_factors[:, k]))
        else:
            target_mean, target_scale = train_factors[:, k].mean(), train_factors[:, k].std()
            model = Lasso(alpha=lasso_alpha, random_state=seed)
            model.fit(train_x, (train_factors[:, k] - target_mean) / target_scale)
            importance[:, k] = np.abs(model.coef_)
            informativeness[k] = float(model.score(test_x, (test_factors[:, k] - target_mean) / target_scale))
    return importance, informativeness


def dci(
    train_codes: np.ndarray,
    train_factors: np.ndarray,
    test_codes: np.ndarray,
    test_factors: np.ndarray,
    factor_names: Sequence[str],
    regressor: str = "gbt",
    lasso_alpha: float = 0.02,
    gbt_estimators: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """{"dci.<regressor>.disentanglement", ".completeness", ".informativeness" (mean over factors),
    ".informativeness.<factor>"} on the given train / test codes (N, D) and factor classes (N, K)."""
    factor_names = tuple(factor_names)
    train_codes = check_codes(train_codes, "train_codes")
    test_codes = check_codes(test_codes, "test_codes", train_codes.shape[1])
    train_factors = check_factors(train_factors, factor_names, train_codes.shape[0])
    test_factors = check_factors(test_factors, factor_names, test_codes.shape[0])
    importance, informativeness = importance_matrix(
        train_codes, train_factors, test_codes, test_factors, regressor, lasso_alpha, gbt_estimators, seed
    )
    used = varying_factors(train_factors)
    key = f"dci.{regressor}"
    finite = informativeness[np.isfinite(informativeness)]
    result = {
        f"{key}.disentanglement": disentanglement(importance[:, used]) if used.any() else float("nan"),
        f"{key}.completeness": completeness(importance[:, used]) if used.any() else float("nan"),
        f"{key}.informativeness": float(finite.mean()) if finite.size else float("nan"),
    }
    result |= {f"{key}.informativeness.{name}": float(v) for name, v in zip(factor_names, informativeness)}
    return result


@dataclass(frozen=True)
class DciConfig:
    """``regressor``: lasso or gbt (gradient-boosted trees); disjoint seeded train / test rows of the factor set."""

    regressor: Literal["lasso", "gbt"] = "lasso"
    train_images: Annotated[int, Ge(4)] = 10000
    test_images: Annotated[int, Ge(2)] = 5000
    lasso_alpha: Annotated[float, Gt(0)] = 0.001
    gbt_estimators: Annotated[int, Ge(1)] = 20


def dci_metric(inputs, config: DciConfig, seed: int) -> dict[str, float]:
    """Registry adapter: DCI of the representation, keys ``x.dci.<regressor>...``."""
    representation, factor_classes = inputs.representation, inputs.factor_classes
    order = seeded_subset(len(representation), config.train_images + config.test_images, seed + 1)
    split = max(2, min(config.train_images, len(order) - 2))
    train, test = order[:split], order[split : split + config.test_images]
    scores = dci(
        representation[train],
        factor_classes[train],
        representation[test],
        factor_classes[test],
        inputs.factor_names,
        config.regressor,
        config.lasso_alpha,
        config.gbt_estimators,
        seed,
    )
    return {f"x.{key}": value for key, value in scores.items()}
