"""The closing summary a pipeline run prints: the headline scores, how to open the MLflow UI on the run, the
report's path."""

from __future__ import annotations

import json
from pathlib import Path

from stages.report import EVALUATE_METRICS, OUTPUT, STAGE_ONE_METRICS, headline
from stages.tracking import repository_root, tracking_uri


def score_table(scores: dict[str, float]) -> str:
    rows = [
        (label, f"{value:.4g}") for label, _, value in headline(scores)
    ]  # numbers only (a missing or null score is left out)
    if not rows:
        return "(no scores yet)"
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value:>10}" for label, value in rows)


def read_scores() -> dict[str, float]:
    scores: dict[str, float] = {}
    for path in [STAGE_ONE_METRICS, *sorted(Path("metrics").glob("stage_two_*.json")), EVALUATE_METRICS]:
        if path.exists():
            scores |= json.loads(path.read_text())
    return scores


def mlflow_ui_command(parent_run_id: str | None) -> str:
    """``make ui`` (what it runs, spelled out) for our SQLite store; for a tracking server, its own address."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        store = Path(uri.removeprefix("sqlite:///")).parent
        command = (
            f"make ui   # i.e. .venv/bin/mlflow server --backend-store-uri {uri} --artifacts-destination "
            f"{store / 'mlartifacts'} --host 127.0.0.1 --port 5000"
        )
        address = "http://127.0.0.1:5000"
    else:
        command, address = f"(tracking server) {uri}", uri
    where = f"\n  then open {address} and the run {parent_run_id}" if parent_run_id else ""
    return command + where


def print_summary(parent_run_id: str | None) -> None:
    print("\nFinal scores (held-out set)")
    print(score_table(read_scores()))
    print("\nMLflow UI:\n  " + mlflow_ui_command(parent_run_id))
    report = repository_root() / OUTPUT / "index.html"
    print(f"\nReport: {report}" + ("" if report.exists() else " (not written yet)"))
