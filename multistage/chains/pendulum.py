"""The pendulum experiment of MS-VAE appendix C as a chain: its data, its measured checks and its figures.

Data (`simulate_table`): n pendulums with length L, damping b and mass m drawn uniformly from their ranges,
simulated by ``multistage.data.pendulum.simulate`` into three series in radians: ``theta`` (the observation),
``y0`` (undamped, a function of L alone) and ``y1`` (unit mass, a function of L and b), with the factors as
(n, 1) variables. The appendix's paired sets {L, y0}, {b, y0, y1} and {y1, theta} are columns of this one table;
the mass is in it for the checks only.

Checks (`evaluate_pendulum`): the |Pearson r| (and Spearman's rho) between the posterior mean of z and the true
mass on held-out sequences (Figure 16), and traversals with z fixed (Figure 15) whose period and decay rate
(`oscillation_period`, `decay_rate`, `relative_change`) are reported beside the simulator's own. What each check
measures: docs/chains.md, "The pendulum (MS-VAE appendix C)".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from multistage.chains.runner import TrainedChain, VariableTable
from multistage.data.pendulum import PendulumOptions, simulate
from multistage.io import atomic_path

FACTORS = ("length", "damping", "mass")


@dataclass(frozen=True)
class PendulumTableOptions:
    """``series`` pendulums, ``test_series`` of them held out (at random), from ``seed``; ``simulator`` holds the
    factor ranges and the integration settings (``multistage.data.pendulum.PendulumOptions``, which checks them:
    ranges, RK4 stability). Every factor is drawn uniformly in [min, max] (its ``*_steps`` grid is not used)."""

    series: int = 8000
    test_series: int = 1000
    seed: int = 0
    simulator: PendulumOptions = field(default_factory=PendulumOptions)

    def __post_init__(self) -> None:
        if self.series < 2 or not 1 <= self.test_series < self.series:
            raise ValueError(f"need series >= 2 and 1 <= test_series < series, got {self.series}, {self.test_series}")

    def range(self, factor: str) -> tuple[float, float]:
        return getattr(self.simulator, f"{factor}_min"), getattr(self.simulator, f"{factor}_max")

    @property
    def times(self) -> np.ndarray:
        return self.simulator.times

    @property
    def initial_angle(self) -> float:
        """The release angle of traversals: the middle of its range (the range is one value by default)."""
        return 0.5 * sum(self.range("initial_angle"))


VARIABLES = ("length", "damping", "mass", "initial_angle", "y0", "y1", "theta")


def simulate_series(length, damping, mass, options: PendulumTableOptions, initial_angle=None) -> dict[str, np.ndarray]:
    """theta, y0 (b = 0) and y1 (m = 1) in radians, float32 (n, T), for the given factor values (the release
    angle: ``initial_angle``, one value or one per pendulum; default ``options.initial_angle``)."""
    length, damping, mass = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (length, damping, mass))
    angle = options.initial_angle if initial_angle is None else np.asarray(initial_angle, np.float64).reshape(-1)
    simulator = options.simulator
    return {
        "theta": simulate(length, damping, mass, angle, simulator).astype(np.float32),
        "y0": simulate(length, np.zeros_like(length), mass, angle, simulator).astype(np.float32),
        "y1": simulate(length, damping, np.ones_like(length), angle, simulator).astype(np.float32),
    }


def simulate_table(options: PendulumTableOptions) -> VariableTable:
    """The chain's data (module docstring): factors uniform in their ranges from ``options.seed``."""
    rng = np.random.default_rng(options.seed)
    factors = {name: rng.uniform(*options.range(name), options.series) for name in FACTORS}
    split = np.zeros(options.series, dtype=np.int8)
    split[rng.permutation(options.series)[: options.test_series]] = 1
    factors["initial_angle"] = rng.uniform(*options.range("initial_angle"), options.series)
    values = {name: value.astype(np.float32)[:, None] for name, value in factors.items()}
    values |= simulate_series(factors["length"], factors["damping"], factors["mass"], options, factors["initial_angle"])
    return VariableTable(values, split)


# ------------------------------------------------------------------------------------------------ measurements
def oscillation_period(series: np.ndarray, times: np.ndarray, amplitude_floor: float = 0.0) -> np.ndarray:
    """Seconds per oscillation of each row of ``series`` (n, T): twice the mean interval between consecutive
    zero crossings (times linearly interpolated between samples), counting only the crossings before the swing
    last reaches ``amplitude_floor`` radians (past it, a model's small errors would add crossings of their own);
    NaN with fewer than two crossings (an overdamped pendulum)."""
    series = np.atleast_2d(np.asarray(series, dtype=np.float64))
    out = np.full(len(series), np.nan)
    for row, theta in enumerate(series):
        above = np.flatnonzero(np.abs(theta) >= amplitude_floor)
        theta = theta[: above[-1] + 1] if len(above) else theta[:0]
        sign_change = np.flatnonzero(np.signbit(theta[:-1]) != np.signbit(theta[1:]))
        if len(sign_change) < 2:
            continue
        a, b = theta[sign_change], theta[sign_change + 1]
        crossings = times[sign_change] + (times[sign_change + 1] - times[sign_change]) * a / (a - b)
        out[row] = 2.0 * float(np.mean(np.diff(crossings)))
    return out


def _parabolic_peaks(values: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of ``values`` refined by the parabola through each peak sample and its neighbours: (times,
    heights). The first sample counts as a peak when it is at least its neighbour (a release from rest)."""
    inner = np.flatnonzero((values[1:-1] >= values[:-2]) & (values[1:-1] > values[2:])) + 1
    dt = times[1] - times[0]
    left, centre, right = values[inner - 1], values[inner], values[inner + 1]
    curvature = left - 2.0 * centre + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1.0), 0.0)
    peak_times = times[inner] + offset * dt
    heights = centre - 0.25 * (left - right) * offset
    if values[0] >= values[1]:
        peak_times, heights = np.concatenate([[times[0]], peak_times]), np.concatenate([[values[0]], heights])
    return peak_times, heights


def decay_rate(series: np.ndarray, times: np.ndarray, amplitude_floor: float = 0.01) -> np.ndarray:
    """The decay rate (1/s) of each row's envelope: minus the least-squares slope of log |theta| at its peaks
    (local maxima of |theta|, i.e. every half swing, parabola-refined) against time, over the peaks at least
    ``amplitude_floor`` radians high (below it a model's small errors dominate). For theta ~ A e^{-gamma t}
    cos(omega t) this is gamma = b / (2 m). NaN with fewer than two such peaks."""
    series = np.atleast_2d(np.asarray(series, dtype=np.float64))
    out = np.full(len(series), np.nan)
    for row, theta in enumerate(series):
        peak_times, heights = _parabolic_peaks(np.abs(theta), times)
        keep = heights >= amplitude_floor
        if keep.sum() < 2:
            continue
        slope = np.polyfit(peak_times[keep], np.log(heights[keep]), 1)[0]
        out[row] = -float(slope)
    return out


def relative_change(values: np.ndarray) -> float:
    """(last - first) / mean of a traversal's measurements, over those that are defined (a heavily damped
    pendulum has no period): the first and last finite values and the mean of the finite ones; NaN when fewer
    than two are. Relative to the mean rather than to the first value, so that a small first value (the decay
    at b = 0.1) does not blow the number up: a monotone change lies in (-2, 2), no change is 0."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan")
    return float((values[-1] - values[0]) / abs(values.mean()))


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass(frozen=True)
class PendulumEvaluation:
    """Which variables play which role, and the Figure 15/16 settings: ``held_out`` test sequences for the
    correlation; ``traversal_points`` values per traversal over the data's range; the fixed ``length``,
    ``damping``, ``mass`` of the traversals (z fixed at the mean posterior z of the ``neighbours`` held-out
    sequences of nearest mass); ``amplitude_floor``: the swings below it (radians) are left out of the period and
    decay measurements (:func:`oscillation_period`, :func:`decay_rate`)."""

    latent_node: str = "residual"
    observed: str = "theta"
    held_out: int = 500
    traversal_points: int = 5
    fixed_length: float = 1.5
    fixed_damping: float = 1.0
    fixed_mass: float = 1.5
    neighbours: int = 25
    amplitude_floor: float = 0.02

    def __post_init__(self) -> None:
        for name, low in (("held_out", 2), ("traversal_points", 2), ("neighbours", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("fixed_length", "fixed_mass", "amplitude_floor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def z_for_mass(mass: np.ndarray, z: np.ndarray, targets: Sequence[float], neighbours: int) -> np.ndarray:
    """For each target mass, the mean z (n, latent_dim) of the ``neighbours`` sequences whose mass is nearest —
    how appendix C picks the z values it plots ("examining the posterior over z")."""
    mass = np.asarray(mass).reshape(-1)
    k = min(int(neighbours), len(mass))
    return np.stack([z[np.argsort(np.abs(mass - target))[:k]].mean(axis=0) for target in targets])


def _root_tensors(device, **factors) -> dict[str, torch.Tensor]:
    return {
        name: torch.as_tensor(np.asarray(value, np.float32).reshape(-1, 1), device=device)
        for name, value in factors.items()
    }


def evaluate_pendulum(
    chain: TrainedChain,
    table: VariableTable,
    options: PendulumTableOptions,
    evaluation: PendulumEvaluation,
    device: torch.device | str = "cpu",
) -> tuple[dict, dict]:
    """(metrics, figure data): the checks of the module docstring. Metrics are flat, keys ``pendulum.<...>``;
    the figure data holds the held-out z and mass and the traversals (simulator and model series)."""
    from scipy.stats import pearsonr, spearmanr

    node = chain.nodes[evaluation.latent_node]
    rows = table.test_rows[: evaluation.held_out]
    values = table.tensors([*node.spec.inputs, node.spec.output], rows, device)
    z = chain.infer_latents(values)[evaluation.latent_node].cpu().numpy()
    mass = np.asarray(table.values["mass"][rows]).reshape(-1)
    correlations = [pearsonr(z[:, j], mass)[0] for j in range(z.shape[1])]
    unit = int(np.nanargmax(np.abs(correlations)))
    metrics = {
        "pendulum.held_out_sequences": len(rows),
        "pendulum.z_unit": unit,
        "pendulum.mass_abs_pearson_r.posterior_mean": float(abs(correlations[unit])),
        "pendulum.mass_abs_spearman_rho.posterior_mean": float(abs(spearmanr(z[:, unit], mass)[0])),
    }
    # reconstruction of held-out theta from its own posterior z (the generated chain from the true L and b
    # would add the first two nodes' errors: that is the traversals' business)
    recon = node.generate({v: values[v] for v in node.spec.inputs}, torch.as_tensor(z, device=device))
    truth = values[node.spec.output].reshape(len(rows), -1).cpu().numpy()
    metrics["pendulum.theta_rmse.reconstruction"] = float(
        np.sqrt(np.mean((recon.cpu().numpy().reshape(len(rows), -1) - truth) ** 2))
    )

    times = options.times
    points = evaluation.traversal_points
    fixed_z = z_for_mass(mass, z, [evaluation.fixed_mass], evaluation.neighbours)[0]
    traversals = {factor: np.linspace(*options.range(factor), points) for factor in FACTORS}
    figure_data = {"z": z, "mass": mass, "unit": unit, "times": times, "traversals": {}}
    for factor, grid in traversals.items():
        length = grid if factor == "length" else np.full(points, evaluation.fixed_length)
        damping = grid if factor == "damping" else np.full(points, evaluation.fixed_damping)
        masses = grid if factor == "mass" else np.full(points, evaluation.fixed_mass)
        latents = (
            z_for_mass(mass, z, grid, evaluation.neighbours)
            if factor == "mass"
            else np.repeat(fixed_z[None], points, axis=0)
        )
        simulated = simulate_series(length, damping, masses, options)["theta"]
        roots = _root_tensors(
            device, length=length, damping=damping, initial_angle=np.full(points, options.initial_angle)
        )
        generated = chain.generate(
            roots, {evaluation.latent_node: torch.as_tensor(latents, dtype=torch.float32, device=device)}
        )
        model = generated[evaluation.observed].reshape(points, -1).cpu().numpy()
        name = "z" if factor == "mass" else factor
        for source, series in (("simulator", simulated), ("model", model)):
            periods = oscillation_period(series, times, evaluation.amplitude_floor)
            decays = decay_rate(series, times, evaluation.amplitude_floor)
            metrics[f"pendulum.traverse_{name}.period_relative_change.{source}"] = relative_change(periods)
            metrics[f"pendulum.traverse_{name}.decay_relative_change.{source}"] = relative_change(decays)
        metrics[f"pendulum.traverse_{name}.theta_rmse.model_vs_simulator"] = float(
            np.sqrt(np.mean((model - simulated) ** 2))
        )
        figure_data["traversals"][name] = {
            "length": length,
            "damping": damping,
            "mass": masses,
            "z": latents[:, unit],
            "simulator": simulated,
            "model": model,
        }
    return metrics, figure_data


# ------------------------------------------------------------------------------------------------ figures
def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=110, format="png")
    finally:
        plt.close(figure)
    return Path(path)


TRAVERSAL_TITLES = {
    "length": "traversing the length L with b and z fixed",
    "damping": "traversing the damping b with L and z fixed",
    "z": "traversing the mass m (simulator) and the matching z (model) with L and b fixed",
}


def traversal_figure(path: str | Path, name: str, data: Mapping, times: np.ndarray) -> Path:
    """Figure 15 style: the simulator's series (blue, top row) above the model's (red, bottom row), one column per
    traversed value, titled with the factor values (and z for the model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = len(data["simulator"])
    figure, axes = plt.subplots(2, points, figsize=(2.3 * points, 3.8), sharex=True, sharey=True, squeeze=False)
    for column in range(points):
        label = f"L: {data['length'][column]:.2f}, b: {data['damping'][column]:.2f}"
        for row, (source, colour, tail) in enumerate(
            (
                ("simulator", "tab:blue", f"m: {data['mass'][column]:.2f}"),
                ("model", "tab:red", f"z: {data['z'][column]:.2f}"),
            )
        ):
            axis = axes[row, column]
            axis.plot(times, data[source][column], color=colour, linewidth=1.2)
            axis.set_title(f"{label}, {tail}", fontsize=7)
            axis.tick_params(labelsize=6)
            if column == 0:
                axis.set_ylabel(f"{source}\nangle (rad)", fontsize=7)
            if row == 1:
                axis.set_xlabel("time (s)", fontsize=7)
    figure.suptitle(TRAVERSAL_TITLES[name], fontsize=9)
    figure.tight_layout()
    return _save(figure, Path(path))


def correlation_figure(path: str | Path, z: np.ndarray, mass: np.ndarray, unit: int, r: float) -> Path:
    """Figure 16 style: the posterior mean of z (unit ``unit``) against the true mass, one point per sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.2, 3.4))
    axis.scatter(mass, z[:, unit], s=6, alpha=0.6, color="tab:purple")
    axis.set_xlabel("mass m (never seen by the model)", fontsize=8)
    axis.set_ylabel(f"posterior mean of z{'' if z.shape[1] == 1 else f'[{unit}]'}", fontsize=8)
    axis.set_title(f"{len(mass)} held-out sequences: |Pearson r| = {r:.3f}", fontsize=9)
    axis.tick_params(labelsize=7)
    figure.tight_layout()
    return _save(figure, Path(path))


def pendulum_figures(folder: str | Path, figure_data: Mapping, metrics: Mapping) -> list[Path]:
    """traverse_length.png, traverse_damping.png, traverse_z.png (Figure 15) and z_vs_mass.png (Figure 16)."""
    folder = Path(folder)
    paths = [
        traversal_figure(folder / f"traverse_{name}.png", name, data, figure_data["times"])
        for name, data in figure_data["traversals"].items()
    ]
    paths.append(
        correlation_figure(
            folder / "z_vs_mass.png",
            figure_data["z"],
            figure_data["mass"],
            figure_data["unit"],
            metrics["pendulum.mass_abs_pearson_r.posterior_mean"],
        )
    )
    return paths
