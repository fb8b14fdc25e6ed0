"""The simple pendulum of MS-VAE appendix C: a noiseless simulator of the angular displacement theta(t).

theta'' = -(b / m) theta' - (g / L) sin(theta), released at rest from theta_0, sampled at T = 100 times over
``duration`` seconds and integrated by fixed-step fourth-order Runge-Kutta (``substeps`` per sample, every
pendulum of a batch at once). The factors form a grid: ``length``, ``damping``, ``mass`` (and ``initial_angle``
when it varies). The two intermediate observations of the paper's figure 17 are stored beside it:
Y0 = ``extra["undamped"]`` (b = 0) and Y1 = ``extra["damped_unit_mass"]`` (m = 1).

The dataset's ``images`` are float32 series ``(N, 1, T)`` scaled to [0, 1] by x = (theta / pi + 1) / 2; meta.json
records the scaling, g, the times and the grid. Accuracy, stability bound and defaults: docs/datasets.md,
"The pendulum simulator".
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable

import numpy as np

from multistage.data import base
from multistage.data.sources import check_common_options, choose_rows, random_split

GRAVITY = 9.81  # m / s^2
SERIES_LENGTH = 100  # T of MS-VAE appendix C
RK4_STABILITY_LIMIT = 2.78  # |h lambda| on the negative real axis
EXTRA_UNDAMPED, EXTRA_DAMPED_UNIT_MASS = "undamped", "damped_unit_mass"

Progress = Callable[[int, int], None]


@dataclasses.dataclass(frozen=True)
class PendulumOptions:
    """Factor grid and integration settings (module docstring); validated on creation (ValueError naming it)."""

    length_min: float = 1.0
    length_max: float = 3.0
    length_steps: int = 20
    damping_min: float = 0.1
    damping_max: float = 2.0
    damping_steps: int = 20
    mass_min: float = 0.1
    mass_max: float = 2.0
    mass_steps: int = 20
    initial_angle_min: float = math.pi / 4
    initial_angle_max: float = math.pi / 4
    initial_angle_steps: int = 1
    duration: float = 10.0
    series_length: int = SERIES_LENGTH
    substeps: int = 10
    gravity: float = GRAVITY

    def __post_init__(self) -> None:
        def number(name: str, low: float, high: float = math.inf, low_open: bool = True) -> None:
            value = getattr(self, name)
            bad_low = value <= low if low_open else value < low
            if isinstance(value, bool) or not isinstance(value, (int, float)) or bad_low or value > high:
                bracket = "(" if low_open else "["
                raise ValueError(f"{name} must be a number in {bracket}{low}, {high}], got {value!r}")

        def count(name: str, low: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

        for factor in ("length", "damping", "mass"):
            number(f"{factor}_min", 0.0, low_open=factor != "damping")
            number(f"{factor}_max", getattr(self, f"{factor}_min"), low_open=False)
            count(f"{factor}_steps")
        number("initial_angle_min", -math.pi, math.pi, low_open=False)
        number("initial_angle_max", self.initial_angle_min, math.pi, low_open=False)
        count("initial_angle_steps")
        number("duration", 0.0)
        count("series_length", 2)
        count("substeps")
        number("gravity", 0.0)
        # the linearised system's eigenvalues have |lambda| <= max(b / m, sqrt(g / L))
        rate = max(self.damping_max / self.mass_min, self.damping_max, math.sqrt(self.gravity / self.length_min))
        if self.step * rate >= RK4_STABILITY_LIMIT:
            raise ValueError(
                f"substeps={self.substeps} is too few: the RK4 step h = {self.step:g} s times the fastest rate "
                f"max(damping_max / mass_min, sqrt(gravity / length_min)) = {rate:g} / s is "
                f"{self.step * rate:.2f} >= {RK4_STABILITY_LIMIT}; raise substeps"
            )

    @property
    def step(self) -> float:
        """The RK4 step h in seconds."""
        return self.duration / self.series_length / self.substeps

    @property
    def times(self) -> np.ndarray:
        """The T sample times t_k = k duration / T, float64."""
        return np.arange(self.series_length) * (self.duration / self.series_length)

    def factor_grid(self) -> dict[str, np.ndarray]:
        """Factor name -> its grid of values (initial_angle only when it varies)."""
        grid = {
            factor: np.linspace(
                getattr(self, f"{factor}_min"), getattr(self, f"{factor}_max"), getattr(self, f"{factor}_steps")
            )
            for factor in ("length", "damping", "mass")
        }
        if self.initial_angle_steps > 1:
            grid["initial_angle"] = np.linspace(
                self.initial_angle_min, self.initial_angle_max, self.initial_angle_steps
            )
        return grid


def simulate(
    length: np.ndarray,
    damping: np.ndarray,
    mass: np.ndarray,
    initial_angle: np.ndarray | float,
    options: PendulumOptions,
) -> np.ndarray:
    """theta(t_k) in radians, float64 (n, T), for n pendulums, by fixed-step RK4 (module docstring).

    theta'' = -(b / m) theta' - (g / L) sin theta (MS-VAE appendix C), theta(0) = initial_angle, theta'(0) = 0.
    ``damping=0`` gives the undamped pendulum Y0, ``mass=1`` the unit-mass one Y1.
    """
    length, damping, mass = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (length, damping, mass))
    n = len(length)
    friction = damping / mass  # b / m
    stiffness = options.gravity / length  # g / L
    theta = np.broadcast_to(np.asarray(initial_angle, dtype=np.float64), (n,)).copy()
    omega = np.zeros(n)
    h = options.step

    def acceleration(angle: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        return -friction * velocity - stiffness * np.sin(angle)

    series = np.empty((n, options.series_length))
    for k in range(options.series_length):
        series[:, k] = theta
        for _ in range(options.substeps):
            k1_theta, k1_omega = omega, acceleration(theta, omega)
            k2_theta = omega + 0.5 * h * k1_omega
            k2_omega = acceleration(theta + 0.5 * h * k1_theta, k2_theta)
            k3_theta = omega + 0.5 * h * k2_omega
            k3_omega = acceleration(theta + 0.5 * h * k2_theta, k3_theta)
            k4_theta = omega + h * k3_omega
            k4_omega = acceleration(theta + h * k3_theta, k4_theta)
            theta = theta + (h / 6.0) * (k1_theta + 2.0 * k2_theta + 2.0 * k3_theta + k4_theta)
            omega = omega + (h / 6.0) * (k1_omega + 2.0 * k2_omega + 2.0 * k3_omega + k4_omega)
    return series


def to_unit_interval(theta: np.ndarray) -> np.ndarray:
    """Radians in [-pi, pi] -> float32 in [0, 1]: (theta / pi + 1) / 2."""
    return ((np.asarray(theta) / np.pi + 1.0) / 2.0).astype(np.float32)


def from_unit_interval(x: np.ndarray) -> np.ndarray:
    """The inverse of `to_unit_interval`: theta = pi (2 x - 1), float64."""
    return np.pi * (2.0 * np.asarray(x, dtype=np.float64) - 1.0)


def _values(classes: np.ndarray, options: PendulumOptions) -> dict[str, np.ndarray]:
    grid = options.factor_grid()
    values = {name: grid[name][classes[:, k]] for k, name in enumerate(grid)}
    values.setdefault("initial_angle", np.full(len(classes), options.initial_angle_min))
    return values


def render_series(classes: np.ndarray, options: PendulumOptions) -> dict[str, np.ndarray]:
    """The scaled series of factor classes (n, K): ``{"theta", "undamped", "damped_unit_mass"}`` float32 (n, 1, T)."""
    values = _values(classes, options)
    length, damping, mass, angle = values["length"], values["damping"], values["mass"], values["initial_angle"]
    return {
        "theta": to_unit_interval(simulate(length, damping, mass, angle, options))[:, None],
        EXTRA_UNDAMPED: to_unit_interval(simulate(length, np.zeros_like(length), mass, angle, options))[:, None],
        EXTRA_DAMPED_UNIT_MASS: to_unit_interval(simulate(length, damping, np.ones_like(length), angle, options))[
            :, None
        ],
    }


class PendulumRenderer:
    """``renderer(classes, rng) -> float32 (n, 1, T)``: the simulator is noiseless, so ``rng`` is unused."""

    def __init__(self, options: PendulumOptions) -> None:
        self.options = options

    def __call__(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        values = _values(classes, self.options)
        theta = simulate(values["length"], values["damping"], values["mass"], values["initial_angle"], self.options)
        return to_unit_interval(theta)[:, None]


def renderer_from_meta(meta: dict) -> PendulumRenderer:
    """The renderer of a saved pendulum dataset, from its meta.json contents."""
    return PendulumRenderer(PendulumOptions(**meta.get("params", {}).get("simulator", {})))


base.register_renderer_factory("pendulum", renderer_from_meta)


def make_pendulum(
    out_dir: str | os.PathLike,
    n_images: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.1,
    options: PendulumOptions | None = None,
    chunk_size: int = 4096,
    progress: Progress | None = None,
) -> base.GroundTruthDataset:
    """Simulate the pendulum grid into ``out_dir`` (images.npy = theta series, extras Y0 and Y1) and load it.

    ``n_images=None`` simulates every grid cell (in grid order, last factor fastest); an int draws that many cells
    without replacement (from ``seed``), kept in grid order. The test split is ``round(test_fraction * n)`` random
    rows. ``progress(done, total)`` is called after each chunk of ``chunk_size`` series.
    """
    options = options if options is not None else PendulumOptions()
    grid = options.factor_grid()
    sizes = tuple(len(values) for values in grid.values())
    total = int(np.prod(sizes))
    check_common_options(n_images, seed, test_fraction)
    if n_images is not None and n_images > total:
        raise ValueError(f"n_images must be at most the grid size {total} ({dict(zip(grid, sizes))}), got {n_images}")
    rows = choose_rows(total, n_images, int(seed))
    classes = np.stack(np.unravel_index(rows, sizes), axis=1).astype(np.int64)
    n = len(rows)
    series = {
        name: np.empty((n, 1, options.series_length), dtype=np.float32)
        for name in ("theta", EXTRA_UNDAMPED, EXTRA_DAMPED_UNIT_MASS)
    }
    for start in range(0, n, chunk_size):
        for name, values in render_series(classes[start : start + chunk_size], options).items():
            series[name][start : start + chunk_size] = values
        if progress is not None:
            progress(min(start + chunk_size, n), n)
    values = np.stack([grid[name][classes[:, k]] for k, name in enumerate(grid)], axis=1)
    dataset = base.GroundTruthDataset(
        images=series.pop("theta"),
        factor_names=tuple(grid),
        factor_sizes=sizes,
        factor_classes=classes,
        factor_values=values,
        nuisance={},
        split=random_split(n, float(test_fraction), int(seed)),
        extra=series,
    )
    meta = {
        "dataset": "pendulum",
        "variant": "",
        "params": {
            "seed": int(seed),
            "n_images": None if n_images is None else int(n_images),
            "test_fraction": float(test_fraction),
            "simulator": dataclasses.asdict(options),
        },
        "series": {
            "scaling": "x = (theta / pi + 1) / 2, theta = pi (2 x - 1) in radians",
            "times_seconds": options.times.tolist(),
            "extras": {
                EXTRA_UNDAMPED: "Y0: the same pendulum with b = 0 (MS-VAE appendix C)",
                EXTRA_DAMPED_UNIT_MASS: "Y1: the damped pendulum with m = 1 (MS-VAE appendix C)",
            },
        },
        "specification": "MS-VAE appendix C: theta'' = -(b/m) theta' - (g/L) sin theta, RK4",
    }
    base.save_dataset(dataset, out_dir, meta)
    del dataset
    return base.load_dataset(out_dir)
