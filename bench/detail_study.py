"""What lets stage two's z carry the detail stage one drops: MS-VAE trained with one lever changed at a time on the
embedded default's paired set, each scored by the evaluate stage's detail probes against stage-two CPU-minutes.

    dvc repro pairs                                   # in a clone with the default params: data, stage one, pairs
    OMP_NUM_THREADS=1 python -m bench.detail_study --repo <that clone> --levers default warmup ... --seeds 0
    python -m bench.detail_study --repo <that clone> --merge   # combine per-process files, write the figure
    python -m bench.detail_study --repo <that clone> --diagnose 3000 --units 5 10 20   # what |Z| does to colour

A lever is a set of ``stage_two.msvae`` options and training overrides (``LEVERS``). For each (lever, seed) the
script trains ``multistage.models.stage_two.msvae.MSVAE`` on ``pairs/`` with the project's training loop (one
checkpoint per run under ``bench/work/detail_study/``, so a killed run resumes), counts the process's CPU seconds,
then scores the ``evaluate.eval_images`` held-out images of the test split exactly as the evaluate stage does:

* ``colour_r2``: the mean over colour_r/g/b of the detail probes' R^2 on X-hat (``multistage.metrics.detail``);
* ``grating_frequency_gap_closed``, ``grating_angle_gap_closed``, ``gap_closed``: the fraction of the X-Y gap that
  X-hat closes, per column and averaged over the nuisance columns (null where X and Y differ by < ``min_gap``);
* ``mig_ratio``: the stage-one encoder's MIG (histogram, 20 bins, all factors) on X-hat over its MIG on Y;
* ``detail_fd_ratio``: the detail network's Fréchet distance of X-hat to X over that of Y to X;
* ``kl``: the KL of q(z|x, y) at the end of training (nats, summed over units), ``recon``: its reconstruction term,
  ``decoder_variance``: the learned variance of the Gaussian likelihood (null for the Bernoulli).

Every run is written to ``--out`` as soon as it is scored; ``--merge`` combines the files, takes the median over
seeds of each lever (``<lever>.<key>`` the median, ``<lever>.seeds.<key>`` the per-seed values) and draws
``docs/studies/stage-two-detail/levers.png`` (gap closed against stage-two CPU-minutes) and the X / Y / X-hat grid of
the first lever given to ``--grid``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from multistage.data.base import load_dataset, to_float
from multistage.evaluation.config import EvaluationConfig
from multistage.evaluation.detail import DetailProbeData, train_detail_network
from multistage.evaluation.representation import held_out_indices
from multistage.evaluation.scoring import feature_extractor
from multistage.metrics.frechet import frechet_distance
from multistage.metrics.mig import mutual_information_gap
from multistage.models.stage_two.msvae import MSVAE, MSVAEConfig
from multistage.train import LoopConfig, train
from stages.common import load_trained_model

WORK = Path("bench/work/detail_study")
RESULTS = Path("bench/results/detail_study.json")
FIGURES = Path("docs/studies/stage-two-detail")

# name: (stage_two.msvae options, training overrides); everything else is stage_two as it was before this study
LEVERS: dict[str, tuple[dict, dict]] = {
    "bernoulli": ({}, {}),  # the previous default
    "warmup": ({"kl_warmup_steps": 1000}, {}),
    "free_bits": ({"free_bits": 1.0}, {}),
    "no_zero_init": ({"zero_init": False}, {}),
    "film": ({"modulation": "film"}, {}),
    "encoder_sees_y": ({"residual_encoder_sees_y": True}, {}),
    "z10": ({}, {"residual_dim": 10}),
    "gaussian": ({"likelihood": "gaussian_learned"}, {}),
    "beta0.25": ({"beta": 0.25}, {}),
    "lr3e-4": ({}, {"learning_rate": 3e-4}),
    "steps5000": ({}, {"steps": 5000}),
    "gaussian_z10": ({"likelihood": "gaussian_learned"}, {"residual_dim": 10}),
    "gaussian_z10_steps5000": ({"likelihood": "gaussian_learned"}, {"residual_dim": 10, "steps": 5000}),
    "gaussian_warmup": ({"likelihood": "gaussian_learned", "kl_warmup_steps": 1500}, {}),
    "gaussian_steps7500": ({"likelihood": "gaussian_learned"}, {"steps": 7500}),
    "gaussian_warmup_lr2e-3": ({"likelihood": "gaussian_learned", "kl_warmup_steps": 1500}, {"learning_rate": 2e-3}),
    "gaussian_warmup_steps5000": ({"likelihood": "gaussian_learned", "kl_warmup_steps": 3000}, {"steps": 5000}),
    "gaussian_warmup_lr3e-3": ({"likelihood": "gaussian_learned", "kl_warmup_steps": 1500}, {"learning_rate": 3e-3}),
    "default": (  # the embedded default's stage_two.msvae (and stage_two.residual_dim) since this study
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500},
        {"learning_rate": 2e-3, "steps": 5000, "residual_dim": 10},
    ),
    "default_z5": (  # the default before, with five units of z
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500},
        {"learning_rate": 2e-3, "steps": 5000},
    ),
    "default_z5_steps10000": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500},
        {"learning_rate": 2e-3, "steps": 10000},
    ),
    "gaussian_warmup_lr2e-3_z10": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500},
        {"learning_rate": 2e-3, "residual_dim": 10},
    ),
    "gaussian_warmup_lr2e-3_waves64": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "texture_waves": 64},
        {"learning_rate": 2e-3},
    ),
    "gaussian_sees_y": ({"likelihood": "gaussian_learned", "residual_encoder_sees_y": True}, {}),
    "z5_beta0.25": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "beta": 0.25},
        {"learning_rate": 2e-3, "steps": 5000},
    ),
    "z5_logvar-6": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "posterior_logvar_init": -6.0},
        {"learning_rate": 2e-3, "steps": 5000},
    ),
    "z5_kaiming_logvar-6": (
        {
            "likelihood": "gaussian_learned",
            "kl_warmup_steps": 1500,
            "posterior_logvar_init": -6.0,
            "encoder_init": "kaiming",
        },
        {"learning_rate": 2e-3, "steps": 5000},
    ),
    "z20": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500},
        {"learning_rate": 2e-3, "steps": 5000, "residual_dim": 20},
    ),
    "z10_waves64": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "texture_waves": 64},
        {"learning_rate": 2e-3, "steps": 5000, "residual_dim": 10},
    ),
    "z16_waves64": (
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "texture_waves": 64},
        {"learning_rate": 2e-3, "steps": 5000, "residual_dim": 16},
    ),
    "default_k4": (  # four draws of z per image in the reconstruction term (Kingma & Welling 2014, eq. 7)
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 1500, "samples_per_x": 4},
        {"learning_rate": 2e-3, "steps": 5000, "residual_dim": 10},
    ),
    "default_k4_steps2000": (  # the same, shorter: 8,000 decoder passes per image against 5,000
        {"likelihood": "gaussian_learned", "kl_warmup_steps": 600, "samples_per_x": 4},
        {"learning_rate": 2e-3, "steps": 2000, "residual_dim": 10},
    ),
}
DEFAULT_TRAINING = {"steps": 2500, "batch_size": 64, "learning_rate": 1e-3, "residual_dim": 5}


class Reference:
    """What every run is scored against, computed once per process: the held-out rows, X and Y, the probes fitted
    on real training images, the detail network and the features and MIG of X and Y."""

    def __init__(self, repo: Path, device: torch.device) -> None:
        self.dataset = load_dataset(repo / "data/prepared")
        self.stage_one = load_trained_model(repo / "models/stage_one/model.pt", "stage_one", device)
        self.config, self.device = EvaluationConfig(), device
        self.indices = held_out_indices(self.dataset, self.config.eval_images, self.config.seed)
        self.network, _ = train_detail_network(
            self.config,
            self.dataset,
            self.dataset.images,
            device,
            lambda _: contextlib.nullcontext(),
            show_progress=False,
        )
        self.network_features = feature_extractor(self.network, device)
        self.probes = DetailProbeData(self.config, self.dataset, self.dataset.images)
        self.x, self.y = [], []
        with torch.no_grad():
            for start in range(0, len(self.indices), self.config.batch_size):
                x = to_float(self.dataset.images[self.indices[start : start + self.config.batch_size]]).to(device)
                self.x.append(x)
                self.y.append(self.stage_one.decode_mean(self.stage_one.representation(x)))
        self.features = {name: self.describe(images) for name, images in (("x", self.x), ("y", self.y))}
        self.scorer = self.probes.scorer({k: v["map"] for k, v in self.features.items()}, self.indices)
        self.shared = self.scorer(None)

    def describe(self, batches: list[torch.Tensor]) -> dict[str, np.ndarray]:
        """The probes' features, the detail network's features and the stage-one codes of a list of batches."""
        with torch.no_grad():
            return {
                "map": np.concatenate([self.probes.extract(b) for b in batches]),
                "network": np.concatenate([self.network_features(b) for b in batches]),
                "codes": np.concatenate([self.stage_one.representation(b).cpu().numpy() for b in batches]),
            }

    def mig(self, codes: np.ndarray) -> float:
        classes = self.dataset.factor_classes[self.indices]
        return mutual_information_gap(codes, classes, self.dataset.factor_names, bins=self.config.mig_bins)[
            f"mig.histogram{self.config.mig_bins}"
        ]

    def score(self, model: MSVAE) -> dict[str, float | None]:
        with torch.no_grad():
            x_hat = [model.generate(y, model.infer_residual(x, y)) for x, y in zip(self.x, self.y)]
        described = self.describe(x_hat)
        row = self.scorer(described["map"])
        colour = [row.get(f"detail.colour_{c}.x_hat") for c in "rgb"]
        x_net = self.features["x"]["network"]
        ceiling = [self.shared.get(f"detail.colour_{c}.x") for c in "rgb"]
        return {
            "colour_r2": float(np.mean(colour)) if None not in colour else None,
            "colour_r2_ceiling": float(np.mean(ceiling)) if None not in ceiling else None,
            "grating_frequency_gap_closed": row.get("detail.grating_frequency.gap_closed"),
            "grating_angle_gap_closed": row.get("detail.grating_angle.gap_closed"),
            "gap_closed": row.get("detail.gap_closed"),
            "mig_ratio": self.mig(described["codes"]) / self.mig(self.features["y"]["codes"]),
            "detail_fd_ratio": frechet_distance(x_net, described["network"])
            / frechet_distance(x_net, self.features["y"]["network"]),
            "columns": {k: v for k, v in row.items() if k.startswith("detail.")},
        }


def train_lever(repo: Path, reference: Reference, lever: str, seed: int, steps: int | None) -> tuple[MSVAE, dict]:
    options, overrides = LEVERS[lever]
    training = DEFAULT_TRAINING | overrides | ({"steps": steps} if steps else {})
    images = reference.dataset.images
    config = MSVAEConfig(
        image_channels=int(images.shape[1]),
        image_size=int(images.shape[-1]),
        residual_dim=training["residual_dim"],
        **options,
    )
    torch.manual_seed(seed)
    model = MSVAE(config).to(reference.device)
    optimizer = torch.optim.Adam(model.optimised_parameters(), lr=training["learning_rate"])
    x_index = np.load(repo / "pairs/x_index.npy")
    y_all = np.load(repo / "pairs/y.npy", mmap_mode="r")

    def step_fn(batch: np.ndarray, step: int):
        batch = np.sort(batch)
        x = to_float(images[x_index[batch]]).to(reference.device)
        y = torch.from_numpy(np.asarray(y_all[batch], dtype=np.float32)).to(reference.device)
        return model.objective(x, y, step)

    loop = LoopConfig(
        steps=training["steps"], batch_size=training["batch_size"], seed=seed, checkpoint_every=250, log_every=250
    )
    name = f"{lever}_s{seed}_{training['steps']}"
    fingerprint = json.dumps([seed, training, options], sort_keys=True)  # what is trained, not its name
    progress = WORK / f"{name}.time.json"
    kept = json.loads(progress.read_text()) if progress.exists() else {}
    # the clock of the same run only: a checkpoint trained to another fingerprint is not resumed, nor its time kept
    spent = kept.get("cpu_seconds", 0.0) if kept.get("fingerprint") == fingerprint else 0.0
    started = time.process_time()

    def keep_time(step: int, logs: dict) -> None:
        seconds = spent + time.process_time() - started
        progress.write_text(json.dumps({"cpu_seconds": seconds, "step": step, "fingerprint": fingerprint}))

    result = train(
        model,
        optimizer,
        step_fn,
        len(x_index),
        loop,
        WORK / f"{name}.pt",
        fingerprint,
        callback=keep_time,
        description=f"stage two ({lever}, seed {seed})",
        show_progress=False,
    )
    keep_time(training["steps"], {})
    model.eval()
    last = result.history[-1] if result.history else {}
    cpu = json.loads(progress.read_text())["cpu_seconds"]
    logged = {key: last.get(key) for key in ("kl", "recon", "decoder_variance")}
    return model, {"cpu_minutes": cpu / 60, **logged, **training}


def colour_pairs(repo: Path):
    """The paired set of ``repo`` with each pair's true colour, for the diagnoses: (pairs, colour, shape, batch):
    the number of pairs, the colour (pairs, 3) as drawn, the images' (C, H, W) and ``batch(rows)`` -> (x, y, the
    colour standardised per channel) as tensors."""
    dataset = load_dataset(repo / "data/prepared")
    x_index = np.load(repo / "pairs/x_index.npy")
    y_all = np.load(repo / "pairs/y.npy", mmap_mode="r")
    drawn = np.stack([np.asarray(dataset.nuisance[f"colour_{c}"]) for c in "rgb"], 1).astype(np.float32)
    standard = (drawn - drawn.mean(0)) / drawn.std(0)

    def batch(rows):
        x = to_float(dataset.images[x_index[rows]])
        return x, torch.from_numpy(np.asarray(y_all[rows], dtype=np.float32)), torch.from_numpy(standard[x_index[rows]])

    return len(x_index), drawn[x_index], tuple(int(v) for v in dataset.images.shape[1:]), batch


def diagnose(repo: Path, steps: int) -> None:
    """Can each half of MS-VAE handle colour on its own? (1) The AdaIN decoder given the true colour as z (no
    encoder, no KL) against the same decoder given z = 0, the Bernoulli loss of each after ``steps`` steps: the
    difference is what knowing the colour is worth to the Bernoulli likelihood, in nats per image. (2) The
    residual encoder's network regressing the true colour from x - y (supervised): the R^2 on held-out pairs."""
    import torch.nn.functional as F

    from multistage.models.stage_two.msvae import AdaINDecoder
    from multistage.nn.conv import ConvEncoder

    pairs, _, _, batch = colour_pairs(repo)
    held_out = np.arange(pairs - 2000, pairs)

    def fit(module, loss_of, label):
        torch.manual_seed(0)
        optimizer, rng, recent = torch.optim.Adam(module.parameters(), 1e-3), np.random.default_rng(0), []
        for _ in range(steps):
            loss = loss_of(*batch(np.sort(rng.choice(pairs - 2000, 64, replace=False))))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent = (recent + [loss.item()])[-200:]
        print(f"{label}: mean loss over the last 200 of {steps} steps {np.mean(recent):.2f}")
        return module

    for label, scale in (("decoder given the true colour as z", 1.0), ("decoder given z = 0", 0.0)):
        decoder = AdaINDecoder(3, 3)
        fit(
            decoder,
            lambda x, y, c, d=decoder, k=scale: (
                F.binary_cross_entropy_with_logits(d(y, k * c), x, reduction="sum") / len(x)
            ),
            label + " (Bernoulli, nats per image)",
        )
    encoder = ConvEncoder(3, 32, 3)
    fit(encoder, lambda x, y, c: F.mse_loss(encoder(x - y), c), "encoder regressing the colour from x - y (MSE)")
    with torch.no_grad():
        x, y, c = batch(held_out)
        predicted = encoder(x - y).numpy()
    truth = c.numpy()
    r2 = 1 - ((predicted - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    print("held-out R^2 of the colour read from x - y (r, g, b):", np.round(r2, 3))


def colour_information(images: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """How much of the true colour a set of images holds, whatever its calibration: the 5-fold cross-validated R^2
    (r, g, b) of a ridge fitted on the images' own colour statistics (``detail_feature_map``'s colour group)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_predict

    from multistage.metrics.detail import detail_feature_map, feature_groups

    features = detail_feature_map(images)[:, feature_groups(images.shape[1])["colour"]]
    predicted = cross_val_predict(RidgeCV(alphas=[0.1, 1.0, 10.0]), features, colour, cv=5)
    return 1 - ((predicted - colour) ** 2).sum(0) / ((colour - colour.mean(0)) ** 2).sum(0)


def diagnose_units(repo: Path, steps: int, units: list[int]) -> None:
    """Is |Z| what keeps the colour out? (1) The AdaIN decoder given the true colour as its z, trained on the
    learned-variance Gaussian; (2) MS-VAE's encoder and decoder trained as a deterministic autoencoder (z = the
    posterior mean, no noise, no KL) at each |Z| in ``units``. Each for ``steps`` steps at 2e-3, batch 64, seed 0;
    printed: the colour information of X-hat (``colour_information``) on 3,000 held-out pairs."""
    from multistage.models.stage_two.msvae import AdaINDecoder
    from multistage.nn.likelihoods import build_likelihood

    pairs, colour, shape, batch = colour_pairs(repo)
    fitting, held_out = pairs - 3000, np.arange(pairs - 3000, pairs)

    def fit(parameters, likelihood, reconstruct, label: str) -> None:
        optimizer, rng = torch.optim.Adam(parameters, 2e-3), np.random.default_rng(0)
        for _ in range(steps):
            x, y, c = batch(np.sort(rng.choice(fitting, 64, replace=False)))
            loss = likelihood.negative_log_likelihood(reconstruct(x, y, c), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            x_hat = reconstruct(*batch(held_out)).numpy()
        information = colour_information(x_hat, colour[held_out])
        print(f"{label}: colour information of X-hat (r, g, b) {np.round(information, 3)}", flush=True)

    torch.manual_seed(0)
    decoder, likelihood = AdaINDecoder(shape[0], 3, image_size=shape[-1]), build_likelihood("gaussian_learned", shape)
    fit(
        [*decoder.parameters(), *likelihood.parameters()],
        likelihood,
        lambda x, y, c: torch.sigmoid(decoder(y, c)),
        "decoder given the true colour as z",
    )
    for width in units:
        torch.manual_seed(0)
        config = MSVAEConfig(
            image_channels=shape[0], image_size=shape[-1], residual_dim=width, likelihood="gaussian_learned"
        )
        model = MSVAE(config)
        fit(
            model.optimised_parameters(),
            model.likelihood,
            lambda x, y, c, m=model: torch.sigmoid(m.decode(y, m.residual_encoder(x, y)[0])),
            f"deterministic autoencoder, |Z| = {width}",
        )


def run(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    if args.merge:
        # oldest first, so that a run scored again (the same command rerun: it resumes at its last step) wins
        files = ([RESULTS] if RESULTS.exists() else []) + sorted(
            WORK.glob("runs_*.json"), key=lambda f: f.stat().st_mtime
        )
        merged = merge(files, RESULTS)
        draw_levers(merged, FIGURES / "levers.png")
        print(markdown_table(merged))
        return
    device = torch.device("cpu")
    reference = Reference(args.repo, device)
    tag = "_".join(args.levers) + "_s" + "_".join(map(str, args.seeds)) + (f"_{args.steps}" if args.steps else "")
    out = args.out or WORK / f"runs_{tag}.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    print("X ceiling / Y floor:", {k: round(v, 3) for k, v in reference.shared.items() if v is not None})
    for lever in args.levers:
        for seed in args.seeds:
            model, trained = train_lever(args.repo, reference, lever, seed, args.steps)
            scores = reference.score(model)
            key = f"{lever}/{seed}/{trained['steps']}"
            done[key] = trained | scores | {"lever": lever, "seed": seed}
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(done, indent=1))
            tmp.replace(out)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in done[key].items() if k != "columns"}
            print(key, shown, flush=True)
            if args.grid:
                save_grid(reference, model, FIGURES / f"grid_{lever}_s{seed}.png", lever)


SUMMARY_KEYS = (
    "colour_r2",
    "grating_frequency_gap_closed",
    "grating_angle_gap_closed",
    "gap_closed",
    "mig_ratio",
    "detail_fd_ratio",
    "kl",
    "cpu_minutes",
)


def merge(files: list[Path], out: Path) -> dict:
    """Every run of ``files`` (a later file wins on the same key), the median over seeds of each lever's summary keys
    (``<lever>.<key>``; ``<lever>.seeds.<key>``: the per-seed values in seed order), written to ``out``."""
    runs: dict[str, dict] = {}
    for file in files:
        runs |= json.loads(file.read_text()).get("runs", {}) if file == out else json.loads(file.read_text())
    merged: dict = {"runs": dict(sorted(runs.items()))}
    for lever in sorted({run["lever"] for run in runs.values()}):
        chosen = sorted((r for r in runs.values() if r["lever"] == lever), key=lambda r: r["seed"])
        # a lever's figure is its longest run per seed (a lever may have been run at several step counts)
        longest = max(r["steps"] for r in chosen)
        chosen = [r for r in chosen if r["steps"] == longest]
        for key in SUMMARY_KEYS:
            values = [r[key] for r in chosen]
            merged[f"{lever}.seeds.{key}"] = values
            present = [v for v in values if v is not None]
            merged[f"{lever}.{key}"] = statistics.median(present) if present else None
        merged[f"{lever}.seeds"] = [r["seed"] for r in chosen]
        merged[f"{lever}.steps"] = longest
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    tmp.replace(out)
    return merged


def markdown_table(merged: dict) -> str:
    """One row per lever (medians over its seeds), as printed by ``--merge`` and shown in the study's page."""

    def shown(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    rows = [
        "| lever | seeds | steps | CPU-min | KL (nats) | colour R² | grating freq. / angle gap | gap closed "
        "| detail FD ratio | MIG ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    levers = sorted({run["lever"] for run in merged["runs"].values()}, key=lambda n: -(merged[f"{n}.gap_closed"] or 0))
    for lever in levers:
        m = {key: merged[f"{lever}.{key}"] for key in (*SUMMARY_KEYS, "seeds", "steps")}
        gaps = f"{shown(m['grating_frequency_gap_closed'])} / {shown(m['grating_angle_gap_closed'])}"
        rows.append(
            f"| {lever} | {len(m['seeds'])} | {m['steps']} | {shown(m['cpu_minutes'], 1)} | {shown(m['kl'], 1)} "
            f"| {shown(m['colour_r2'])} | {gaps} | {shown(m['gap_closed'])} | {shown(m['detail_fd_ratio'])} "
            f"| {shown(m['mig_ratio'])} |"
        )
    return "\n".join(rows)


def draw_levers(merged: dict, path: Path) -> None:
    """Gap closed (mean over the nuisance columns) and colour R^2 of every run against its stage-two CPU-minutes,
    one marker per lever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levers = sorted({run["lever"] for run in merged["runs"].values()})
    figure, axes = plt.subplots(1, 2, figsize=(15, 5))
    markers = "os^vD<>phX*P"
    for i, lever in enumerate(levers):
        runs = [r for r in merged["runs"].values() if r["lever"] == lever]
        for axis, key in zip(axes, ("gap_closed", "colour_r2")):
            points = [(r["cpu_minutes"], r[key]) for r in runs if r[key] is not None]
            if points:
                axis.scatter(*zip(*points), marker=markers[i % len(markers)], s=50, label=lever)
    for axis, label in zip(axes, ("nuisance gap closed by X-hat (mean)", "colour R$^2$ on X-hat")):
        axis.set_xlabel("stage-two CPU-minutes (one thread)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].axhline(0.7, color="grey", linestyle="--", linewidth=1)
    ceilings = [r["colour_r2_ceiling"] for r in merged["runs"].values() if r.get("colour_r2_ceiling") is not None]
    if ceilings:  # what X itself scores: no X-hat can be read better than the real images
        axes[1].axhline(statistics.median(ceilings), color="grey", linestyle="--", linewidth=1)
        axes[1].annotate("X (ceiling)", (0.01, statistics.median(ceilings)), xycoords=("axes fraction", "data"))
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="lever (one point per seed)")
    figure.suptitle("MS-VAE stage two on textured dSprites 32 px: which lever lets z carry the detail")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def save_grid(reference: Reference, model: MSVAE, path: Path, lever: str) -> None:
    from multistage.viz import save_labelled_grid

    x, y = reference.x[0][:8], reference.y[0][:8]
    with torch.no_grad():
        x_hat = model.generate(y, model.infer_residual(x, y))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_labelled_grid(path, [x, y, x_hat], ["X", "Y", "X-hat"], title=f"MS-VAE stage two: {lever}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=None, help="a clone where `dvc repro pairs` has run")
    parser.add_argument("--levers", nargs="+", default=["default"], choices=sorted(LEVERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=None, help="override every lever's steps")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--grid", action="store_true", help="draw X / Y / X-hat of each run")
    parser.add_argument("--merge", action="store_true", help="combine the runs into --out's summary and figure")
    parser.add_argument("--diagnose", type=int, default=0, metavar="STEPS", help="the decoder / encoder colour checks")
    parser.add_argument(
        "--units", type=int, nargs="+", default=None, help="with --diagnose: the |Z| check at these widths instead"
    )
    args = parser.parse_args()
    if args.repo is None and not args.merge:
        parser.error("--repo is needed to train: a clone where `dvc repro pairs` has run")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.units and not args.diagnose:
        parser.error("--units is a check of --diagnose STEPS: give both")
    if args.units:
        diagnose_units(args.repo, args.diagnose, args.units)
        return
    if args.diagnose:
        diagnose(args.repo, args.diagnose)
        return
    run(args)


if __name__ == "__main__":
    main()
