"""DVC stage ``report``: one self-contained HTML page (scores table, figures embedded) in ``report/index.html``.

It reads only the stages' outputs (``metrics/*.json``, ``figures/*.png``, the training-curve figures), so it is
cheap to rerun, and it logs the page to MLflow.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from stages.common import PARAMS_FILE, StagingDirectory, read_params_file, require_file, run_cli
from stages.tracking import git_commit, stage_run

OUTPUT = Path("report")
METRIC_FILES = [Path("metrics/stage_one.json"), Path("metrics/stage_two.json"), Path("metrics/evaluate.json")]
FIGURES = [
    ("Reconstructions: x (top), y = stage one (middle), x-hat = stage two (bottom)", Path("figures/reconstructions.png")),
    ("Traversal of the stage-one code C, decoded by stage one (Y): one row per latent", Path("figures/traversal_y.png")),
    ("The same traversal rendered by stage two (X-hat = G(Y, z), z fixed)", Path("figures/traversal_x_hat.png")),
    ("Traversal of the residual z with Y fixed (X-hat = G(Y, z))", Path("figures/traversal_z.png")),
    ("Stage-one training curves", Path("models/stage_one/curves.png")),
    ("Stage-two training curves", Path("models/stage_two/curves.png")),
]

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


def load_scores() -> dict[str, float]:
    scores: dict[str, float] = {}
    for path in METRIC_FILES:
        scores |= json.loads(require_file(path, "metrics file").read_text())
    return scores


def headline(scores: dict[str, float]) -> list[tuple[str, str, float]]:
    return [(label, key, scores[key]) for label, key in HEADLINE if key in scores]


def _image(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def render(scores: dict[str, float], params: dict) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(label)}</td><td><code>{key}</code></td><td>{value:.4g}</td></tr>"
        for label, key, value in headline(scores)
    )
    all_rows = "\n".join(
        f"<tr><td><code>{html.escape(k)}</code></td><td>{v:.6g}</td></tr>"
        for k, v in sorted(scores.items()) if isinstance(v, (int, float))
    )
    figures = "\n".join(
        f"<figure><img alt='{html.escape(title)}' src='{_image(path)}'><figcaption>{html.escape(title)}</figcaption>"
        "</figure>"
        for title, path in FIGURES if path.exists()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>multistage report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px; }}
td:last-child {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }}
figcaption {{ font-size: 0.9em; color: #555; }} details {{ margin: 1em 0; }}
</style></head><body>
<h1>multistage report</h1>
<p>Commit <code>{git_commit()}</code>; dataset <code>{html.escape(str(params.get('prepare', {}).get('variant')))}</code>
dSprites, stage one <code>{html.escape(str(params.get('stage_one', {}).get('model')))}</code>,
stage two <code>{html.escape(str(params.get('stage_two', {}).get('model')))}</code>.</p>
<h2>Scores</h2>
<table><tr><th>what</th><th>key</th><th>value</th></tr>
{rows}
</table>
<h2>Figures</h2>
{figures}
<details><summary>Every metric</summary><table>{all_rows}</table></details>
<details><summary>Params</summary><pre>{html.escape(json.dumps(params, indent=2))}</pre></details>
</body></html>
"""


def run(params: dict) -> Path:
    page = render(load_scores(), params)
    with StagingDirectory(OUTPUT) as tmp:
        (tmp / "index.html").write_text(page)
    return OUTPUT / "index.html"


def main(params_file: str | Path = PARAMS_FILE) -> Path:
    with stage_run("report") as tracker:
        path = run(read_params_file(params_file))
        tracker.log_artifact(path, "report")
    print(f"report: {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
