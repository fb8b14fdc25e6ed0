"""The headline scores: the few numbers a reader compares first (``metrics/headline.json``, which ``dvc metrics
show`` and ``dvc metrics diff`` print), each with the label the report and the run summary show.

The headline Fréchet distance is the detail network's (it sees colour and texture, what stage two is for); the
shape-only factor classifier's stays beside it as a ratio (its other keys, the real-vs-real floors and the
classifiers' accuracies are in ``metrics/evaluate.json``). On
data without nuisance columns the detail keys are absent and the factor classifier's ratio is the Fréchet score.
L2 per pixel is in ``metrics/evaluate.json``; the headline shows L1 over all pixels and over the foreground."""

from __future__ import annotations

HEADLINE: list[tuple[str, str]] = [
    ("MIG (histogram, 20 bins) of stage one on X", "x.mig.histogram20"),
    ("MIG of stage one on Y", "y.mig.histogram20"),
    ("MIG of stage one on X-hat", "x_hat.mig.histogram20"),
    ("MIG on X-hat / MIG on Y", "mig_ratio.x_hat_over_y"),
    ("MIG of stage one on X, without shape", "x.mig.histogram20.no_shape"),
    ("Fréchet distance (detail network: factors and nuisance), Y", "frechet.detail_classifier.y"),
    ("Fréchet distance (detail network), X-hat", "frechet.detail_classifier.x_hat"),
    ("Fréchet ratio X-hat / Y (detail network)", "frechet.detail_classifier.ratio_x_hat_over_y"),
    ("Fréchet ratio X-hat / Y (shape-only factor classifier)", "frechet.factor_classifier.ratio_x_hat_over_y"),
    ("Detail gap closed by X-hat (mean over nuisance columns)", "detail.gap_closed"),
    ("L1 per pixel, Y", "reconstruction.y.l1"),
    ("L1 per pixel, X-hat", "reconstruction.x_hat.l1"),
    ("L1 per foreground pixel, Y", "reconstruction.y.foreground.l1"),
    ("L1 per foreground pixel, X-hat", "reconstruction.x_hat.foreground.l1"),
    ("M1 = MI[C_R; C_Y]", "conditioning.M1"),
    ("M2 = MI[C_R; C_X-hat]", "conditioning.M2"),
    ("M3 = MI[C_R; E(G(Y, eps))]", "conditioning.M3"),
    ("M4 = MI[C_R; E(G(eps, Z))]", "conditioning.M4"),
    ("MIG of stage one on X (sampling estimator, beta-TCVAE app. A)", "x.mig.sampling"),
    ("SAP of stage one on X", "x.sap"),
    ("FactorVAE score of stage one on X", "x.factorvae_score"),
    ("DCI disentanglement (lasso) of stage one on X", "x.dci.lasso.disentanglement"),
    ("Z-diff (beta-VAE metric) of stage one on X", "x.zdiff"),
    ("Total correlation of q(z) (whole data set)", "tc_decomposition.total_correlation"),
    ("Used latent dimensions (noise-modelling indicators)", "indicators.used_dimensions"),
]


def headline_scores(scores: dict) -> dict[str, float]:
    """The headline keys of ``scores`` that hold numbers (a missing or None score is left out)."""
    return {
        key: scores[key]
        for _, key in HEADLINE
        if isinstance(scores.get(key), (int, float)) and not isinstance(scores.get(key), bool)
    }
