"""Every stage-two variant on the held-out images: what it is conditioned on, its outputs gathered batch by batch
(X-hat, samples, the images of M3/M4) and its row of the comparison, beside stage one's own row (MS-VAE sec. 4)."""

from __future__ import annotations

import numpy as np
import torch

from multistage.evaluation.config import EvaluationConfig
from multistage.evaluation.registry import METRICS, MetricInputs
from multistage.metrics.conditioning import normalized_code_mutual_information
from multistage.metrics.frechet import frechet_distance
from multistage.metrics.reconstruction import ForegroundErrorAccumulator, ReconstructionErrorAccumulator
from multistage.models.stage_two.baselines import parameter_count


def condition_for(model, c_r: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """What a stage-two variant is conditioned on for the held-out x: Y, the stage-one code C or nothing."""
    return {"y": y, "c": c_r, "none": None}[model.conditioning]


class VariantOutputs:
    """One stage-two variant's outputs on the held-out images, gathered batch by batch, and its comparison row.

    Per batch, with cond its condition (Y, C or none): X-hat = G(cond, z), z = ``infer_residual(x, cond)`` (absent
    for a model without an encoder); X-sample = G(cond, eps), eps ~ p(z) (for a conditioned model this is the
    G(Y, eps) of M3; for a "none" model an unconditional sample); G(eps_cond, z) for M4 (eps_cond: a sigmoid-squashed
    N(0, I) image for Y, N(0, I) for C). The noise comes from the variant's own generator seeded with
    ``evaluate.seed`` (for the first variant the draws are those of the single-model evaluate stage before the
    matrix)."""

    def __init__(self, name: str, model, seed: int) -> None:
        self.name, self.model = name, model
        self.generator = torch.Generator().manual_seed(seed)
        self.codes: dict[str, list[np.ndarray]] = {}
        self.features: dict[str, dict[str, list[np.ndarray]]] = {}
        self.errors = None
        self.foreground = None
        self.examples: dict[str, torch.Tensor] = {}
        self.has_residual_encoder = True
        self.has_code = True

    def _append(self, table: dict, key: str, value: np.ndarray) -> None:
        table.setdefault(key, []).append(value)

    def update(
        self, x: torch.Tensor, c_r: torch.Tensor, y: torch.Tensor, stage_one, extractors: dict, device, threshold=None
    ) -> None:
        """One held-out batch: the variant's images, their stage-one codes, their features in each space of
        ``extractors`` (X-hat and X-sample) and X-hat's errors (over the foreground of x or y too, with a
        ``threshold``)."""
        model, n = self.model, len(x)
        cond = condition_for(model, c_r, y)
        images: dict[str, torch.Tensor] = {}
        z = None
        if self.has_residual_encoder:
            try:
                z = model.infer_residual(x, cond)
            except NotImplementedError:
                self.has_residual_encoder = False
        if z is not None:
            images["x_hat"] = model.generate(cond, z)
            self._append(self.codes, "z", z.float().cpu().numpy())
        images["x_sample"] = model.sample(cond, n=n, generator=self.generator)
        if cond is not None and z is not None:
            noise = torch.randn(cond.shape, generator=self.generator)
            eps_cond = (torch.sigmoid(noise) if model.conditioning == "y" else noise).to(device)
            images["eps_z"] = model.generate(eps_cond, z)
        if self.has_code and model.conditioning == "none":
            try:
                self._append(self.codes, "code", model.code(x).float().cpu().numpy())
            except NotImplementedError:
                self.has_code = False
        for key, value in images.items():
            self._append(self.codes, key, stage_one.representation(value).cpu().numpy())
            if key in ("x_hat", "x_sample"):
                for space, extract in extractors.items():
                    self._append(self.features.setdefault(space, {}), key, extract(value))
        if "x_hat" in images:
            self.errors = self.errors or ReconstructionErrorAccumulator()
            self.errors.update(x, images["x_hat"])
            if threshold is not None:
                self.foreground = self.foreground or ForegroundErrorAccumulator(threshold)
                self.foreground.update(x, images["x_hat"], y)
        if not self.examples:
            self.examples = {key: value.cpu() for key, value in images.items()}
            if z is not None:
                self.examples["z"] = z.cpu()

    def scores(
        self,
        shared: dict[str, np.ndarray],
        x_features: dict[str, np.ndarray],
        config: EvaluationConfig,
        mig,
        downstream,
        headline: dict,
        detail=None,
    ) -> dict:
        """The comparison row (keys as the single-model stage names them; None where the variant has no such
        output): Fréchet distance of X-hat and X-sample in each feature space of ``x_features`` (the real images'
        features: ``factor_classifier``, ``detail_classifier``) and KID in the factor classifier's, MIG of the
        stage-one encoder on them and of the variant's own code, M1..M4, L1/L2/BCE of X-hat (and over the
        foreground), the detail probes' scores of X-hat and of X-sample's colour spread (``detail(x_hat, x_sample)``,
        their ``detail_probe`` features),
        downstream accuracies from its residual, its size."""
        model, bins = self.model, config.mig_bins
        codes = {k: np.concatenate(v).astype(np.float64) for k, v in self.codes.items()}
        row: dict[str, float | None] = {"parameters": float(parameter_count(model))}
        conditioned = model.conditioning != "none"
        row["parameters_with_stage_one"] = row["parameters"] + (
            headline["compare.stage_one.parameters"] if conditioned else 0.0
        )
        outputs = ("x_hat", "x_sample") if conditioned else ("x_hat",)
        if mig is not None:
            key = f"mig.histogram{bins}"
            for name in outputs:  # an unconditional sample belongs to no held-out x: no MIG against its factors
                row |= mig(codes[name], name) if name in codes else {f"{name}.{key}": None}
            if conditioned:  # the code a user reads off is stage one's, untouched by stage two
                row |= {k.replace("x.", "code.", 1): v for k, v in headline.items() if k.startswith(f"x.{key}")}
            else:
                row |= mig(codes["code"], "code") if "code" in codes else {f"code.{key}": None}
            y_mig = headline.get(f"y.{key}", 0.0)
            top = row[f"x_hat.{key}"]
            row["mig_ratio.x_hat_over_y"] = (
                None if not isinstance(top, float) else top / y_mig if y_mig > 0 else float("nan")
            )
        for space, real in x_features.items():
            row |= self._feature_row(space, real, config, headline)
        if self.errors is not None:
            row |= {f"reconstruction.x_hat.{name}": float(v) for name, v in self.errors.result().items()}
        if self.foreground is not None:
            row |= {f"reconstruction.x_hat.foreground.{k}": float(v) for k, v in self.foreground.result().items()}
        if detail is not None:
            probes = {k: np.concatenate(v) for k, v in self.features.get("detail_probe", {}).items()}
            row |= (
                detail(probes.get("x_hat"), probes.get("x_sample"))
                if probes
                else {"detail.gap_closed": None, "detail.x_sample_gap_closed": None}
            )
        c_r = shared["x"]
        terms = {
            "M1": shared["y"],
            "M2": codes.get("x_hat"),
            "M3": codes.get("x_sample") if conditioned else None,
            "M4": codes.get("eps_z"),
        }
        for term, other in terms.items():
            row[f"conditioning.{term}"] = (
                normalized_code_mutual_information(c_r, other, bins) if other is not None else None
            )
        if downstream is not None and "z" in codes:
            latent = codes["z"]
            if conditioned:
                inputs = {"z": latent, "c_z": np.concatenate([c_r, latent], axis=1)}
            elif "code" in codes and codes["code"].shape[1] < latent.shape[1]:  # (C, Z), C first
                inputs = {"c": codes["code"], "z": latent[:, codes["code"].shape[1] :], "c_z": latent}
            else:
                inputs = {"c_z": latent}
            row |= downstream(inputs)
        return row

    def _feature_row(self, space: str, real: np.ndarray, config: EvaluationConfig, headline: dict) -> dict:
        """Fréchet distances of X-hat and X-sample to the real images in one feature space (and KID in the factor
        classifier's), and the ratio of X-hat's to Y's."""
        row: dict[str, float | None] = {}
        features = self.features.get(space, {})
        for name in ("x_hat", "x_sample"):
            if name not in features:
                row[f"frechet.{space}.{name}"] = None
                if space == "factor_classifier":
                    row[f"kid.factor_classifier.{name}"] = None
                continue
            other = np.concatenate(features[name])
            if space == "detail_classifier":
                inputs = MetricInputs(features=real, other_features=other, label=name)
                row |= METRICS["detail_frechet"](inputs, config.config_of("detail_frechet"), config.seed)
            else:
                row[f"frechet.{space}.{name}"] = frechet_distance(real, other)
            if space == "factor_classifier" and "kid" in config.metrics:
                row |= METRICS["kid"](
                    MetricInputs(features=real, other_features=other, label=name),
                    config.config_of("kid"),
                    config.seed,
                )
        fd_hat, fd_y = row[f"frechet.{space}.x_hat"], headline.get(f"frechet.{space}.y")
        row[f"frechet.{space}.ratio_x_hat_over_y"] = (
            fd_hat / max(fd_y, 1e-12) if isinstance(fd_hat, float) and fd_y is not None else None
        )
        return row


def stage_one_comparison_row(scores: dict, bins: int, stage_one) -> dict:
    """The beta-TCVAE-with-|C|-latents row of the comparison (MS-VAE sec. 4): stage one itself, its output Y in the
    place of X-hat, its code C."""
    renamed = {
        "frechet.factor_classifier.y": "frechet.factor_classifier.x_hat",
        "frechet.detail_classifier.y": "frechet.detail_classifier.x_hat",
        "kid.factor_classifier.y": "kid.factor_classifier.x_hat",
        "kid.factor_classifier.y.std": "kid.factor_classifier.x_hat.std",
        "conditioning.M1": "conditioning.M2",
    }
    row = {new: scores[old] for old, new in renamed.items() if old in scores}
    row |= {k.replace("x.", "code.", 1): v for k, v in scores.items() if k.startswith(f"x.mig.histogram{bins}")}
    row |= {k.replace("y.", "x_hat.", 1): v for k, v in scores.items() if k.startswith(f"y.mig.histogram{bins}")}
    row |= {k.replace(".y.", ".x_hat.", 1): v for k, v in scores.items() if k.startswith("reconstruction.y.")}
    row |= {
        k.removesuffix(".y") + ".x_hat": v for k, v in scores.items() if k.startswith("detail.") and k.endswith(".y")
    }
    row |= {k: v for k, v in scores.items() if k.startswith("downstream.mlp.c.")}
    row["parameters"] = row["parameters_with_stage_one"] = float(parameter_count(stage_one))
    return row
