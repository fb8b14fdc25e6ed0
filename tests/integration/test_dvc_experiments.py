"""DVC experiments and sweeps on the tiny project: `dvc exp run -S` in the workspace and through `--queue` +
`dvc queue start`, their MLflow runs tagged DVC_EXP_NAME, the gathered sweep and `dvc plots` (training curves and
MIG against beta), `dvc metrics diff` between commits, and `dvc push` to a local remote + `dvc pull` in a fresh
clone. The runs are the session fixture ``dvc_experiments`` (tests/conftest.py)."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest

from stages.common import file_digest
from tests.conftest import sh

pytestmark = pytest.mark.e2e

EXPERIMENT_STAGES = ["stage_one", "pairs", "stage_two@msvae", "evaluate", "report"]  # prepare is unchanged by beta


def exp_show(root, baseline: str) -> dict[str, dict]:
    """name -> {"params": nested params.yaml, "metrics": flat metrics} for the experiments made on ``baseline``."""
    found = {}
    for commit in json.loads(sh(["dvc", "exp", "show", "--json", "--rev", baseline], root).stdout):
        revisions = [(commit.get("name") or commit["rev"], commit)]
        revisions += [(e.get("name"), r) for e in commit.get("experiments") or [] for r in e.get("revs") or []]
        for name, revision in revisions:
            data = revision.get("data") or {}
            metrics = {}
            for file in (data.get("metrics") or {}).values():
                metrics |= file.get("data") or {}
            found[name] = {"params": data["params"]["params.yaml"]["data"], "metrics": metrics}
    return found


def lookup(params: dict, dotted: str):
    for part in dotted.split("."):
        params = params[part]
    return params


def test_experiments_run_in_workspace_and_queue_and_tag_their_mlflow_runs(dvc_experiments):
    root, key = dvc_experiments.root, dvc_experiments.beta_key
    assert "Ran experiment(s): beta4" in dvc_experiments.experiments["beta4"].stdout
    assert "Queued experiment 'beta1'" in dvc_experiments.experiments["beta1-queued"].stdout
    assert re.search(r"\bbeta1\b.*\bSuccess\b", dvc_experiments.queue_status)  # `dvc queue status`

    experiments = exp_show(root, dvc_experiments.commits["stage_two_beta"])
    assert lookup(experiments["beta4"]["params"], key) == 4
    assert lookup(experiments["beta1"]["params"], key) == 1
    # each experiment's stage runs went to the project's store (the queued one from a .dvc/tmp/exps workspace),
    # named by DVC_EXP_NAME, and the evaluate run logged the same scores DVC recorded for that experiment
    database = sqlite3.connect(root / "mlruns.db")
    for name in ("beta4", "beta1"):
        runs = dict(
            database.execute(
                "select r.name, r.run_uuid from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'DVC_EXP_NAME' and t.value = ? and r.status = 'FINISHED'",
                (name,),
            ).fetchall()
        )
        assert sorted(runs) == sorted(EXPERIMENT_STAGES), name
        logged = dict(
            database.execute("select key, value from latest_metrics where run_uuid = ?", (runs["evaluate"],)).fetchall()
        )
        recorded = experiments[name]["metrics"]
        assert logged["x.mig.histogram20"] == pytest.approx(recorded["x.mig.histogram20"], abs=1e-12)
        assert logged["frechet.detail_classifier.x_hat"] == pytest.approx(  # the headline Fréchet distance
            recorded["frechet.detail_classifier.x_hat"], rel=1e-9
        )
    # beta changed stage one, so its reconstructions Y, and the headline scores on them, differ
    beta4, beta1 = experiments["beta4"]["metrics"], experiments["beta1"]["metrics"]
    assert beta4["reconstruction.y.l1"] != beta1["reconstruction.y.l1"]


def test_sweep_table_and_plots(dvc_experiments):
    root = dvc_experiments.root
    rows = json.loads((root / "sweep" / "results.json").read_text())
    by_beta = {row["beta"]: row for row in rows}
    assert sorted(by_beta) == [1, 2, 4]  # the HEAD commit (beta 2) and the two experiments
    experiments = exp_show(root, dvc_experiments.commits["stage_two_beta"])
    assert by_beta[4]["experiment"] == "beta4" and by_beta[1]["experiment"] == "beta1"
    for beta, name in ((4, "beta4"), (1, "beta1")):
        assert by_beta[beta]["mig_x"] == pytest.approx(experiments[name]["metrics"]["x.mig.histogram20"], abs=1e-12)
    assert (root / "sweep" / "mig_vs_beta.png").stat().st_size > 5_000
    assert "betatcvae" in dvc_experiments.gather.stdout and "mig_x" in dvc_experiments.gather.stdout

    plots = json.loads(sh(["dvc", "plots", "show", "--json"], root).stdout)["data"]
    assert {"stage_one_terms", "stage_two_terms", "sweep_mig_vs_beta"} <= set(plots)
    curve = plots["stage_one_terms"][0]["content"]["data"]["values"]
    assert {row["step"] for row in curve} == {4, 8, 12}
    sweep = plots["sweep_mig_vs_beta"][0]["content"]
    points = {(row["beta"], row["field"]): row["dvc_inferred_y_value"] for row in sweep["data"]["values"]}
    assert {beta for beta, field in points if field == "mig_x"} == {1, 2, 4}
    assert points[(4, "mig_x")] == pytest.approx(by_beta[4]["mig_x"])
    assert sweep["encoding"]["x"]["field"] == "beta"
    rendered = sh(["dvc", "plots", "show", "-o", "dvc_plots"], root)
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "index.html" in rendered.stdout and "sweep_mig_vs_beta" in page and "stage_one_terms" in page

    # the report was rebuilt with the sweep (the report stage depends on sweep/); the stage-two model it found is
    # beta4's, already filed by that experiment: not filed twice, it is 'newest' again
    assert "Running stage 'report'" in dvc_experiments.report_repro.stdout
    assert "<h2>Sweep</h2>" in (root / "report" / "index.html").read_text()
    database = sqlite3.connect(root / "mlruns.db")
    digests = dict(
        database.execute(
            "select version, value from model_version_tags where key = 'multistage.model_digest'"
        ).fetchall()
    )
    assert len(digests) == 2  # the two experiments' models
    newest = database.execute("select version from registered_model_aliases where alias = 'newest'").fetchone()[0]
    assert digests[newest] == file_digest(root / "models" / "stage_two" / "msvae" / "model.pt")


def test_metrics_diff_between_sweep_commits(dvc_experiments):
    """The experiment commit (stage-one beta 2 -> 4) against the one before: stage one's scores changed."""
    root, commits = dvc_experiments.root, dvc_experiments.commits
    diff = json.loads(
        sh(["dvc", "metrics", "diff", commits["stage_two_beta"], commits["experiments"], "--json"], root).stdout
    )
    assert list(diff) == ["metrics/headline.json"]  # the one declared metrics file
    changed = diff["metrics/headline.json"]
    assert "reconstruction.y.l1" in changed and "reconstruction.x_hat.l1" in changed
    text = sh(["dvc", "metrics", "diff", commits["stage_two_beta"], commits["experiments"]], root).stdout
    assert "metrics/headline.json" in text and "reconstruction.y.l1" in text


def test_push_to_a_remote_and_pull_into_a_fresh_clone(dvc_experiments, tmp_path):
    root = dvc_experiments.root
    remote = tmp_path / "dvc-remote"
    sh(["dvc", "remote", "add", "-d", "storage", str(remote)], root)
    sh(["git", "commit", "-q", "-am", "DVC remote"], root)
    pushed = sh(["dvc", "push"], root)
    assert "pushed" in pushed.stdout
    assert any(path.is_file() for path in remote.rglob("*"))

    clone = tmp_path / "fresh-clone"
    sh(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert not (clone / "models").exists()  # outputs are not in git
    pulled = sh(["dvc", "pull"], clone)
    assert "added" in pulled.stdout or "fetched" in pulled.stdout
    for output in ("data/prepared", "models/stage_one", "pairs", "models/stage_two", "figures", "report"):
        files = sorted(p.relative_to(root) for p in (root / output).rglob("*") if p.is_file())
        assert files, output
        assert sorted(p.relative_to(clone) for p in (clone / output).rglob("*") if p.is_file()) == files, output
        for file in files:
            assert file_digest(clone / file) == file_digest(root / file), file
    status = sh(["dvc", "status"], clone).stdout
    assert "up to date" in status  # every stage of the clone matches its pulled outputs
