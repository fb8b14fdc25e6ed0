"""The MS-VAE appendix C pendulum simulator against independent solutions, and its dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from multistage.data import load_dataset
from multistage.data.pendulum import (
    EXTRA_DAMPED_UNIT_MASS,
    EXTRA_UNDAMPED,
    PendulumOptions,
    from_unit_interval,
    make_pendulum,
    simulate,
    to_unit_interval,
)

OPTIONS = PendulumOptions()


def reference(length: float, damping: float, mass: float, angle: float) -> np.ndarray:
    """theta(t_k) from scipy's adaptive DOP853 at tight tolerances (an independent integrator)."""
    gravity = OPTIONS.gravity

    def field(_, state):
        theta, omega = state
        return [omega, -(damping / mass) * omega - (gravity / length) * math.sin(theta)]

    solution = solve_ivp(
        field, (0.0, OPTIONS.duration), [angle, 0.0], t_eval=OPTIONS.times, method="DOP853", rtol=1e-11, atol=1e-12
    )
    return solution.y[0]


@pytest.mark.parametrize(
    "length, damping, mass, angle",
    [
        (1.0, 0.1, 2.0, math.pi / 4),  # light damping, fast swing
        (3.0, 2.0, 0.1, math.pi / 4),  # overdamped (b / m = 20)
        (2.0, 0.5, 1.0, 3.0),  # large angle: far from the linear regime
    ],
)
def test_rk4_matches_an_adaptive_reference(length, damping, mass, angle):
    theta = simulate([length], [damping], [mass], angle, OPTIONS)[0]
    assert theta.shape == (100,) and theta[0] == angle
    np.testing.assert_allclose(theta, reference(length, damping, mass, angle), atol=1e-6)


def test_small_angle_solution_is_the_damped_harmonic_oscillator():
    length, damping, mass, angle = 2.0, 0.3, 1.5, 1e-3
    gamma = damping / (2 * mass)
    omega_d = math.sqrt(OPTIONS.gravity / length - gamma**2)
    t = OPTIONS.times
    exact = angle * np.exp(-gamma * t) * (np.cos(omega_d * t) + gamma / omega_d * np.sin(omega_d * t))
    theta = simulate([length], [damping], [mass], angle, OPTIONS)[0]
    np.testing.assert_allclose(theta, exact, atol=angle * 2e-3)  # sin(theta) ~ theta to ~1e-7 relative


def test_undamped_pendulum_conserves_energy_and_the_dataset_stores_y0_and_y1(tmp_path):
    dataset = make_pendulum(
        tmp_path / "p", n_images=60, seed=1, options=PendulumOptions(length_steps=5, damping_steps=4, mass_steps=3)
    )
    assert dataset.images.shape == (60, 1, 100) and dataset.images.dtype == np.float32
    assert dataset.factor_names == ("length", "damping", "mass") and dataset.factor_sizes == (5, 4, 3)
    assert 0.0 <= float(dataset.images.min()) and float(dataset.images.max()) <= 1.0
    assert sorted(dataset.extra) == [EXTRA_DAMPED_UNIT_MASS, EXTRA_UNDAMPED]
    assert len(dataset.test_indices) == 6
    length, damping, mass = dataset.factor_values.T
    theta = from_unit_interval(dataset.images[:, 0])
    for row in (0, 17, 59):
        np.testing.assert_allclose(theta[row], reference(length[row], damping[row], mass[row], math.pi / 4), atol=1e-5)
        np.testing.assert_allclose(
            from_unit_interval(dataset.extra[EXTRA_DAMPED_UNIT_MASS][row, 0]),
            reference(length[row], damping[row], 1.0, math.pi / 4),
            atol=1e-5,
        )
    # Y0: no damping, so the energy g/L (1 - cos theta) + theta'^2 / 2 stays at its start; the extremes of the
    # swing come back to the initial angle (to the resolution of the sampling)
    undamped = from_unit_interval(dataset.extra[EXTRA_UNDAMPED][:, 0])
    assert np.abs(undamped).max() <= math.pi / 4 + 1e-5
    assert np.abs(undamped[:, 50:]).max(axis=1).min() > math.pi / 4 - 0.05
    # Y0 depends on the length only: equal lengths, equal series
    same_length = np.flatnonzero(dataset.factor_classes[:, 0] == dataset.factor_classes[0, 0])
    np.testing.assert_allclose(undamped[same_length], undamped[same_length[:1]].repeat(len(same_length), 0), atol=1e-6)
    # the damped series decay: the late swing is smaller than the first
    assert np.all(np.abs(theta[:, 80:]).max(axis=1) < math.pi / 4)

    loaded = load_dataset(tmp_path / "p")
    assert loaded.meta["series"]["scaling"].startswith("x = (theta / pi + 1) / 2")
    fresh = loaded.observations_from_factors(loaded.factor_classes[:5], 0)  # noiseless: the same series
    np.testing.assert_allclose(fresh, np.asarray(loaded.images[:5]), atol=1e-7)
    np.testing.assert_allclose(from_unit_interval(to_unit_interval(theta[:2])), theta[:2], atol=1e-6)


def test_initial_angle_as_a_factor_and_option_checks(tmp_path):
    options = PendulumOptions(
        length_steps=2,
        damping_steps=2,
        mass_steps=2,
        initial_angle_min=0.2,
        initial_angle_max=1.0,
        initial_angle_steps=3,
    )
    dataset = make_pendulum(tmp_path / "a", options=options)
    assert dataset.factor_names[-1] == "initial_angle" and len(dataset) == 24
    np.testing.assert_allclose(from_unit_interval(dataset.images[:, 0, 0]), dataset.factor_values[:, 3], atol=1e-6)
    for bad, message in (
        ({"length_min": 0.0}, "length_min"),
        ({"mass_steps": 0}, "mass_steps"),
        ({"initial_angle_max": 4.0}, "initial_angle_max"),
        ({"substeps": 1, "damping_max": 50.0}, "raise substeps"),
    ):
        with pytest.raises(ValueError, match=message):
            PendulumOptions(**bad)
    with pytest.raises(ValueError, match="at most the grid size 8"):
        make_pendulum(
            tmp_path / "b", n_images=9, options=PendulumOptions(length_steps=2, damping_steps=2, mass_steps=2)
        )
    assert not (tmp_path / "b").exists()
