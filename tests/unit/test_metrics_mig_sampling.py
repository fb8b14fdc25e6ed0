"""The sampling MIG (beta-TCVAE appendix A) and its grid estimator of aggregate-posterior densities, checked against
an independent brute-force logsumexp over every mixture component and on representations with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import norm, special_ortho_group

from multistage.metrics.aggregate_posterior import (
    GridSettings,
    exact_log_density,
    grid_log_density,
    grouped_log_density,
    joint_log_density,
)
from multistage.metrics.mig_sampling import sampling_mutual_information, sampling_mutual_information_gap

NAMES = ("shape", "scale", "orientation", "posX", "posY")
SIZES = (3, 6, 40, 32, 32)


def dsprites_factors(count: int, seed: int) -> np.ndarray:
    """``count`` rows drawn uniformly from the dSprites factor grid (3 x 6 x 40 x 32 x 32)."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, size, count) for size in SIZES], axis=1)


def brute_force_log_mixture(points: np.ndarray, means: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """log(1/N sum_n N(point; mean_n, sigma_n^2)) with scipy.stats.norm and scipy's logsumexp (no library code)."""
    return logsumexp(norm.logpdf(points[:, None], loc=means[None, :], scale=sigmas[None, :]), axis=1) - math.log(
        means.size
    )


# ------------------------------------------------------------------------------------- the grid estimator
MIXTURES = {
    # name: (means, sigmas) generator
    "clustered, sigma over a decade": lambda rng, n: (
        rng.integers(0, 32, n) / 31 * 4 - 2 + rng.normal(0, 0.01, n),
        np.exp(rng.uniform(np.log(0.02), np.log(0.2), n)),
    ),
    "collapsed unit, sigma ~ 1": lambda rng, n: (rng.normal(0, 0.1, n), rng.uniform(0.9, 1.0, n)),
    "sigma over two decades": lambda rng, n: (2 * rng.normal(size=n), np.exp(rng.uniform(np.log(1e-2), 0, n))),
    "far outliers, one sigma": lambda rng, n: (np.r_[rng.normal(size=n - 3), [40.0, -35.0, 60.0]], np.full(n, 0.3)),
}


@pytest.mark.parametrize("case", list(MIXTURES))
def test_grid_log_density_matches_brute_force_logsumexp(case):
    # Stated tolerance (module docstring of aggregate_posterior): with rho = 1.01 and 8 points per sigma the
    # per-point error is about (rho^2 - 1)^2 / 32 |He4(t)| + 0.05 |He4(t)| / 8^4 = 2.4e-5 |He4(t)|, i.e. < 3e-3 for
    # |t| < 3.9 (2000 samples reach |t| ~ 3.5 to 3.9); its mean over the points, what an entropy sees, is < 1e-4.
    rng = np.random.default_rng(list(MIXTURES).index(case))
    means, sigmas = MIXTURES[case](rng, 2000)
    points = means + sigmas * rng.standard_normal(means.size)
    expected = brute_force_log_mixture(points, means, sigmas)
    estimate = grid_log_density(points, means, sigmas, own_component=np.arange(means.size))
    error = estimate - expected
    assert np.abs(error).max() < 3e-3
    assert abs(error.mean()) < 1e-4
    np.testing.assert_allclose(exact_log_density(points, means, sigmas), expected, rtol=0, atol=1e-10)


def test_grid_log_density_error_shrinks_with_finer_settings():
    rng = np.random.default_rng(1)
    means, sigmas = rng.normal(0, 0.1, 1500), rng.uniform(0.9, 1.0, 1500)
    points = means + sigmas * rng.standard_normal(1500)
    expected = brute_force_log_mixture(points, means, sigmas)
    coarse = np.abs(grid_log_density(points, means, sigmas, settings=GridSettings(8, 1.05)) - expected).max()
    fine = np.abs(grid_log_density(points, means, sigmas, settings=GridSettings(8, 1.005)) - expected).max()
    assert fine < coarse / 5


def test_grid_density_keeps_mass_mean_and_variance_with_a_coarse_sigma_ladder():
    # a component whose sigma falls between two ladder levels is split so that its variance is kept: with a coarse
    # ladder (rho = 1.5) the grid density still integrates to the exact mixture moments
    means, sigmas = np.array([-1.0, 0.5, 2.0]), np.array([0.2, 0.37, 0.45])  # 0.37 lies between 0.3 and 0.45
    settings = GridSettings(points_per_sigma=8, level_ratio=1.5)
    z = np.linspace(-6, 8, 40001)
    density = np.exp(grid_log_density(z, means, sigmas, settings=settings))
    mass = np.trapezoid(density, z)
    mean = np.trapezoid(z * density, z)
    second = np.trapezoid(z**2 * density, z)
    assert mass == pytest.approx(1.0, abs=1e-9)
    assert mean == pytest.approx(means.mean(), abs=1e-9)
    assert second == pytest.approx(np.mean(means**2 + sigmas**2), abs=1e-8)


def test_grouped_log_density_stratifies_by_group():
    rng = np.random.default_rng(2)
    groups = rng.integers(0, 3, 900)
    means = groups * 2.0 + rng.normal(0, 0.3, 900)
    sigmas = rng.uniform(0.1, 0.3, 900)
    points = means + sigmas * rng.standard_normal(900)
    result = grouped_log_density(points, means, sigmas, groups)
    for g in range(3):
        members = groups == g
        expected = brute_force_log_mixture(points[members], means[members], sigmas[members])
        np.testing.assert_allclose(result[members], expected, atol=2e-3)


def test_joint_log_density_matches_brute_force_with_and_without_pruning():
    rng = np.random.default_rng(3)
    # clustered means (so whole blocks of components are far from most points) and a few wide components
    means = np.concatenate([rng.integers(0, 6, (3000, 3)) + rng.normal(0, 0.05, (3000, 3)), rng.normal(size=(20, 3))])
    logvars = np.concatenate([rng.uniform(-7, -4, (3000, 3)), rng.uniform(-1, 0, (20, 3))])
    own = rng.choice(len(means), 400, replace=False)
    points = means[own] + np.exp(0.5 * logvars[own]) * rng.standard_normal((400, 3))
    per_component = norm.logpdf(points[:, None, :], means[None], np.exp(0.5 * logvars)[None]).sum(axis=2)
    expected = logsumexp(per_component, axis=1) - math.log(len(means))
    np.testing.assert_allclose(joint_log_density(points, means, logvars), expected, rtol=0, atol=1e-9)
    pruned = joint_log_density(points, means, logvars, own_component=own, leaf_size=64)
    np.testing.assert_allclose(pruned, expected, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------------- the MIG
@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    return dsprites_factors(20000, seed=4)


def perfect_codes(factors: np.ndarray, seed: int) -> np.ndarray:
    """One latent per factor: the standardised class index plus tiny noise."""
    standardised = (factors - factors.mean(0)) / factors.std(0)
    return standardised + np.random.default_rng(seed).normal(0, 0.01, standardised.shape)


def test_sampling_mi_grid_equals_exact_logsumexp():
    # the same samples scored by the grid estimator and by the O(N^2) logsumexp: the MI agrees to 1e-3 nats
    classes = dsprites_factors(2500, seed=5)
    rng = np.random.default_rng(6)
    mu = np.concatenate([perfect_codes(classes, 7)[:, :2], rng.normal(size=(2500, 1))], axis=1)
    logvar = np.log(rng.uniform(0.05, 0.3, mu.shape) ** 2)
    samples = mu + np.exp(0.5 * logvar) * rng.standard_normal(mu.shape)
    grid, h_grid, _ = sampling_mutual_information(mu, logvar, classes, samples=samples)
    exact, h_exact, _ = sampling_mutual_information(mu, logvar, classes, samples=samples, method="exact")
    assert np.abs(grid - exact).max() < 1e-3 and np.abs(h_grid - h_exact).max() < 1e-3
    # and H(z_0) again, written independently: -mean_n log 1/N sum_m N(z_n0; mu_m0, sigma_m0^2)
    sigma = np.exp(0.5 * logvar[:, 0])
    independent = -brute_force_log_mixture(samples[:, 0], mu[:, 0], sigma).mean()
    assert h_exact[0] == pytest.approx(independent, abs=1e-9)
    # the paper's ceiling: I(z_j; v_k) <= H(v_k) up to the Monte Carlo noise
    assert np.all(exact <= np.log(SIZES)[None, :] + 0.02)


def test_perfect_representation_scores_near_one_rotation_and_noise_do_not(factors):
    perfect = perfect_codes(factors, 8)
    logvar = np.full(perfect.shape, np.log(0.02**2))
    rotated = perfect @ special_ortho_group.rvs(5, random_state=9)
    noise = np.random.default_rng(10).normal(size=perfect.shape)
    scores = {
        name: sampling_mutual_information_gap(codes, logvar, factors, NAMES, SIZES, exclude_factors=("shape",))
        for name, codes in (("perfect", perfect), ("rotated", rotated), ("noise", noise))
    }
    assert scores["perfect"]["mig.sampling"] >= 0.95
    assert all(scores["perfect"][f"mig.sampling.{name}"] >= 0.93 for name in NAMES)
    assert scores["rotated"]["mig.sampling"] < 0.3
    assert abs(scores["noise"]["mig.sampling"]) < 0.02
    per_factor = [scores["perfect"][f"mig.sampling.{name}"] for name in NAMES]
    assert scores["perfect"]["mig.sampling.no_shape"] == pytest.approx(np.mean(per_factor[1:]))


def test_duplicated_latent_gives_zero_gap(factors):
    perfect = perfect_codes(factors, 13)
    codes = np.concatenate([perfect, perfect[:, 1:2] + np.random.default_rng(14).normal(0, 0.01, (len(perfect), 1))], 1)
    result = sampling_mutual_information_gap(codes, np.full(codes.shape, np.log(0.02**2)), factors, NAMES, SIZES)
    assert abs(result["mig.sampling.scale"]) < 0.02  # two latents carry scale: no gap
    assert result["mig.sampling.shape"] > 0.95


def test_normalisations_agree_on_a_full_grid_and_keys():
    sizes = (3, 4, 5)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, 3)
    mu = perfect_codes(grid, 11)
    logvar = np.full(mu.shape, np.log(0.05**2))
    log_size = sampling_mutual_information_gap(mu, logvar, grid, ("a", "b", "c"), sizes)
    empirical = sampling_mutual_information_gap(mu, logvar, grid, ("a", "b", "c"), normalization="empirical")
    for key in log_size:
        assert log_size[key] == pytest.approx(empirical[key], abs=1e-12)  # uniform on the full grid: same H(v_k)
    assert set(log_size) == {"mig.sampling", "mig.sampling.a", "mig.sampling.b", "mig.sampling.c"}


def test_constant_latent_single_value_factor_and_nan():
    rng = np.random.default_rng(12)
    classes = np.stack([rng.integers(0, 4, 800), np.zeros(800, dtype=int)], axis=1)
    mu = np.stack([classes[:, 0] + rng.normal(0, 0.01, 800), np.full(800, 0.3)], axis=1)  # latent 1 constant
    logvar = np.full(mu.shape, np.log(0.05**2))
    result = sampling_mutual_information_gap(mu, logvar, classes, ("varying", "constant"), (4, 1))
    assert np.isnan(result["mig.sampling.constant"])  # H(v) = 0: undefined, left out of the mean
    assert result["mig.sampling"] == pytest.approx(result["mig.sampling.varying"])
    assert result["mig.sampling.varying"] > 0.95  # the constant latent has I = 0 (second best)
    information, _, _ = sampling_mutual_information(mu, logvar, classes)
    assert abs(information[1, 0]) < 1e-6
    bad = mu.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="mu contains NaN"):
        sampling_mutual_information_gap(bad, logvar, classes, ("varying", "constant"), (4, 1))
    with pytest.raises(ValueError, match="not factors"):
        sampling_mutual_information_gap(mu, logvar, classes, ("varying", "constant"), (4, 1), exclude_factors=("x",))
