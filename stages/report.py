"""DVC stage ``report``: one self-contained HTML page (scores table, figures embedded) in ``report/index.html``;
then the stage-two model is filed in the MLflow model registry.

The page reads only the stages' outputs: the headline score table and the comparison of every variant from
``metrics/*.json``, the figures listed in ``figures/captions.json`` (else `DEFAULT_FIGURES`), the training
curves, and a gathered sweep's table and plot when present. Every image is a ``data:`` URI, so the page opens
anywhere. Registry (``registry`` params section): the model file of ``registry.variant`` becomes a version of
``registry.model_name`` with the alias ``newest``; ``best`` moves to the version with the best
``registry.best_metric``: any metrics key, or ``frechet.headline``, the headline Fréchet distance of
X-hat: the detail network's where the data have nuisance columns, else the shape-only factor classifier's
(``resolve_best_metric``). A metric name that no metrics file has is a params error before anything is written.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import Field

from multistage.evaluation.headline import HEADLINE as EVALUATION_HEADLINE
from stages.common import (
    PARAMS_FILE,
    InputError,
    ParamsError,
    StageParams,
    StagingDirectory,
    file_digest,
    read_params_file,
    require_file,
    run_cli,
    validate_section,
)
from stages.stage_two_files import metrics_file, output_folder
from stages.stage_two_files import model_file as variant_model_file
from stages.tracking import (
    PARENT_RUN_VARIABLE,
    git_commit,
    refresh_best_alias,
    register_model_version,
    stage_run,
)

OUTPUT = Path("report")
STAGE_ONE_METRICS, EVALUATE_METRICS = Path("metrics/stage_one.json"), Path("metrics/evaluate.json")
FIGURES_DIR = Path("figures")
CAPTIONS = FIGURES_DIR / "captions.json"
DEFAULT_FIGURES = [
    (
        "Reconstructions: x (top), y = stage one (middle), x-hat = stage two (bottom)",
        FIGURES_DIR / "reconstructions.png",
    ),
    (
        "Traversal of the stage-one code C, decoded by stage one (Y): one row per latent",
        FIGURES_DIR / "traversal_y.png",
    ),
    ("The same traversal rendered by stage two (X-hat = G(Y, z), z fixed)", FIGURES_DIR / "traversal_x_hat.png"),
    ("Traversal of the residual z with Y fixed (X-hat = G(Y, z))", FIGURES_DIR / "traversal_z.png"),
]
STAGE_ONE_CURVES = ("Stage-one training curves", Path("models/stage_one/curves.png"))
DEFAULT_VARIANTS = ["msvae"]  # stage_two.variants when params do not say
SWEEP_DIR = Path("sweep")
SWEEP_TABLE = SWEEP_DIR / "results.json"
SWEEP_PLOT = SWEEP_DIR / "mig_vs_beta.png"

# the comparison table (MS-VAE sec. 4 figure 4, appendix H table 1, appendix L): rows are stage one (beta-TCVAE with
# |C| latents) and each variant; columns are (header, key under compare.<row>., lower/higher is better)
COMPARISON_COLUMNS = [
    ("parameters (with stage one)", "parameters_with_stage_one", None),
    ("Fréchet X-hat (detail net)", "frechet.detail_classifier.x_hat", "lower"),
    ("Fréchet sample (detail net)", "frechet.detail_classifier.x_sample", "lower"),
    ("detail gap closed, X-hat", "detail.gap_closed", "higher"),
    ("colour spread closed, sample", "detail.x_sample_gap_closed", "higher"),
    ("Fréchet X-hat (shape net)", "frechet.factor_classifier.x_hat", "lower"),
    ("KID X-hat", "kid.factor_classifier.x_hat", "lower"),
    ("Fréchet sample (shape net)", "frechet.factor_classifier.x_sample", "lower"),
    ("MIG of its code", "code.mig.histogram20", "higher"),
    ("MIG stage one on X-hat", "x_hat.mig.histogram20", "higher"),
    ("M1", "conditioning.M1", None),
    ("M2", "conditioning.M2", "higher"),
    ("M3", "conditioning.M3", "higher"),
    ("M4", "conditioning.M4", "lower"),
    ("MLP acc. C", "downstream.mlp.c.mean", None),
    ("MLP acc. Z", "downstream.mlp.z.mean", None),
    ("MLP acc. C+Z", "downstream.mlp.c_z.mean", "higher"),
    ("L1 X-hat", "reconstruction.x_hat.l1", "lower"),
]
ROW_LABELS = {
    "stage_one": "beta-TCVAE, |C| (stage one)",
    "msvae": "MS-VAE",
    "msgan": "MS-GAN",
    "msflow": "MS-FLOW",
    "betatcvae_l": "beta-TCVAE-L, |C|+|Z|",
    "bigvae": "Big-VAE",
    "end_to_end": "ablation: end-to-end (M1)",
    "c_input": "ablation: C instead of Y (M3)",
    "concat": "ablation: concat, no AdaIN (M2)",
    "z_first": "ablation: Z first (M5)",
}

HEADLINE = [  # the headline file's scores, then a few more for the page and the run summary
    *EVALUATION_HEADLINE,
    ("KID (factor-classifier features), X-hat", "kid.factor_classifier.x_hat"),
    ("Downstream MLP accuracy from C", "downstream.mlp.c.mean"),
    ("Downstream MLP accuracy from Z", "downstream.mlp.z.mean"),
    ("Downstream MLP accuracy from C+Z", "downstream.mlp.c_z.mean"),
]


class RegistryParams(StageParams):
    """The ``registry`` section: where the stage-two model is filed and what ``best`` means."""

    enabled: bool = True  # false: no registry (e.g. a tracking server without one)
    variant: str | None = None  # which stage-two variant is filed; null: the first of stage_two.variants
    model_name: str = Field("multistage-stage-two", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    best_metric: str = "frechet.headline"  # a metrics key, or frechet.headline (resolve_best_metric)
    best_is: Literal["lower", "higher"] = "lower"


HEADLINE_FRECHET = "frechet.headline"
# the headline Fréchet distance of X-hat, first choice first: the detail network's exists only on data with nuisance
HEADLINE_FRECHET_KEYS = ("frechet.detail_classifier.x_hat", "frechet.factor_classifier.x_hat")


def resolve_best_metric(best_metric: str, scores: Collection[str]) -> str:
    """The metrics key that ``registry.best_metric`` names for these ``scores``: itself, or for
    ``frechet.headline`` the first of ``HEADLINE_FRECHET_KEYS`` that the scores hold (``scores``: a metrics dict,
    or the set of keys present). A version is tagged with the
    resolved key, so ``best`` compares versions scored in the same feature space only."""
    if best_metric != HEADLINE_FRECHET:
        return best_metric
    return next((key for key in HEADLINE_FRECHET_KEYS if key in scores), HEADLINE_FRECHET_KEYS[-1])


def registry_params(params: dict, source: str = PARAMS_FILE) -> RegistryParams:
    return validate_section(RegistryParams, params.get("registry", {}), "registry", source)


def variants_of(params: dict) -> list[str]:
    """``stage_two.variants`` (the headline first); ["msvae"] when the section does not list them."""
    variants = (params.get("stage_two") or {}).get("variants") or DEFAULT_VARIANTS
    return [str(v) for v in variants]


def metric_files(variants: list[str] | None = None) -> list[Path]:
    return [STAGE_ONE_METRICS, *(metrics_file(v) for v in variants or DEFAULT_VARIANTS), EVALUATE_METRICS]


def curve_figures(variants: list[str] | None = None) -> list[tuple[str, Path]]:
    return [STAGE_ONE_CURVES] + [
        (f"Stage-two training curves ({variant})", output_folder(variant) / "curves.png")
        for variant in variants or DEFAULT_VARIANTS
    ]


METRIC_FILES, CURVES = metric_files(), curve_figures()  # those of the default variants


def load_scores(variants: list[str] | None = None) -> dict[str, float]:
    scores: dict[str, float] = {}
    for path in metric_files(variants):
        scores |= json.loads(require_file(path, "metrics file").read_text())
    return scores


def comparison_rows(scores: dict, variants: list[str]) -> list[tuple[str, dict]]:
    """(row name, {key: value}) for stage one and each variant that the evaluate stage scored."""
    rows = []
    for name in ["stage_one", *variants]:
        prefix = f"compare.{name}."
        values = {k.removeprefix(prefix): v for k, v in scores.items() if k.startswith(prefix)}
        if values:
            rows.append((name, values))
    return rows


def comparison_section(scores: dict, variants: list[str]) -> str:
    """The comparison table (best value per column in bold) and its figure, or nothing before a comparison."""
    rows = comparison_rows(scores, variants)
    if len(rows) < 2:
        return ""
    columns = [
        (header, key, better)
        for header, key, better in COMPARISON_COLUMNS
        if any(isinstance(values.get(key), (int, float)) for _, values in rows)
    ]
    best = {}
    for _, key, better in columns:
        numbers = [
            values[key]
            for _, values in rows
            if isinstance(values.get(key), (int, float)) and math.isfinite(values[key])
        ]
        if better and numbers:
            best[key] = min(numbers) if better == "lower" else max(numbers)
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _, _ in columns)
    body = []
    for name, values in rows:
        cells = []
        for _, key, _ in columns:
            value = values.get(key, "")
            text = _cell(float(value) if isinstance(value, int) else value)
            cells.append(f"<td><b>{text}</b></td>" if best.get(key) == value and value != "" else f"<td>{text}</td>")
        label = html.escape(ROW_LABELS.get(name, name))
        body.append(f"<tr><td>{label} <code>{html.escape(name)}</code></td>{''.join(cells)}</tr>")
    figure = comparison_figure(rows)
    return (
        f"<h2>Comparison of the stage-two variants</h2>\n<p>Held-out images; Fréchet distance in the features of "
        f"the detail network (factors, colour and texture) and of the shape-only factor classifier, KID in the "
        f"latter's; the share of the X-Y gap in detail that X-hat closes (mean over the nuisance columns) and the "
        f"share of the colour spread that samples G(Y, eps) recover (their colours are drawn, so they are compared "
        f"with X's as distributions); MIG (histogram, 20 bins) of each model's disentangled code (stage one's C "
        f"for the conditioned variants) and of the stage-one encoder on the model's reconstructions; M1..M4 of "
        f"MS-VAE sec. 4; MLP accuracy from C, Z, C+Z (mean over factors). Keys: <code>compare.&lt;row&gt;."
        f"&lt;metric&gt;</code> in {EVALUATE_METRICS}. n/a: the model has no such output.</p>\n"
        f'<div class="wide"><table><tr><th>model</th>{head}</tr>\n' + "\n".join(body) + "\n</table></div>\n" + figure
    )


def comparison_figure(rows: list[tuple[str, dict]]) -> str:
    """Bars of the reconstruction Fréchet distance and of the two MIGs per row, as an embedded figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def number(values: dict, key: str) -> float:
        value = values.get(key)
        return float(value) if isinstance(value, (int, float)) else float("nan")

    names = [name for name, _ in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.5))
    positions = list(range(len(rows)))
    # the headline Fréchet: the detail network's where the data have nuisance columns, else the shape-only one's
    scored = {key for _, v in rows for key, value in v.items() if isinstance(value, (int, float))}
    space = resolve_best_metric(HEADLINE_FRECHET, scored)
    left.barh(positions, [number(v, space) for _, v in rows], color="#4477aa")
    network = "detail network" if "detail" in space else "shape-only classifier"
    left.set_title(f"Fréchet distance of X-hat, {network} (lower is better)")
    for offset, (key, label, colour) in enumerate(
        [
            ("code.mig.histogram20", "MIG of its code", "#228833"),
            ("x_hat.mig.histogram20", "MIG stage one on X-hat", "#ccbb44"),
        ]
    ):
        right.barh(
            [p + (offset - 0.5) * 0.4 for p in positions],
            [number(v, key) for _, v in rows],
            height=0.4,
            color=colour,
            label=label,
        )
    right.set_title("MIG (higher is better)")
    right.legend(loc="lower right", fontsize=8)
    for axis in (left, right):
        axis.set_yticks(positions)
        axis.set_yticklabels(names)
        axis.invert_yaxis()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    caption = "Comparison: reconstruction Fréchet distance and MIG per model (missing bar: n/a)"
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return (
        f"<figure><img alt='{html.escape(caption, quote=True)}' src='{uri}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def headline(scores: dict[str, float]) -> list[tuple[str, str, float]]:
    return [(label, key, scores[key]) for label, key in HEADLINE if isinstance(scores.get(key), (int, float))]


def figure_list(variants: list[str] | None = None) -> list[tuple[str, Path]]:
    """(caption, path) of every figure the page shows, in order: the evaluate stage's list, then the curves."""
    if CAPTIONS.exists():
        try:
            entries = json.loads(CAPTIONS.read_text())
        except json.JSONDecodeError as error:
            raise InputError(
                f'{CAPTIONS}: not valid JSON ({error}); expected a list of {{"file", "caption"}}'
            ) from None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("caption"), str)
            for e in entries
        ):
            raise InputError(f'{CAPTIONS}: expected a list of {{"file": "<name>.png", "caption": "..."}}')
        figures = []
        for entry in entries:
            relative = Path(entry["file"])
            if relative.is_absolute() or ".." in relative.parts:
                raise InputError(f"{CAPTIONS}: figure {entry['file']!r} must be a path inside {FIGURES_DIR}/")
            path = FIGURES_DIR / relative
            figures.append((entry["caption"], require_file(path, f"figure listed in {CAPTIONS}")))
    else:
        figures = [(caption, path) for caption, path in DEFAULT_FIGURES if path.exists()]
    return figures + [(caption, path) for caption, path in curve_figures(variants) if path.exists()]


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _figure(caption: str, path: Path) -> str:
    return (
        f"<figure><img alt='{html.escape(caption, quote=True)}' src='{_image(path)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else html.escape(str(value))  # None: the model has no such output


def sweep_section() -> str:
    """The sweep table and plot, when a sweep has been gathered into ``sweep/``; else nothing."""
    if not SWEEP_TABLE.exists():
        return ""
    try:
        rows = json.loads(SWEEP_TABLE.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{SWEEP_TABLE}: not valid JSON ({error}); rerun `python -m pipeline.sweep`") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise InputError(f"{SWEEP_TABLE}: expected a list of rows (objects)")
    seen = list(dict.fromkeys(key for row in rows for key in row))
    point = [c for c in ("model", "beta", "seed", "state", "experiment") if c in seen]
    ids = [c for c in seen if c == "rev" or c.endswith("_id")]
    columns = point + [c for c in seen if c not in point and c not in ids] + ids  # grid point, scores, run ids
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows)
    plot = (
        _figure("Sweep: MIG of stage one on X against beta (one point per run, line through the means)", SWEEP_PLOT)
        if SWEEP_PLOT.exists()
        else ""
    )
    return f"<h2>Sweep</h2>\n<table><tr>{head}</tr>\n{body}\n</table>\n{plot}"


def render(scores: dict[str, float], params: dict) -> str:
    variants = variants_of(params)
    rows = "\n".join(
        f"<tr><td>{html.escape(label)}</td><td><code>{key}</code></td><td>{value:.4g}</td></tr>"
        for label, key, value in headline(scores)
    )
    all_rows = "\n".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{v:.6g}</td></tr>"
        for k, v in sorted(scores.items())
        if isinstance(v, (int, float))
    )
    figures = "\n".join(_figure(caption, path) for caption, path in figure_list(variants))
    prepare = params.get("prepare", {})
    name = prepare.get("dataset")  # e.g. "dsprites textured": the dataset and, where it has one, its variant
    variant = (prepare.get(name) or {}).get("variant") if isinstance(name, str) else None
    dataset = " ".join(str(part) for part in (name, variant) if part)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>multistage report</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td:last-child {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #555; }} details {{ margin: 1em 0; }}
.wide {{ overflow-x: auto; max-width: 100%; }}
.wide table {{ font-size: 0.8em; }} .wide th {{ max-width: 7em; font-weight: 600; vertical-align: bottom; }}
.wide td, .wide th {{ padding: 3px 5px; }} .wide td {{ white-space: nowrap; font-variant-numeric: tabular-nums; }}
.wide td:first-child {{ white-space: normal; min-width: 9em; }}
</style></head><body>
<h1>multistage report</h1>
<p>Commit <code>{git_commit()}</code>; dataset <code>{html.escape(dataset or "unknown")}</code>,
stage one <code>{html.escape(str(params.get("stage_one", {}).get("model")))}</code>,
stage two <code>{html.escape(", ".join(variants))}</code> (headline: <code>{html.escape(variants[0])}</code>).</p>
<h2>Scores</h2>
<table><tr><th>what</th><th>key</th><th>value</th></tr>
{rows}
</table>
{comparison_section(scores, variants)}
<h2>Figures</h2>
{figures}
{sweep_section()}
<details><summary>Every metric</summary><table>{all_rows}</table></details>
<details><summary>Params</summary><pre>{html.escape(json.dumps(params, indent=2))}</pre></details>
</body></html>
"""


def filed_variant(registry: RegistryParams, variants: list[str], source: str = PARAMS_FILE) -> str:
    """The variant whose model the registry files: ``registry.variant``, else the first listed."""
    if registry.variant is None:
        return variants[0]
    if registry.variant not in variants:
        raise ParamsError(
            f"{source}: bad value for 'registry.variant': {registry.variant!r} is not in "
            f"stage_two.variants ({', '.join(variants)})"
        )
    return registry.variant


def check_registry(
    registry: RegistryParams, scores: dict[str, float], source: str = PARAMS_FILE, variants: list[str] | None = None
) -> None:
    filed_variant(registry, variants or DEFAULT_VARIANTS, source)
    metric = resolve_best_metric(registry.best_metric, scores)
    if registry.enabled and metric not in scores:
        near = sorted(k for k in scores if metric.split(".")[0] in k)[:8] or sorted(scores)[:8]
        raise ParamsError(
            f"{source}: bad value for 'registry.best_metric': {metric!r} is not a key of "
            f"{', '.join(map(str, metric_files(variants)))}; e.g. {', '.join(near)}"
        )


def run(params: dict) -> Path:
    page = render(load_scores(variants_of(params)), params)
    with StagingDirectory(OUTPUT) as tmp:
        (tmp / "index.html").write_text(page)
    return OUTPUT / "index.html"


def register(
    registry: RegistryParams, tracker, scores: dict[str, float], variant: str = "msvae"
) -> dict[str, str | None]:
    """File ``variant``'s stage-two model in the registry (alias ``newest``) and move ``best``; returns the
    versions. ``registry.best_metric`` (resolved by ``resolve_best_metric``) is read under ``compare.<variant>.``
    when the variant is not the headline and the key exists there."""
    model_file = require_file(variant_model_file(variant), f"stage-two model ({variant})")
    tags = {
        "git_commit": git_commit(),
        "pipeline_run_id": os.environ.get(PARENT_RUN_VARIABLE, ""),
        "stage_two.variant": variant,
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["DVC_EXP_NAME"] = os.environ["DVC_EXP_NAME"]
    metric = resolve_best_metric(registry.best_metric, scores)
    value = scores.get(f"compare.{variant}.{metric}", scores.get(metric))
    version = register_model_version(
        tracker,
        model_file,
        registry.model_name,
        file_digest(model_file),
        metric,
        value if isinstance(value, (int, float)) else None,
        tags,
    )
    best = refresh_best_alias(registry.model_name, metric, registry.best_is == "higher")
    result = {"model": registry.model_name, "version": version, "best": best, "variant": variant, "metric": metric}
    tracker.set_tags({"registry.model": registry.model_name, "registry.version": version})
    return result


def publish(params: dict, tracker, source: str = PARAMS_FILE) -> tuple[Path, dict | None]:
    """Write the page, log it to ``tracker``'s run and register the stage-two model (what DVC and Prefect call)."""
    registry = registry_params(params, source)
    variants = variants_of(params)
    scores = load_scores(variants)
    check_registry(registry, scores, source, variants)
    path = run(params)
    tracker.log_artifact(path, "report")
    return path, register(
        registry, tracker, scores, filed_variant(registry, variants, source)
    ) if registry.enabled else None


def main(params_file: str | Path = PARAMS_FILE) -> Path:
    params = read_params_file(params_file)
    registry = registry_params(params, str(params_file))  # a bad section fails before any run is opened
    variants = variants_of(params)
    check_registry(registry, load_scores(variants), str(params_file), variants)
    with stage_run("report") as tracker:
        path, registered = publish(params, tracker, str(params_file))
    print(f"report: {path}")
    if registered:
        print(
            f"registry: {registered['model']} version {registered['version']} ({registered['variant']}) is 'newest'; "
            f"'best' ({registered['metric']}, {registry.best_is} is better) is version {registered['best']}"
        )
    return path


if __name__ == "__main__":
    run_cli(main)
