"""The pendulum chain's data and its measurements (period, decay) against the linear oscillator's closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from multistage.chains.pendulum import (
    PendulumTableOptions,
    decay_rate,
    oscillation_period,
    relative_change,
    simulate_series,
    simulate_table,
    z_for_mass,
)
from multistage.data.pendulum import PendulumOptions

GRAVITY = 9.81


def test_the_table_holds_the_papers_paired_variables():
    options = PendulumTableOptions(series=40, test_series=10, seed=3)
    table = simulate_table(options)
    assert table.shapes() == {
        "length": (1,),
        "damping": (1,),
        "mass": (1,),
        "initial_angle": (1,),
        "y0": (100,),
        "y1": (100,),
        "theta": (100,),
    }
    assert len(table.test_rows) == 10 and len(table.train_rows) == 30
    for factor in ("length", "damping", "mass"):
        low, high = options.range(factor)
        assert low <= table.values[factor].min() < table.values[factor].max() <= high
    assert np.allclose(table.values["initial_angle"], math.pi / 4)
    # y0 depends on L only, y1 on L and b only, theta on all three (same L, other b and m)
    series = simulate_series([2.0, 2.0, 2.0], [0.5, 0.5, 1.5], [1.0, 0.3, 0.3], options)
    assert np.array_equal(series["y0"][0], series["y0"][2]) and np.array_equal(series["y1"][0], series["y1"][1])
    assert np.array_equal(series["theta"][0], series["y1"][0])  # m = 1: the observation is Y1
    assert not np.allclose(series["theta"][1], series["y1"][1], atol=1e-3)
    assert np.allclose(series["y0"][:, 0], math.pi / 4)


@pytest.mark.parametrize("length, damping, mass", [(1.0, 0.1, 1.0), (3.0, 1.0, 1.5), (1.5, 2.0, 2.0), (2.0, 0.5, 0.4)])
def test_period_and_decay_match_the_damped_linear_oscillator(length, damping, mass):
    """Small swings: theta ~ A e^{-gamma t} cos(omega t), gamma = b / 2m, omega^2 = g / L - gamma^2."""
    options = PendulumTableOptions(
        series=2, test_series=1, simulator=PendulumOptions(initial_angle_min=0.02, initial_angle_max=0.02)
    )
    theta = simulate_series([length], [damping], [mass], options)["theta"]
    gamma = damping / (2 * mass)
    period = 2 * math.pi / math.sqrt(GRAVITY / length - gamma**2)
    assert oscillation_period(theta, options.times)[0] == pytest.approx(period, rel=0.002)
    assert decay_rate(theta, options.times, amplitude_floor=1e-4)[0] == pytest.approx(gamma, rel=0.005)


def test_an_overdamped_swing_has_no_period_and_changes_skip_it():
    options = PendulumTableOptions(series=2, test_series=1)
    theta = simulate_series([1.0], [2.0], [0.1], options)["theta"]  # b / m = 20: no oscillation
    assert math.isnan(oscillation_period(theta, options.times)[0])
    assert relative_change(np.array([np.nan, 2.0, 3.0, 4.0])) == pytest.approx((4.0 - 2.0) / 3.0)
    assert relative_change(np.array([2.0, 2.0])) == 0.0 and math.isnan(relative_change(np.array([np.nan, 1.0])))


def test_z_for_a_mass_is_the_mean_posterior_of_the_nearest_sequences():
    mass = np.array([0.1, 0.2, 1.0, 1.1, 1.9])
    z = np.array([[5.0], [3.0], [0.0], [-1.0], [-4.0]])
    assert np.allclose(z_for_mass(mass, z, [0.12, 1.04, 2.0], neighbours=2), [[4.0], [-0.5], [-2.5]])
