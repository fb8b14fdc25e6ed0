"""DVC stage ``evaluate``: score stage one and stage two on held-out images.

On ``evaluate.eval_images`` held-out images X (test split), with E the stage-one encoder mean and G the stage-two
decoder:

* Y = E[p(y | c = E(X))], the stage-one reconstruction; X-hat = G(Y, z) with z the mean of R(z | x, y);
* MIG (disentanglement_lib histogram estimator) of E on X, on Y and on X-hat, over all factors and without shape;
* the Fréchet distance between the features of X and of Y, X-hat, in an in-domain factor classifier (trained here
  on the training split with a fixed seed; its held-out accuracy is reported beside the distance), with a
  real-vs-real reference distance as the floor; L1, L2 and BCE per pixel of Y and X-hat against X;
* the conditioning terms M1..M4 of MS-VAE section 4: C_R = E(X) against E(Y), E(X-hat), E(G(Y, eps)) and
  E(G(eps, Z)), with eps ~ N(0, I) (for the image input, the noise is squashed through a sigmoid so that it is a
  valid probability image, as G expects y in (0, 1)).

Writes ``metrics/evaluate.json`` (flat keys for ``dvc metrics diff``) and the figures in ``figures/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from pydantic import Field
from tqdm.auto import tqdm

from stages.common import (
    PARAMS_FILE,
    InputError,
    StageParams,
    StagingDirectory,
    atomic_write_json,
    load_runtime,
    load_trained_model,
    load_section,
    run_cli,
    setup_runtime,
)
from stages.make_pairs import load_stage_one
from stages.tracking import stage_run
from stages.train_stage_one import DATA, load_data

STAGE_TWO_MODEL = Path("models/stage_two/model.pt")
METRICS = Path("metrics/evaluate.json")
FIGURES = Path("figures")


class ClassifierParams(StageParams):
    steps: int = Field(1500, gt=0)
    batch_size: int = Field(128, gt=1)
    train_images: int = Field(20000, gt=10)
    seed: int = 0


class EvaluateParams(StageParams):
    eval_images: int = Field(5000, gt=10)
    batch_size: int = Field(250, gt=0)
    mig_bins: int = Field(20, ge=2, le=1000)
    seed: int = 0
    figure_images: int = Field(8, ge=1, le=64)
    classifier: ClassifierParams = ClassifierParams()


def load_stage_two(device):
    return load_trained_model(STAGE_TWO_MODEL, "stage_two", device)


def held_out_indices(dataset, count: int, seed: int) -> np.ndarray:
    test = dataset.test_indices
    if len(test) == 0:
        raise InputError(f"{DATA}: the test split is empty; raise prepare.test_fraction")
    chosen = np.random.default_rng(seed).permutation(len(test))[: min(count, len(test))]
    return np.sort(test[chosen])


def compute(params: EvaluateParams, device: torch.device, stage_one, stage_two,
            show_progress: bool = True) -> tuple[dict, dict]:
    """All scores (flat dict) and the arrays the figures need."""
    from multistage.data.base import to_float
    from multistage.metrics.conditioning import conditioning_terms
    from multistage.metrics.frechet import extract_features, frechet_distance, train_factor_classifier
    from multistage.metrics.mig import mutual_information_gap
    from multistage.metrics.reconstruction import ReconstructionErrorAccumulator

    dataset = load_data(DATA)
    names = tuple(dataset.factor_names)
    scores: dict[str, float] = {}

    # in-domain feature network for the Fréchet distance, trained on the training split only
    rng = np.random.default_rng(params.classifier.seed)
    train_pool = dataset.train_indices
    classifier_indices = np.sort(rng.permutation(len(train_pool))[: params.classifier.train_images])
    classifier_indices = train_pool[classifier_indices]
    with tqdm(total=params.classifier.steps, desc="factor classifier", unit="step",
              disable=not show_progress) as bar:

        def progress(step: int, logs: dict) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)

        classifier, accuracy = train_factor_classifier(
            dataset.images[classifier_indices], dataset.factor_classes[classifier_indices], dataset.factor_sizes,
            steps=params.classifier.steps, batch_size=params.classifier.batch_size, seed=params.classifier.seed,
            device=device, factor_names=names, progress=progress,
        )
    scores |= {f"classifier.accuracy.{k}": float(v) for k, v in accuracy.items()}

    indices = held_out_indices(dataset, params.eval_images, params.seed)
    generator = torch.Generator().manual_seed(params.seed)
    codes = {key: [] for key in ("x", "y", "x_hat", "y_eps", "eps_z")}
    features = {key: [] for key in ("x", "y", "x_hat")}
    errors = {key: ReconstructionErrorAccumulator() for key in ("y", "x_hat")}
    examples: dict[str, torch.Tensor] = {}
    with torch.no_grad(), tqdm(total=len(indices), desc="evaluate", unit="img", disable=not show_progress) as bar:
        for start in range(0, len(indices), params.batch_size):
            x = to_float(dataset.images[indices[start : start + params.batch_size]]).to(device)
            n = len(x)
            c_r, _ = stage_one.encode(x)
            y = torch.sigmoid(stage_one.decode(c_r))
            z, _ = stage_two.residual_encoder(x, y)
            x_hat = stage_two.generate(y, z)
            eps_z = torch.randn(z.shape, generator=generator).to(device)
            eps_image = torch.sigmoid(torch.randn(y.shape, generator=generator)).to(device)
            y_eps = stage_two.generate(y, eps_z)
            eps_z_image = stage_two.generate(eps_image, z)
            for key, images in (("x", x), ("y", y), ("x_hat", x_hat), ("y_eps", y_eps), ("eps_z", eps_z_image)):
                codes[key].append(stage_one.encode(images)[0].cpu().numpy())
            for key, images in (("x", x), ("y", y), ("x_hat", x_hat)):
                features[key].append(extract_features(classifier, images, batch_size=n, device=device))
            errors["y"].update(x, y)
            errors["x_hat"].update(x, x_hat)
            if not examples:
                examples = {"x": x.cpu(), "y": y.cpu(), "x_hat": x_hat.cpu(), "c": c_r.cpu(), "z": z.cpu()}
            bar.update(n)
    codes = {k: np.concatenate(v) for k, v in codes.items()}
    features = {k: np.concatenate(v) for k, v in features.items()}

    factor_classes = dataset.factor_classes[indices]
    exclude = ("shape",) if "shape" in names else ()
    for key in ("x", "y", "x_hat"):
        mig = mutual_information_gap(codes[key], factor_classes, names, bins=params.mig_bins,
                                     exclude_factors=exclude)
        scores |= {f"{key}.{name}": float(value) for name, value in mig.items()}
    scores["mig_ratio.x_hat_over_y"] = _ratio(scores, "x_hat", "y", params.mig_bins)

    # real-vs-real floor: features of as many other real (training) images
    reference_indices = train_pool[np.sort(rng.permutation(len(train_pool))[: len(indices)])]
    reference = extract_features(classifier, dataset.images[reference_indices], batch_size=params.batch_size,
                                 device=device)
    prefix = "frechet.factor_classifier"
    scores[f"{prefix}.y"] = frechet_distance(features["x"], features["y"])
    scores[f"{prefix}.x_hat"] = frechet_distance(features["x"], features["x_hat"])
    scores[f"{prefix}.real_reference"] = frechet_distance(features["x"], reference)
    scores[f"{prefix}.ratio_x_hat_over_y"] = scores[f"{prefix}.x_hat"] / max(scores[f"{prefix}.y"], 1e-12)
    for key, accumulator in errors.items():
        scores |= {f"reconstruction.{key}.{name}": float(v) for name, v in accumulator.result().items()}
    conditioning = conditioning_terms(codes["x"], codes["y"], codes["x_hat"], codes["y_eps"], codes["eps_z"],
                                      bins=params.mig_bins)
    scores |= {k: float(v) for k, v in conditioning.items()}
    scores["evaluate.images"] = int(len(indices))
    return scores, examples


def _ratio(scores: dict, top: str, bottom: str, bins: int) -> float:
    key = f"mig.histogram{bins}"
    return scores[f"{top}.{key}"] / scores[f"{bottom}.{key}"] if scores[f"{bottom}.{key}"] > 0 else float("nan")


def draw_figures(folder: Path, examples: dict, stage_one, stage_two, device, count: int) -> list[Path]:
    """Reconstruction triplets, traversals of Y (stage-one decoder) and of X-hat (G over traversed Y, z fixed),
    traversals of the residual z with Y fixed, and the stage-one KL per latent unit."""
    from multistage.viz import latent_traversal, reconstruction_triplets, save_rows, traversal_values

    x, y, x_hat = (examples[k][:count] for k in ("x", "y", "x_hat"))
    paths = [reconstruction_triplets(folder / "reconstructions.png", x, y, x_hat)]
    values = traversal_values(2.5, 9)
    c0, z0 = examples["c"][0].to(device), examples["z"][0].to(device)

    def decode_y(c):
        return torch.sigmoid(stage_one.decode(c))

    def decode_x_hat(c):
        return stage_two.generate(decode_y(c), z0.expand(len(c), -1))

    def decode_z(z):
        return stage_two.generate(decode_y(c0.reshape(1, -1)).expand(len(z), -1, -1, -1), z)

    paths.append(save_rows(folder / "traversal_y.png", [r.cpu() for r in latent_traversal(decode_y, c0, values)]))
    paths.append(save_rows(folder / "traversal_x_hat.png",
                           [r.cpu() for r in latent_traversal(decode_x_hat, c0, values)]))
    paths.append(save_rows(folder / "traversal_z.png", [r.cpu() for r in latent_traversal(decode_z, z0, values)]))
    return paths


def run(params: EvaluateParams, device: torch.device, tracker=None, show_progress: bool = True) -> dict:
    started = time.perf_counter()
    stage_one, stage_two = load_stage_one(device), load_stage_two(device)
    scores, examples = compute(params, device, stage_one, stage_two, show_progress)
    with StagingDirectory(FIGURES) as tmp:
        draw_figures(tmp, examples, stage_one, stage_two, device, params.figure_images)
    scores["evaluate.seconds"] = time.perf_counter() - started
    atomic_write_json(METRICS, scores)
    if tracker is not None:
        tracker.log_metrics(scores)
        for path in sorted(FIGURES.glob("*.png")):
            tracker.log_artifact(path, "figures")
    return scores


def main(params_file: str | Path = PARAMS_FILE) -> dict:
    params = load_section(EvaluateParams, "evaluate", params_file)
    device = setup_runtime(load_runtime(params_file), params.seed)
    with stage_run("evaluate", params.model_dump()) as tracker:
        scores = run(params, device, tracker=tracker)
    bins = params.mig_bins
    print(f"evaluate: MIG on X {scores[f'x.mig.histogram{bins}']:.3f}, on Y {scores[f'y.mig.histogram{bins}']:.3f}, "
          f"on X-hat {scores[f'x_hat.mig.histogram{bins}']:.3f}; Fréchet (factor classifier) Y "
          f"{scores['frechet.factor_classifier.y']:.3f} -> X-hat {scores['frechet.factor_classifier.x_hat']:.3f}")
    return scores


if __name__ == "__main__":
    run_cli(main)
