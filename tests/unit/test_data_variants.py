"""dSprites variants of disentanglement_lib (color, noisy, scream) and the dataset interface issue 3 added:
datasets without ground truth, lookup observations for stored data, extra arrays and float series."""

from __future__ import annotations

import numpy as np
import pytest

from multistage.data import base, dsprites
from multistage.data.base import GroundTruthDataset, NoGroundTruthError, load_dataset, save_dataset
from multistage.data.dsprites import make_dsprites, render_masks


def sprite_masks(classes: np.ndarray) -> np.ndarray:
    """bool (n, 3, 64, 64): the sprite's pixels, repeated over three channels."""
    return render_masks(classes).astype(bool)[:, None].repeat(3, axis=1)


def test_color_variant_is_the_sprite_times_a_colour_in_half_to_one(tmp_path):
    dataset = make_dsprites(tmp_path / "c", n_images=48, seed=2, variant="color", num_workers=1)
    images = np.asarray(dataset.images)
    assert images.shape == (48, 3, 64, 64) and sorted(dataset.nuisance) == sorted(dsprites.COLOUR_NAMES)
    colour = np.stack([dataset.nuisance[name] for name in dsprites.COLOUR_NAMES], axis=1)
    assert colour.min() >= 0.5 and colour.max() <= 1.0 and colour.std() > 0.05
    masks = sprite_masks(dataset.factor_classes)
    expected = np.where(masks, np.rint(255 * colour)[:, :, None, None], 0)  # computed independently
    np.testing.assert_array_equal(images, expected)
    fresh = dataset.observations_from_factors(dataset.factor_classes[:16], np.random.default_rng(0))
    assert np.all(fresh[~masks[:16]] == 0) and fresh[masks[:16]].min() >= 127
    assert not np.array_equal(fresh, images[:16])  # fresh colours


def test_noisy_variant_has_a_white_sprite_on_uniform_noise_fixed_by_grid_cell(tmp_path):
    dataset = make_dsprites(tmp_path / "n", n_images=40, seed=1, variant="noisy", num_workers=1)
    images = np.asarray(dataset.images)
    masks = sprite_masks(dataset.factor_classes)
    assert np.all(images[masks] == 255) and dataset.nuisance == {}
    background = images[~masks].astype(np.float64)
    assert background.mean() == pytest.approx(127.5, abs=2.0)  # U(0, 1) as bytes: mean 127.5
    assert background.std() == pytest.approx(np.sqrt((256**2 - 1) / 12), rel=0.02)  # uniform on 0..255
    assert np.histogram(background, bins=4, range=(0, 256))[0].min() > 0.24 * background.size
    # the noise is a function of (seed, grid cell), whatever else is drawn with it
    cells = dsprites.grid_indices(dataset.factor_classes)
    alone = dsprites._grid_noise_bytes(cells[3:5], seed=1)
    np.testing.assert_array_equal(np.where(masks[3:5], 255, alone), images[3:5])
    assert not np.array_equal(alone, dsprites._grid_noise_bytes(cells[3:5], seed=2))
    fresh = dataset.observations_from_factors(dataset.factor_classes[:4], 0)
    assert np.all(fresh[masks[:4]] == 255) and 100 < fresh[~masks[:4]].mean() < 155


def test_scream_variant_matches_the_disentanglement_lib_formula(tmp_path):
    photos = dsprites.scream_photos()
    assert photos.shape == (2, 3, 234, 350) and photos.dtype == np.float32  # both 640 x 427 photos, thumbnailed
    assert 0.0 <= photos.min() and photos.max() <= 1.0 and not photos.flags.writeable
    dataset = make_dsprites(tmp_path / "s", n_images=32, seed=5, variant="scream", num_workers=1)
    images = np.asarray(dataset.images).astype(np.float64) / 255
    nuisance = dataset.nuisance
    assert sorted(nuisance) == sorted(dsprites.SCREAM_NUISANCE_NAMES)
    assert set(nuisance["photo"].tolist()) <= {0.0, 1.0}
    assert nuisance["crop_row"].max() <= 234 - 64 and nuisance["crop_col"].max() <= 350 - 64
    masks = render_masks(dataset.factor_classes).astype(bool)
    for i in range(len(images)):  # per image, straight from the formula
        top, left = int(nuisance["crop_row"][i]), int(nuisance["crop_col"][i])
        crop = photos[int(nuisance["photo"][i]), :, top : top + 64, left : left + 64].astype(np.float64)
        shift = np.array([nuisance["shift_r"][i], nuisance["shift_g"][i], nuisance["shift_b"][i]])
        background = (crop + shift[:, None, None]) / 2
        expected = np.where(masks[i], 1 - background, background)
        np.testing.assert_allclose(images[i], expected, atol=0.5 / 255 + 1e-6)
    fresh = dataset.observations_from_factors(dataset.factor_classes[:4], np.random.default_rng(3))
    again = dataset.observations_from_factors(dataset.factor_classes[:4], np.random.default_rng(3))
    assert fresh.shape == (4, 3, 64, 64) and np.array_equal(fresh, again)


def test_variants_nuisance_is_a_function_of_seed_and_grid_cell():
    options = dsprites.TextureOptions()
    cells = np.array([3, 77, 500_000])
    for variant in ("color", "scream", "textured"):
        together = dsprites.grid_nuisance(cells, seed=4, options=options, variant=variant)
        alone = dsprites.grid_nuisance(cells[1:2], seed=4, options=options, variant=variant)
        other = dsprites.grid_nuisance(cells, seed=5, options=options, variant=variant)
        for name, values in together.items():
            assert values[1] == alone[name][0]
        assert any(not np.array_equal(values, other[name]) for name, values in together.items())
    assert dsprites.grid_nuisance(cells, 0, options, "binary") == {}
    with pytest.raises(ValueError, match="variant"):
        make_dsprites("unused", n_images=4, variant="screaming")


def labelled_toy(n: int = 12, with_factors: bool = True) -> GroundTruthDataset:
    rng = np.random.default_rng(0)
    classes = np.stack([np.arange(n) % 3, np.arange(n) % 2], axis=1) if with_factors else np.zeros((n, 0), int)
    return GroundTruthDataset(
        images=rng.integers(0, 256, size=(n, 1, 4, 4), dtype=np.uint8),
        factor_names=("a", "b") if with_factors else (),
        factor_sizes=(3, 2) if with_factors else (),
        factor_classes=classes,
        factor_values=classes.astype(float),
        nuisance={},
        split=np.zeros(n, dtype=np.uint8),
    )


def test_dataset_without_ground_truth_says_so(tmp_path):
    dataset = labelled_toy(with_factors=False)
    save_dataset(dataset, tmp_path / "d", {"dataset": "my_photos", "variant": ""})
    loaded = load_dataset(tmp_path / "d")
    assert not loaded.has_ground_truth and loaded.factor_names == () and loaded.factor_classes.shape == (12, 0)
    with pytest.raises(NoGroundTruthError, match="sample_factors needs ground-truth factors.*my_photos"):
        loaded.sample_factors(4, 0)
    with pytest.raises(NoGroundTruthError, match="observations_from_factors"):
        loaded.observations_from_factors(np.zeros((1, 0), int), 0)
    with pytest.raises(NoGroundTruthError, match="the FactorVAE score"):
        loaded.require_ground_truth("the FactorVAE score")
    assert labelled_toy().has_ground_truth


def test_lookup_observations_return_stored_images_with_the_asked_classes(tmp_path):
    save_dataset(labelled_toy(), tmp_path / "d", {"dataset": "toy", "observations": base.LOOKUP_OBSERVATIONS})
    dataset = load_dataset(tmp_path / "d")
    classes = dataset.sample_factors(50, np.random.default_rng(1))
    assert classes.shape == (50, 2)
    images = dataset.observations_from_factors(classes, np.random.default_rng(2))
    stored = np.asarray(dataset.images)
    for row, image in zip(classes, images):
        matches = np.flatnonzero((dataset.factor_classes == row).all(axis=1))
        assert any(np.array_equal(image, stored[m]) for m in matches)
    # every stored image with the classes is drawn (a = 0, b = 0: rows 0 and 6)
    drawn = dataset.observations_from_factors(np.zeros((40, 2), int), np.random.default_rng(3))
    assert {0, 6} == {int(np.flatnonzero([np.array_equal(d, s) for s in stored])[0]) for d in drawn}
    partial = GroundTruthDataset(
        images=stored[:2],
        factor_names=("a", "b"),
        factor_sizes=(3, 2),
        factor_classes=np.array([[0, 0], [1, 1]]),
        factor_values=np.zeros((2, 2)),
        nuisance={},
        split=np.zeros(2, np.uint8),
        meta={"observations": base.LOOKUP_OBSERVATIONS},
    )
    with pytest.raises(ValueError, match=r"no stored image has the factor classes \{'a': 2, 'b': 0\}"):
        partial.observations_from_factors(np.array([[2, 0]]), 0)


def test_float_series_and_extra_arrays_round_trip(tmp_path):
    n = 6
    series = np.linspace(0, 1, n * 10, dtype=np.float32).reshape(n, 1, 10)
    dataset = GroundTruthDataset(
        images=series,
        factor_names=("k",),
        factor_sizes=(n,),
        factor_classes=np.arange(n)[:, None],
        factor_values=np.arange(n, dtype=float)[:, None],
        nuisance={},
        split=np.zeros(n, np.uint8),
        extra={"helper": series * 2},
    )
    assert dataset.is_series and dataset.image_shape == (1, 10)
    save_dataset(dataset, tmp_path / "s", {"dataset": "toy_series"})
    loaded = load_dataset(tmp_path / "s")
    assert loaded.images.dtype == np.float32 and isinstance(loaded.images, np.memmap)
    np.testing.assert_array_equal(loaded.images, series)
    np.testing.assert_array_equal(loaded.extra["helper"], series * 2)
    assert loaded.meta["extra_names"] == ["helper"] and loaded.meta["image_dtype"] == "float32"
    (tmp_path / "s" / "extra.helper.npy").unlink()
    with pytest.raises(FileNotFoundError, match="extra.helper.npy"):
        load_dataset(tmp_path / "s")
    with pytest.raises(base.DatasetFormatError, match="float32 series"):
        GroundTruthDataset(
            images=series.astype(np.float64),
            factor_names=(),
            factor_sizes=(),
            factor_classes=np.zeros((n, 0), int),
            factor_values=np.zeros((n, 0)),
            nuisance={},
            split=np.zeros(n, np.uint8),
        )
