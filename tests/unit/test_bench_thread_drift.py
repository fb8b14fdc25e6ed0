"""The thread-drift summary of ``bench.detail_scores threads`` on rows with known relative changes."""

from __future__ import annotations

import pytest

from bench.detail_scores import thread_drift


def run(seed: int, threads: int, scale: float, detail_y: float) -> dict:
    return {
        "seed": seed,
        "threads": threads,
        "frechet.factor_classifier.y": 100.0 * scale,
        "frechet.factor_classifier.x_hat": 10.0 * scale,
        "frechet.detail_classifier.y": detail_y,
        "frechet.detail_classifier.x_hat": 5.0,
    }


def test_relative_changes_between_thread_counts_and_between_seeds():
    rows = [run(0, 1, 1.0, 50.0), run(0, 2, 1.1, 50.0), run(1, 1, 2.0, 25.0), run(1, 2, 2.0, 25.0)]
    summary = thread_drift(rows)
    threads, seeds = summary["threads_relative_change"], summary["seed_relative_change"]
    assert threads["frechet.factor_classifier.y"] == pytest.approx(0.1)  # 110 against 100, over the smaller
    assert threads["ratio.factor_classifier"] == pytest.approx(
        0.0, abs=1e-12
    )  # both distances scaled alike: the ratio does not move
    assert threads["frechet.detail_classifier.y"] == 0.0
    assert seeds["frechet.factor_classifier.y"] == pytest.approx(1.0)  # 200 against 100 at one thread
    assert seeds["ratio.detail_classifier"] == pytest.approx(1.0)  # 5/25 against 5/50
    assert summary["runs"][0]["ratio.detail_classifier"] == pytest.approx(0.1)
