"""DVC stage ``report``: one self-contained HTML page (scores table, figures embedded) in ``report/index.html``;
then the stage-two model is filed in the MLflow model registry.

The page reads only the stages' outputs, so it is cheap to rerun:

* ``metrics/*.json`` -> the headline score table and every metric;
* the figures the evaluate stage lists in ``figures/captions.json`` (a list of ``{"file", "caption"}`` in display
  order, files relative to ``figures/``); without that file, the fixed list :data:`DEFAULT_FIGURES`;
* the training curves of both stages (``models/stage_*/curves.png``);
* a sweep's table and MIG-vs-beta plot (``sweep/results.json``, ``sweep/mig_vs_beta.png``, written by
  ``pipeline.sweep``) when present.

Every image is a ``data:`` URI, so the page has no external reference and opens anywhere.

Registry (``registry`` params section): the stage-two model file becomes a version of ``registry.model_name``
with the alias ``newest`` (MLflow reserves the name ``latest``); ``best`` moves to the version with the best
``registry.best_metric`` (lower or higher is better, ``registry.best_is``). A metric name that no metrics file has is a params error before anything is
written.
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

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
from stages.tracking import (
    PARENT_RUN_VARIABLE,
    git_commit,
    refresh_best_alias,
    register_model_version,
    stage_run,
)

OUTPUT = Path("report")
METRIC_FILES = [Path("metrics/stage_one.json"), Path("metrics/stage_two.json"), Path("metrics/evaluate.json")]
FIGURES_DIR = Path("figures")
CAPTIONS = FIGURES_DIR / "captions.json"
DEFAULT_FIGURES = [
    ("Reconstructions: x (top), y = stage one (middle), x-hat = stage two (bottom)",
     FIGURES_DIR / "reconstructions.png"),
    ("Traversal of the stage-one code C, decoded by stage one (Y): one row per latent",
     FIGURES_DIR / "traversal_y.png"),
    ("The same traversal rendered by stage two (X-hat = G(Y, z), z fixed)", FIGURES_DIR / "traversal_x_hat.png"),
    ("Traversal of the residual z with Y fixed (X-hat = G(Y, z))", FIGURES_DIR / "traversal_z.png"),
]
CURVES = [
    ("Stage-one training curves", Path("models/stage_one/curves.png")),
    ("Stage-two training curves", Path("models/stage_two/curves.png")),
]
SWEEP_DIR = Path("sweep")
SWEEP_TABLE = SWEEP_DIR / "results.json"
SWEEP_PLOT = SWEEP_DIR / "mig_vs_beta.png"
STAGE_TWO_MODEL = Path("models/stage_two/model.pt")

HEADLINE = [
    ("MIG (histogram, 20 bins) of stage one on X", "x.mig.histogram20"),
    ("MIG of stage one on Y", "y.mig.histogram20"),
    ("MIG of stage one on X-hat", "x_hat.mig.histogram20"),
    ("MIG on X-hat / MIG on Y", "mig_ratio.x_hat_over_y"),
    ("MIG of stage one on X, without shape", "x.mig.histogram20.no_shape"),
    ("Fréchet distance (factor-classifier features), Y", "frechet.factor_classifier.y"),
    ("Fréchet distance (factor-classifier features), X-hat", "frechet.factor_classifier.x_hat"),
    ("Fréchet distance, real vs real (floor)", "frechet.factor_classifier.real_reference"),
    ("Fréchet ratio X-hat / Y", "frechet.factor_classifier.ratio_x_hat_over_y"),
    ("Factor classifier held-out accuracy (mean)", "classifier.accuracy.mean"),
    ("L1 per pixel, Y", "reconstruction.y.l1"),
    ("L1 per pixel, X-hat", "reconstruction.x_hat.l1"),
    ("L2 per pixel, Y", "reconstruction.y.l2"),
    ("L2 per pixel, X-hat", "reconstruction.x_hat.l2"),
    ("M1 = MI[C_R; C_Y]", "conditioning.M1"),
    ("M2 = MI[C_R; C_X-hat]", "conditioning.M2"),
    ("M3 = MI[C_R; E(G(Y, eps))]", "conditioning.M3"),
    ("M4 = MI[C_R; E(G(eps, Z))]", "conditioning.M4"),
]


class RegistryParams(StageParams):
    """The ``registry`` section: where the stage-two model is filed and what ``best`` means."""

    enabled: bool = True  # false: no registry (e.g. a tracking server without one)
    model_name: str = Field("multistage-stage-two", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    best_metric: str = "frechet.factor_classifier.x_hat"
    best_is: Literal["lower", "higher"] = "lower"


def registry_params(params: dict, source: str = PARAMS_FILE) -> RegistryParams:
    return validate_section(RegistryParams, params.get("registry", {}), "registry", source)


def load_scores() -> dict[str, float]:
    scores: dict[str, float] = {}
    for path in METRIC_FILES:
        scores |= json.loads(require_file(path, "metrics file").read_text())
    return scores


def headline(scores: dict[str, float]) -> list[tuple[str, str, float]]:
    return [(label, key, scores[key]) for label, key in HEADLINE if key in scores]


def figure_list() -> list[tuple[str, Path]]:
    """(caption, path) of every figure the page shows, in order: the evaluate stage's list, then the curves."""
    if CAPTIONS.exists():
        try:
            entries = json.loads(CAPTIONS.read_text())
        except json.JSONDecodeError as error:
            raise InputError(f"{CAPTIONS}: not valid JSON ({error}); expected a list of {{\"file\", \"caption\"}}")
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("caption"), str)
            for e in entries
        ):
            raise InputError(f"{CAPTIONS}: expected a list of {{\"file\": \"<name>.png\", \"caption\": \"...\"}}")
        figures = []
        for entry in entries:
            relative = Path(entry["file"])
            if relative.is_absolute() or ".." in relative.parts:
                raise InputError(f"{CAPTIONS}: figure {entry['file']!r} must be a path inside {FIGURES_DIR}/")
            path = FIGURES_DIR / relative
            figures.append((entry["caption"], require_file(path, f"figure listed in {CAPTIONS}")))
    else:
        figures = [(caption, path) for caption, path in DEFAULT_FIGURES if path.exists()]
    return figures + [(caption, path) for caption, path in CURVES if path.exists()]


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _figure(caption: str, path: Path) -> str:
    return (f"<figure><img alt='{html.escape(caption, quote=True)}' src='{_image(path)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


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
    plot = _figure("Sweep: MIG of stage one on X against beta (one point per run, line through the means)",
                   SWEEP_PLOT) if SWEEP_PLOT.exists() else ""
    return f"<h2>Sweep</h2>\n<table><tr>{head}</tr>\n{body}\n</table>\n{plot}"


def render(scores: dict[str, float], params: dict) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(label)}</td><td><code>{key}</code></td><td>{value:.4g}</td></tr>"
        for label, key, value in headline(scores)
    )
    all_rows = "\n".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{v:.6g}</td></tr>"
        for k, v in sorted(scores.items()) if isinstance(v, (int, float))
    )
    figures = "\n".join(_figure(caption, path) for caption, path in figure_list())
    prepare = params.get("prepare", {})
    dataset = " ".join(str(prepare.get(k)) for k in ("dataset", "variant") if prepare.get(k))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>multistage report</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td:last-child {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #555; }} details {{ margin: 1em 0; }}
</style></head><body>
<h1>multistage report</h1>
<p>Commit <code>{git_commit()}</code>; dataset <code>{html.escape(dataset or 'unknown')}</code>,
stage one <code>{html.escape(str(params.get('stage_one', {}).get('model')))}</code>,
stage two <code>{html.escape(str(params.get('stage_two', {}).get('model')))}</code>.</p>
<h2>Scores</h2>
<table><tr><th>what</th><th>key</th><th>value</th></tr>
{rows}
</table>
<h2>Figures</h2>
{figures}
{sweep_section()}
<details><summary>Every metric</summary><table>{all_rows}</table></details>
<details><summary>Params</summary><pre>{html.escape(json.dumps(params, indent=2))}</pre></details>
</body></html>
"""


def check_registry(registry: RegistryParams, scores: dict[str, float], source: str = PARAMS_FILE) -> None:
    if registry.enabled and registry.best_metric not in scores:
        near = sorted(k for k in scores if registry.best_metric.split(".")[0] in k)[:8] or sorted(scores)[:8]
        raise ParamsError(
            f"{source}: bad value for 'registry.best_metric': {registry.best_metric!r} is not a key of "
            f"{', '.join(map(str, METRIC_FILES))}; e.g. {', '.join(near)}"
        )


def run(params: dict) -> Path:
    page = render(load_scores(), params)
    with StagingDirectory(OUTPUT) as tmp:
        (tmp / "index.html").write_text(page)
    return OUTPUT / "index.html"


def register(registry: RegistryParams, tracker, scores: dict[str, float]) -> dict[str, str | None]:
    """File the stage-two model in the registry (alias ``newest``) and move ``best``; returns the versions."""
    model_file = require_file(STAGE_TWO_MODEL, "stage-two model")
    tags = {"git_commit": git_commit(), "pipeline_run_id": os.environ.get(PARENT_RUN_VARIABLE, "")}
    if os.environ.get("DVC_EXP_NAME"):
        tags["DVC_EXP_NAME"] = os.environ["DVC_EXP_NAME"]
    version = register_model_version(tracker, model_file, registry.model_name, file_digest(model_file),
                                     registry.best_metric, scores.get(registry.best_metric), tags)
    best = refresh_best_alias(registry.model_name, registry.best_metric, registry.best_is == "higher")
    result = {"model": registry.model_name, "version": version, "best": best}
    tracker.set_tags({"registry.model": registry.model_name, "registry.version": version})
    return result


def publish(params: dict, tracker, source: str = PARAMS_FILE) -> tuple[Path, dict | None]:
    """Write the page, log it to ``tracker``'s run and register the stage-two model (what DVC and Prefect call)."""
    registry = registry_params(params, source)
    scores = load_scores()
    check_registry(registry, scores, source)
    path = run(params)
    tracker.log_artifact(path, "report")
    return path, register(registry, tracker, scores) if registry.enabled else None


def main(params_file: str | Path = PARAMS_FILE) -> Path:
    params = read_params_file(params_file)
    registry = registry_params(params, str(params_file))  # a bad section fails before any run is opened
    check_registry(registry, load_scores(), str(params_file))
    with stage_run("report") as tracker:
        path, registered = publish(params, tracker, str(params_file))
    print(f"report: {path}")
    if registered:
        print(f"registry: {registered['model']} version {registered['version']} is 'newest'; "
              f"'best' ({registry.best_metric}, {registry.best_is} is better) is version {registered['best']}")
    return path


if __name__ == "__main__":
    run_cli(main)
