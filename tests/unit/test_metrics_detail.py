"""Known answers of the scores that see detail, on a small textured dSprites made by the project's generator: the
detail probes (ceiling, oracle, grey), the circular score, the foreground error and the detail-aware Fréchet
distance against the shape-only one."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from multistage.data import dsprites
from multistage.evaluation.detail import column_kinds, column_values, regression_targets
from multistage.evaluation.registry import METRICS, MetricInputs
from multistage.metrics.detail import (
    DetailProbes,
    blurred,
    circular_embedding,
    column_score,
    detail_feature_map,
    detail_scores,
    fit_detail_probes,
    gap_closed,
    marginal_distance,
    sample_detail_scores,
)
from multistage.metrics.frechet import extract_features, frechet_distance, train_factor_classifier
from multistage.metrics.reconstruction import ForegroundErrorAccumulator, reconstruction_errors

GREY = 0.75 * (1.0 - 0.5 / 2)  # the textured sprite's mean brightness: mean colour x mean grating intensity


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """2,400 textured dSprites at 32 px; X (test split, float), a grey X-hat (the renderer with the colour fixed
    to grey and no grating: the same sprites without their detail) and a stand-in Y (the grey sprites blurred, as
    stage one's reconstructions are)."""
    dataset = dsprites.make_dsprites(
        tmp_path_factory.mktemp("textured"),
        n_images=2400,
        seed=3,
        variant="textured",
        image_size=32,
        test_fraction=0.25,
    )
    test = dataset.test_indices
    x = dataset.images[test].astype(np.float64) / 255.0
    classes = dataset.factor_classes[test]
    neutral = {name: np.full(len(test), GREY) for name in dsprites.COLOUR_NAMES}
    neutral |= {name: np.zeros(len(test)) for name in ("grating_angle", "grating_frequency", "grating_phase")}
    grey = dsprites.render_textured(classes, neutral, grating_contrast=0.0)
    grey = dsprites.sources.fit_images(grey, 32, "resize").astype(np.float64) / 255.0
    y = gaussian_filter(grey, sigma=(0, 0, 1.0, 1.0))
    return types.SimpleNamespace(dataset=dataset, test=test, x=x, grey=grey, y=y)


@pytest.fixture(scope="module")
def probes(textured):
    """Probes of the nuisance columns, the position and the scale (ridge fits only: the class probe, a logistic
    regression, is tested on its own below)."""
    dataset = textured.dataset
    kinds = {k: v for k, v in column_kinds(dataset, ("shape",)).items() if k not in ("shape", "orientation", "posY")}
    train = dataset.train_indices
    # fitted as the evaluate stage fits them: each column on its feature group, with a blurred copy of each image
    fitted = fit_detail_probes(dataset.images[train], column_values(dataset, train, kinds), kinds, 0.8, alpha=10.0)
    return fitted, column_values(dataset, textured.test, kinds), tuple(sorted(dataset.nuisance))


def score(probes, textured, x_hat) -> dict:
    fitted, columns, nuisance = probes
    named = {"x": detail_feature_map(textured.x), "y": detail_feature_map(textured.y)}
    return detail_scores(fitted, named | {"x_hat": detail_feature_map(x_hat)}, columns, nuisance)


def test_the_columns_of_textured_dsprites_and_their_kinds(textured):
    kinds = column_kinds(textured.dataset, ("shape",))
    assert kinds["shape"] == "class" and kinds["scale"] == "continuous" and kinds["colour_r"] == "continuous"
    assert kinds["grating_angle"] == math.pi and kinds["grating_phase"] == kinds["orientation"] == 2 * math.pi
    targets, names = regression_targets(textured.dataset, textured.test[:5], kinds)
    assert names[:3] == ["colour_b", "colour_g", "colour_r"] and "grating_angle.cos" in names
    assert targets.shape == (5, len(names)) and np.abs(targets[:, names.index("grating_angle.sin")]).max() <= 1


def test_the_real_images_reach_the_ceiling_and_the_oracle_closes_the_whole_gap(textured, probes):
    scores = score(probes, textured, textured.x)
    for name in ("colour_r", "colour_g", "colour_b"):
        # the probe reads colour off real images (blur-robust fit), up to the grating's mean intensity over the sprite,
        # which varies with its size and phase and is not the colour: the ceiling is below 1
        assert scores[f"detail.{name}.x"] > 0.7, name
    for name in ("grating_frequency", "grating_angle"):
        assert scores[f"detail.{name}.x"] > 0.3, name  # and the grating, at 32 px, part of the way
    for name in probes[0].models:  # X scored as X-hat is X: every score is the ceiling, every gap is closed
        assert scores[f"detail.{name}.x_hat"] == scores[f"detail.{name}.x"], name
        assert scores[f"detail.{name}.gap_closed"] in (None, 1.0), name
    assert scores["detail.gap_closed"] == 1.0
    assert scores["detail.grating_phase.gap_closed"] is None  # the spectrum drops the phase: no gap to close
    # an oracle that rounds X to 8 bits again after a +-1/2 grey-level error: within 0.05 of the whole gap
    rng = np.random.default_rng(0)
    requantised = np.clip(np.round(textured.x * 255 + rng.uniform(-0.5, 0.5, textured.x.shape)) / 255, 0, 1)
    assert score(probes, textured, requantised)["detail.gap_closed"] > 0.95


def test_a_grey_x_hat_closes_none_of_the_gap(textured, probes):
    scores = score(probes, textured, textured.grey)
    for name in ("colour_r", "colour_g", "colour_b", "grating_frequency", "grating_angle"):
        assert scores[f"detail.{name}.y"] < 0.05, name  # the grey, blurred Y carries no detail
        assert abs(scores[f"detail.{name}.gap_closed"]) < 0.05, name
    assert abs(scores["detail.gap_closed"]) < 0.05
    assert scores["detail.posX.x_hat"] > 0.9  # the grey sprite is still in its place: the factors are kept


def test_blur_is_not_a_loss_of_colour_and_colour_is_not_the_grating(textured, probes):
    """A blurred X keeps its colour score; the sprites in their true colours at the grating's mean intensity without
    the grating (the conditional mean: the best that a decoder which cannot draw the grating paints) keep the
    colour and lose the grating; with one probe on the whole map, without the blurred copies, blur lost colour."""
    x_scores = score(probes, textured, textured.x)
    soft = score(probes, textured, blurred(textured.x, 0.7))
    test = textured.test
    nuisance = {name: np.asarray(column)[test] for name, column in textured.dataset.nuisance.items()}
    flat = dsprites.render_textured(textured.dataset.factor_classes[test], nuisance, grating_contrast=0.0)
    flat = dsprites.sources.fit_images(flat, 32, "resize") / 255.0
    mean_intensity = 1.0 - dsprites.TextureOptions().grating_contrast / 2
    conditional_mean = score(probes, textured, flat * mean_intensity)
    conditional_soft = score(probes, textured, blurred(flat * mean_intensity, 0.7))
    for name in ("colour_r", "colour_g", "colour_b"):
        assert soft[f"detail.{name}.gap_closed"] > 0.9, name
        assert conditional_mean[f"detail.{name}.gap_closed"] > 0.9, name
        assert conditional_soft[f"detail.{name}.gap_closed"] > 0.9, name
    for name in ("grating_frequency", "grating_angle"):
        assert abs(conditional_mean[f"detail.{name}.gap_closed"]) < 0.05, name
    kinds = {k: v for k, v in column_kinds(textured.dataset, ("shape",)).items() if k.startswith("colour")}
    train = textured.dataset.train_indices
    whole = DetailProbes(
        detail_feature_map(textured.dataset.images[train]), column_values(textured.dataset, train, kinds), kinds, 10.0
    )
    truth = column_values(textured.dataset, test, kinds)
    whole_soft = whole.scores(detail_feature_map(blurred(textured.x, 0.7)), truth)
    assert np.mean(list(whole_soft.values())) < np.mean([soft[f"detail.{k}.x_hat"] for k in kinds]) - 0.2
    assert x_scores["detail.colour_r.x"] > 0.7


def test_samples_are_scored_on_the_spread_of_their_detail(textured, probes):
    """A sample's colour is drawn, not x's: samples are scored on the distribution of the probes' readings. X itself
    closes the whole gap and Y none; X with its rows shuffled (real detail, belonging to no row) also closes it all,
    where its paired R^2 falls to about 0; the grey sprites close about none. Only the colour columns: the grating
    readings of grey sprites spread as X's do."""
    fitted, columns, nuisance = probes
    named = {"x": detail_feature_map(textured.x), "y": detail_feature_map(textured.y)}

    def sampled(images) -> dict:
        return sample_detail_scores(fitted, named | {"x_sample": detail_feature_map(images)}, columns, nuisance)

    colours = ("colour_r", "colour_g", "colour_b")
    for name in colours:
        assert sampled(textured.x)[f"detail.{name}.x_sample.marginal_gap_closed"] == 1.0, name
        assert sampled(textured.y)[f"detail.{name}.x_sample.marginal_gap_closed"] == 0.0, name
    assert sampled(textured.x)["detail.x_sample_gap_closed"] == 1.0
    shuffled = textured.x[np.random.default_rng(0).permutation(len(textured.x))]
    assert sampled(shuffled)["detail.x_sample_gap_closed"] == pytest.approx(1.0, abs=1e-9)
    paired = score(probes, textured, shuffled)
    assert max(paired[f"detail.{name}.gap_closed"] for name in colours) < 0.1
    grey = sampled(textured.grey)  # sharp, the right outline, no colour: -0.03 to -0.05 when written
    assert all(abs(grey[f"detail.{name}.x_sample.marginal_gap_closed"]) < 0.1 for name in colours), grey
    # the texture readings spread on sprites without a grating as well (the outline's spectrum): not scored so
    assert not any(key.startswith("detail.grating") for key in grey)
    texture = {
        name: fitted.predict(detail_feature_map(images))["grating_frequency"]
        for name, images in (("x", textured.x), ("y", textured.y), ("grey", textured.grey))
    }
    floor = marginal_distance(texture["x"], texture["y"], "continuous")
    assert 1 - marginal_distance(texture["x"], texture["grey"], "continuous") / floor > 0.5  # 0.81 when written


def test_readings_given_once_score_as_features_do(textured, probes):
    """The evaluate stage reads X and Y once and passes the readings for every variant: the scores are the same as
    from the features; a missing set is named."""
    fitted, columns, nuisance = probes
    named = {"x": detail_feature_map(textured.x), "y": detail_feature_map(textured.y)}
    read = {name: fitted.predict(features) for name, features in named.items()}
    with_grey = named | {"x_hat": detail_feature_map(textured.grey), "x_sample": detail_feature_map(textured.grey)}
    for scores in (detail_scores, sample_detail_scores):
        given = scores(fitted, with_grey, columns, nuisance, readings=read)
        assert given == scores(fitted, with_grey, columns, nuisance)
        swapped = {"x": read["y"], "y": read["x"]}  # the given readings are the ones used
        assert scores(fitted, with_grey, columns, nuisance, readings=swapped) != given
    with pytest.raises(ValueError, match=r"'x', 'y', 'x_sample'.*missing \['x_sample'\]"):
        sample_detail_scores(fitted, named, columns, nuisance)
    with pytest.raises(ValueError, match=r"missing \['y'\]"):
        detail_scores(fitted, {"x": named["x"]}, columns, nuisance)


def test_the_marginal_distance_against_sorted_samples():
    """For two sets of the same size the 1-Wasserstein distance is the mean gap between their sorted values (an
    independent computation); a circular column sums its two coordinates; a class column is the total variation
    between the class frequencies, here computed by hand."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=500), rng.normal(1.0, 2.0, size=500)
    assert marginal_distance(a, b, "continuous") == pytest.approx(np.abs(np.sort(a) - np.sort(b)).mean(), rel=1e-12)
    points_a, points_b = rng.normal(size=(400, 2)), rng.uniform(size=(400, 2))
    by_hand = sum(np.abs(np.sort(points_a[:, j]) - np.sort(points_b[:, j])).mean() for j in range(2))
    assert marginal_distance(points_a, points_b, "circular") == pytest.approx(by_hand, rel=1e-12)
    assert marginal_distance(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), "class") == pytest.approx(0.5)
    assert marginal_distance(a, a[::-1], "continuous") == 0.0


def test_the_registered_probe_metric_and_a_class_column(textured):
    """The registry's adapter fits and scores in one call; the shape, a class column, is scored by accuracy (well
    above chance on X)."""
    dataset = textured.dataset
    kinds = {name: column_kinds(dataset, ("shape",))[name] for name in ("shape", "colour_r")}
    train = dataset.train_indices
    inputs = MetricInputs(
        probe_features=detail_feature_map(dataset.images[train]),
        probe_columns=column_values(dataset, train, kinds),
        column_kinds=kinds,
        named_features={name: detail_feature_map(getattr(textured, name)) for name in ("x", "y")}
        | {"x_hat": detail_feature_map(textured.x)},
        columns=column_values(dataset, textured.test, kinds),
        nuisance_columns=("colour_r",),
    )
    result = METRICS["detail_probes"](inputs, seed=0)
    assert result["detail.shape.x"] > 0.5  # 3 shapes: chance is 1/3
    assert result["detail.shape.x_hat"] == result["detail.shape.x"] and result["detail.shape.gap_closed"] in (None, 1.0)
    assert result["detail.colour_r.x"] > 0.9 and result["detail.gap_closed"] == 1.0


def test_a_circular_column_scores_on_the_circle():
    rng = np.random.default_rng(1)
    angle = rng.uniform(0, math.pi, 500)
    # theta and theta + period are the same grating: predicting one for the other is perfect
    assert column_score(angle, circular_embedding(angle + math.pi, math.pi), "circular", math.pi) == pytest.approx(1.0)
    assert column_score(angle, circular_embedding(angle - 3 * math.pi, math.pi), "circular", math.pi) == pytest.approx(
        1.0
    )
    # read as a plain number the same prediction is far off (clipped at 0)
    assert column_score(angle, angle + math.pi, "continuous") == 0.0
    # near the wrap: 0.01 read as pi - 0.01 is a small error on the circle
    near = np.array([0.01, math.pi - 0.01, 1.0, 2.0])
    predicted = circular_embedding(np.array([math.pi - 0.01, 0.01, 1.0, 2.0]), math.pi)
    assert column_score(near, predicted, "circular", math.pi) > 0.99
    # a probe fitted on angles labelled theta scores the same when the truth is labelled theta + period
    features = np.stack([np.cos(2 * angle), np.sin(2 * angle), rng.normal(size=500)], axis=1)
    fitted = DetailProbes(features, {"a": angle}, {"a": math.pi})
    assert fitted.scores(features, {"a": angle}) == fitted.scores(features, {"a": angle + math.pi})
    assert fitted.scores(features, {"a": angle})["a"] > 0.99


def test_gap_closed_is_null_where_the_gap_is_tiny():
    assert gap_closed(0.9, 0.1, 0.5) == pytest.approx(0.5)
    assert gap_closed(0.3, 0.27, 0.3) is None  # X and Y within 0.05: no ratio of two small differences
    assert gap_closed(0.3, 0.27, 0.3, min_gap=0.01) == pytest.approx(1.0)
    assert gap_closed(float("nan"), 0.0, 0.5) is None


def test_the_foreground_error_sees_inside_the_object(textured):
    x, grey, y = textured.x, textured.grey, textured.y
    oracle = ForegroundErrorAccumulator(0.1)
    oracle.update(x, x, y)
    assert oracle.result()["l1"] == 0.0 and oracle.result()["l2"] == 0.0
    inside = ForegroundErrorAccumulator(0.1)
    for start in range(0, len(x), 100):  # streamed in batches: the same as one call
        inside.update(x[start : start + 100], grey[start : start + 100], y[start : start + 100])
    result = inside.result()
    assert result["l1"] > 0.05  # colour and grating missing inside the sprite
    everywhere = reconstruction_errors(x, grey)["l1"]
    assert everywhere < result["l1"] / 3  # averaged with the black background, the error looks small
    assert 0.02 < result["fraction"] < 0.6
    # outside the mask both are black but for faint antialiased edges below the threshold
    assert everywhere == pytest.approx(result["l1"] * result["fraction"], rel=0.02)
    one_call = METRICS["foreground_error"](
        MetricInputs(images=x, other_images=grey, condition_images=y, label="x_hat"), seed=0
    )
    assert one_call["reconstruction.x_hat.foreground.l1"] == pytest.approx(result["l1"], rel=1e-12)
    with pytest.raises(ValueError, match="of one shape"):
        inside.update(x[:2], grey[:3], y[:2])


def test_the_detail_fd_sees_what_the_shape_only_fd_misses(textured):
    """Both networks: the same architecture, steps and seed, one without the nuisance head. X against itself is 0
    in both; the grey X-hat is far from X in the detail network's features and, relative to the distance between
    two halves of the real images, further than the shape-only classifier sees it."""
    torch.set_num_threads(1)
    dataset = textured.dataset
    train = dataset.train_indices
    kinds = column_kinds(dataset, ("shape",))
    targets, names = regression_targets(dataset, train, kinds)
    common = dict(steps=400, batch_size=32, seed=0, factor_names=dataset.factor_names)
    images, classes = dataset.images[train], dataset.factor_classes[train]
    shape_only, _ = train_factor_classifier(images, classes, dataset.factor_sizes, **common)
    detail, held_out = train_factor_classifier(
        images, classes, dataset.factor_sizes, regression_targets=targets, regression_names=names, **common
    )
    # 400 steps on 1,800 images: the nuisance head has begun to learn colour (measured: blue 0.63, red 0.18)
    assert max(held_out[f"r2.{name}"] for name in dsprites.COLOUR_NAMES) > 0.4
    half = len(textured.x) // 2
    ratios = {}
    for name, network in (("shape_only", shape_only), ("detail", detail)):
        x = extract_features(network, textured.x)
        grey = extract_features(network, textured.grey)
        assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
        floor = frechet_distance(x[:half], x[half:])  # real against real: the sampling noise of the distance
        ratios[name] = frechet_distance(x[:half], grey[half:]) / floor
    # measured: the grey set is 1.31 times the real-vs-real floor for the detail network, 0.96 for the shape-only
    # classifier (no further from X than other real images)
    assert ratios["detail"] > 1.15
    assert ratios["detail"] > 1.2 * ratios["shape_only"]
