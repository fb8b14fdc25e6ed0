"""The report stage's page and registry params on small hand-made inputs (no pipeline run): which figures it
embeds (figures/captions.json, else the fixed list; then the curves), the sweep section, and the errors it gives."""

from __future__ import annotations

import base64
import json
import re

import pytest

from stages import report
from stages.common import InputError, ParamsError

PNG = base64.b64decode(  # a 1 x 1 pixel
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
SCORES = {"x.mig.histogram20": 0.25, "frechet.factor_classifier.x_hat": 12.5, "conditioning.M1": 0.5}


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """A folder holding what the report reads: metrics files, four default figures and both curves."""
    monkeypatch.chdir(tmp_path)
    for path in report.METRIC_FILES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(SCORES if path.name == "evaluate.json" else {}))
    for _, path in report.DEFAULT_FIGURES + report.CURVES:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(PNG)
    return tmp_path


def captions_of(page: str) -> list[str]:
    return re.findall(r"<figcaption>(.*?)</figcaption>", page)


def test_without_captions_file_the_fixed_list_then_the_curves(outputs):
    page = report.render(report.load_scores(), {})
    assert captions_of(page) == [c for c, _ in report.DEFAULT_FIGURES] + [c for c, _ in report.CURVES]
    assert page.count("data:image/png;base64,") == 6 and "<h2>Sweep</h2>" not in page


def test_every_figure_listed_in_captions_json_in_its_order(outputs):
    (outputs / "figures" / "kl_per_unit.png").write_bytes(PNG)
    listed = [
        {"file": "kl_per_unit.png", "caption": "KL per unit"},
        {"file": "reconstructions.png", "caption": "x | y | x-hat"},
    ]
    (outputs / "figures" / "captions.json").write_text(json.dumps(listed))
    page = report.render(report.load_scores(), {})
    assert captions_of(page) == ["KL per unit", "x | y | x-hat"] + [c for c, _ in report.CURVES]


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"file": "a.png"}), "expected a list"),
        (json.dumps([{"file": "missing.png", "caption": "gone"}]), "missing.png"),
        (json.dumps([{"file": "../metrics/evaluate.json", "caption": "escape"}]), "inside figures/"),
    ],
)
def test_a_bad_captions_file_is_one_clear_error(outputs, content, message):
    (outputs / "figures" / "captions.json").write_text(content)
    with pytest.raises(InputError, match=re.escape(message)):
        report.figure_list()


def test_sweep_section_when_a_sweep_was_gathered(outputs):
    report.SWEEP_DIR.mkdir()
    rows = [
        {"beta": 1.0, "model": "betatcvae", "seed": 0, "mig_x": 0.125, "state": "Completed", "flow_run_id": "f"},
        {"beta": 4.0, "model": "betatcvae", "seed": 0, "mig_x": 0.25, "state": "Completed", "flow_run_id": "g"},
    ]
    report.SWEEP_TABLE.write_text(json.dumps(rows))
    report.SWEEP_PLOT.write_bytes(PNG)
    page = report.render(report.load_scores(), {})
    section = page[page.index("<h2>Sweep</h2>") : page.index("<details>")]
    header = re.findall(r"<th>(.*?)</th>", section)
    assert header[:4] == ["model", "beta", "seed", "state"] and header[-1] == "flow_run_id"
    assert section.count("<tr>") == 3 and "0.125" in section
    assert captions_of(page)[-1].startswith("Sweep: MIG")


def test_registry_params_and_metric_errors(outputs):
    scores = report.load_scores()
    registry = report.registry_params({})  # defaults when the section is absent
    assert (registry.model_name, registry.best_metric, registry.best_is) == (
        "multistage-stage-two",
        "frechet.headline",
        "lower",
    )
    report.check_registry(registry, scores)
    # the headline Fréchet: the detail network's where the data have nuisance columns, else the shape-only one's
    assert report.resolve_best_metric("frechet.headline", scores) == "frechet.factor_classifier.x_hat"
    with_detail = scores | {"frechet.detail_classifier.x_hat": 3.0}
    assert report.resolve_best_metric("frechet.headline", with_detail) == "frechet.detail_classifier.x_hat"
    assert report.resolve_best_metric("x.mig.histogram20", scores) == "x.mig.histogram20"
    with pytest.raises(ParamsError, match=r"registry\.best_metric.*'x\.mig\.histogram2'.*x\.mig\.histogram20"):
        report.check_registry(report.registry_params({"registry": {"best_metric": "x.mig.histogram2"}}), scores)
    with pytest.raises(ParamsError, match=r"registry\.best_is"):
        report.registry_params({"registry": {"best_is": "smaller"}})
    with pytest.raises(ParamsError, match=r"unknown key 'registry\.alias'"):
        report.registry_params({"registry": {"alias": "x"}})
    report.check_registry(report.registry_params({"registry": {"enabled": False, "best_metric": "nope"}}), scores)
