"""Unit tests of multistage.data: the ground-truth dataset format and procedural dSprites (issue 2 spec)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from multistage.data import base, dsprites
from multistage.data.base import DatasetFormatError, GroundTruthDataset, load_dataset, save_dataset, to_float
from multistage.data.dsprites import FACTOR_NAMES, FACTOR_SIZES, make_dsprites, render_masks

ROW_CENTRES = np.arange(64) + 0.5


def classes_at_all_positions(shape: int, scale: int, orientation: int) -> np.ndarray:
    """(1024, 5) classes of one sprite at every (posX, posY)."""
    pos_x, pos_y = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    n = pos_x.size
    return np.stack(
        [np.full(n, shape), np.full(n, scale), np.full(n, orientation), pos_x.ravel(), pos_y.ravel()], axis=1
    )


def bounding_box_sizes(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(width, height) in pixels of the on-pixels of each mask (n, 64, 64)."""
    columns, rows = masks.any(axis=1), masks.any(axis=2)
    width = 64 - np.argmax(columns, axis=1) - np.argmax(columns[:, ::-1], axis=1)
    height = 64 - np.argmax(rows, axis=1) - np.argmax(rows[:, ::-1], axis=1)
    return width, height


def test_grid_size_order_and_factor_values():
    assert dsprites.GRID_SIZE == 737_280 == int(np.prod(FACTOR_SIZES))
    assert FACTOR_NAMES == ("shape", "scale", "orientation", "posX", "posY")
    values = dsprites.factor_values()
    assert [len(values[name]) for name in FACTOR_NAMES] == list(FACTOR_SIZES)
    assert values["orientation"][0] == 0.0 and values["orientation"][-1] == pytest.approx(2 * np.pi)
    assert values["scale"][0] == 0.5 and values["scale"][-1] == 1.0
    for name in ("posX", "posY"):
        assert values[name][0] == 0.0 and values[name][-1] == 1.0
    # posY fastest, shape slowest, as in the published file
    assert dsprites.classes_from_grid_indices(np.array([1, 32, 1024]))[:, 3:].tolist() == [[0, 1], [1, 0], [0, 0]]
    assert dsprites.classes_from_grid_indices(np.array([737_279])).tolist() == [[2, 5, 39, 31, 31]]
    indices = np.array([0, 5, 123_456, 737_279])
    assert np.array_equal(dsprites.grid_indices(dsprites.classes_from_grid_indices(indices)), indices)


def test_square_side_is_19_2_pixels_at_every_sub_pixel_position():
    masks = render_masks(classes_at_all_positions(shape=0, scale=5, orientation=0)).astype(bool)
    counts = masks.sum(axis=(1, 2))
    width, height = bounding_box_sizes(masks)
    assert np.all((width >= 19) & (width <= 20) & (height >= 19) & (height <= 20))
    assert np.array_equal(counts, width * height)  # axis-aligned: a filled rectangle
    assert {19 * 19, 19 * 20, 20 * 20} <= set(counts.tolist())


def test_ellipse_major_axis_horizontal_at_zero_and_vertical_at_half_pi():
    for orientation, wider in ((0, True), (10, False), (39, True)):  # 0, ~pi/2, 2 pi
        masks = render_masks(classes_at_all_positions(shape=1, scale=5, orientation=orientation)[::37])
        width, height = bounding_box_sizes(masks)
        assert np.all((width > height) == wider), orientation
    width, height = bounding_box_sizes(render_masks(np.array([[1, 5, 0, 15, 15]])))
    assert (width[0], height[0]) in {(25, 15), (26, 14), (26, 15), (25, 14)}  # semi-axes 12.75 x 7.25


def test_rotation_is_counter_clockwise_on_screen():
    # orientation 5 ~ 46 degrees: the major axis runs from lower left to upper right on screen, so column
    # grows as row (down) shrinks.
    masks = render_masks(np.array([[1, 5, 5, 15, 15], [1, 5, 15, 15, 15]]))
    for mask, sign in zip(masks, (-1, 1)):  # orientation 15 ~ 138 degrees: upper left to lower right
        rows, columns = np.nonzero(mask)
        assert sign * np.corrcoef(rows, columns)[0, 1] > 0.4


def test_heart_size_and_lobes_up():
    masks = render_masks(classes_at_all_positions(shape=2, scale=5, orientation=0)[::29]).astype(bool)
    width, height = bounding_box_sizes(masks)
    assert np.all((width >= 19) & (width <= 21) & (height >= 16) & (height <= 18))
    for mask in masks:
        rows = np.flatnonzero(mask.any(axis=1))
        middle = (rows[0] + rows[-1] + 1) / 2
        upper = mask[: int(np.floor(middle))].sum()
        lower = mask[int(np.ceil(middle)) :].sum()
        assert upper > 1.2 * lower  # the two lobes are up, the point down
        # the widest row is in the upper half, the bottom row is narrow (the point)
        assert np.argmax(mask.sum(axis=1)) < middle and mask[rows[-1]].sum() <= 5


def heart_centroid_height() -> float:
    """How far above its position point the heart's centre of mass sits, px at scale 1 (a dense-grid quadrature of
    the module's inside test)."""
    u, v = np.meshgrid(np.linspace(-12, 12, 1201), np.linspace(-12, 12, 1201))
    inside = dsprites._inside_heart(u.copy(), v - dsprites.HEART_LOBE_HEIGHT)
    return float(v[inside].mean())


def test_heart_sides_are_tangent_to_the_lobes():
    # the side from the point (0, -depth) with slope k: distance from a lobe's centre equals the lobe's radius
    k, depth = dsprites._HEART_TANGENT_SLOPE, dsprites.HEART_TIP_DEPTH
    offset, radius = dsprites.HEART_LOBE_OFFSET, dsprites.HEART_LOBE_RADIUS
    distance = abs(offset - k * depth) / np.hypot(1.0, k)  # line u - k (v + depth) = 0 against (offset, 0)
    assert distance == pytest.approx(radius, abs=1e-9)
    # and it touches the lobe at v = _HEART_TANGENT_V, on the circle
    v = dsprites._HEART_TANGENT_V
    assert ((v + depth) * k - offset) ** 2 + v**2 == pytest.approx(radius**2, abs=1e-9)
    assert 0.5 < heart_centroid_height() < 3.0  # the centre of mass is above the position point, as in the original


def test_centre_of_mass_is_the_position_point_and_rendering_is_deterministic():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, FACTOR_SIZES, size=(600, 5))
    masks = render_masks(classes).astype(np.float64)
    mass = masks.sum(axis=(1, 2))
    assert mass.min() > 40
    centre_x = (masks.sum(axis=1) * ROW_CENTRES).sum(axis=1) / mass
    centre_y = (masks.sum(axis=2) * ROW_CENTRES).sum(axis=1) / mass
    values = dsprites.values_from_classes(classes)
    # squares and ellipses: at the position; hearts: heart_centroid_height() * scale above it, turned with the sprite
    lift = np.where(classes[:, 0] == 2, heart_centroid_height() * values[:, 1], 0.0)
    np.testing.assert_allclose(centre_x, 16 + 32 * values[:, 3] - lift * np.sin(values[:, 2]), atol=0.5)
    np.testing.assert_allclose(centre_y, 16 + 32 * values[:, 4] - lift * np.cos(values[:, 2]), atol=0.5)
    # same factors, same image, whatever else is in the batch
    again = render_masks(classes[::-1])[::-1]
    assert np.array_equal(again, masks.astype(np.uint8))
    assert np.array_equal(render_masks(classes[7:8])[0], again[7])
    assert set(np.unique(again).tolist()) == {0, 1}


def test_make_dsprites_subset_binary_is_deterministic(tmp_path):
    calls = []
    first = make_dsprites(
        tmp_path / "a",
        n_images=300,
        seed=4,
        num_workers=1,
        chunk_size=64,
        progress=lambda done, total: calls.append((done, total)),
    )
    second = make_dsprites(tmp_path / "b", n_images=300, seed=4, num_workers=2, chunk_size=100)
    other = make_dsprites(tmp_path / "c", n_images=300, seed=5, num_workers=1)
    assert calls[-1] == (300, 300) and len(calls) == 5
    assert isinstance(first.images, np.memmap) and first.images.shape == (300, 1, 64, 64)
    assert first.images.dtype == np.uint8 and set(np.unique(first.images).tolist()) == {0, 255}
    grid = dsprites.grid_indices(first.factor_classes)
    assert np.all(np.diff(grid) > 0)  # sorted, without replacement
    assert np.array_equal(first.factor_classes, second.factor_classes)
    assert np.array_equal(first.split, second.split)
    assert np.array_equal(first.images, second.images)
    assert not np.array_equal(first.factor_classes, other.factor_classes)
    assert len(first.test_indices) == 30 and len(first.train_indices) == 270
    assert np.array_equal(np.asarray(first.images[:, 0]) // 255, render_masks(first.factor_classes))
    np.testing.assert_allclose(first.factor_values, dsprites.values_from_classes(first.factor_classes))
    assert first.nuisance == {} and first.meta["variant"] == "binary"
    assert not list((tmp_path / "a").glob(".*tmp*"))  # no temporary files left behind
    new = first.observations_from_factors(first.factor_classes[:5], np.random.default_rng(0))
    assert np.array_equal(new, np.asarray(first.images[:5]))


def test_textured_variant(tmp_path):
    dataset = make_dsprites(tmp_path / "t", n_images=64, seed=1, variant="textured", num_workers=1)
    assert dataset.images.shape == (64, 3, 64, 64)
    assert sorted(dataset.nuisance) == sorted(dsprites.NUISANCE_NAMES)
    for name in ("colour_r", "colour_g", "colour_b"):
        assert np.all((dataset.nuisance[name] >= 0.5) & (dataset.nuisance[name] <= 1.0))
    assert np.all((dataset.nuisance["grating_frequency"] >= 0.08) & (dataset.nuisance["grating_frequency"] <= 0.2))
    assert np.all((dataset.nuisance["grating_angle"] >= 0) & (dataset.nuisance["grating_angle"] <= np.pi))
    masks = render_masks(dataset.factor_classes).astype(bool)[:, None].repeat(3, axis=1)
    images = np.asarray(dataset.images)
    assert np.all(images[~masks] == 0)  # black background
    assert images[masks].min() >= np.floor(0.25 * 255)  # colour >= 0.5, grating intensity >= 1 - contrast
    # the colour scales each channel: the brightest pixel of a channel is at most 255 * colour
    brightest = images.reshape(64, 3, -1).max(axis=2)
    colour = np.stack([dataset.nuisance[f"colour_{c}"] for c in "rgb"], axis=1)
    assert np.all(brightest <= np.ceil(255 * colour))
    # the grating varies inside a sprite: the factors do not describe the whole image
    assert np.all(images.reshape(64, 3, -1).std(axis=2) > 3)

    # nuisance is a function of (seed, grid cell): the same cell gets the same draws in any subset
    grid = dsprites.grid_indices(dataset.factor_classes)
    options = dsprites.TextureOptions()
    alone = dsprites.grid_nuisance(grid[5:6], seed=1, options=options)
    for name, values in dsprites.grid_nuisance(grid, seed=1, options=options).items():
        np.testing.assert_array_equal(values, dataset.nuisance[name])
        assert alone[name][0] == values[5]
    other_seed = dsprites.grid_nuisance(grid, seed=2, options=options)
    assert not np.array_equal(other_seed["colour_r"], dataset.nuisance["colour_r"])

    fresh = dataset.observations_from_factors(dataset.factor_classes[:8], np.random.default_rng(0))
    assert fresh.shape == (8, 3, 64, 64) and fresh.dtype == np.uint8
    assert np.all(fresh[~masks[:8]] == 0) and fresh[masks[:8]].min() > 0
    assert not np.array_equal(fresh, images[:8])
    repeat = dataset.observations_from_factors(dataset.factor_classes[:8], np.random.default_rng(0))
    assert np.array_equal(fresh, repeat)


def test_dsprites_at_32_pixels_is_the_resampled_64_pixel_rendering(tmp_path):
    """image_size=32 (the resolution lever of issue 7): each image is the antialiased 32 x 32 resampling of the
    same cell's 64 x 64 image, for stored and freshly rendered observations alike."""
    from multistage.data.sources import fit_images

    full = make_dsprites(tmp_path / "64", n_images=40, seed=3, variant="textured", num_workers=1)
    small = make_dsprites(
        tmp_path / "32", n_images=40, seed=3, variant="textured", num_workers=2, chunk_size=16, image_size=32
    )
    assert small.images.shape == (40, 3, 32, 32) and small.images.dtype == np.uint8
    assert np.array_equal(small.factor_classes, full.factor_classes)
    assert np.array_equal(np.asarray(small.images), fit_images(np.asarray(full.images), 32, "resize"))
    # a 2 x 2 box average of the 64 x 64 image is within a few grey levels (the filter is a wider triangle)
    box = np.asarray(full.images, dtype=np.float32).reshape(40, 3, 32, 2, 32, 2).mean(axis=(3, 5))
    assert np.abs(box - small.images).mean() < 12
    loaded = load_dataset(tmp_path / "32")
    assert loaded.meta["params"]["image_size"] == 32 and "image_size" not in full.meta["params"]
    fresh = loaded.observations_from_factors(loaded.factor_classes[:6], np.random.default_rng(0))
    assert fresh.shape == (6, 3, 32, 32)
    again = full.observations_from_factors(full.factor_classes[:6], np.random.default_rng(0))
    assert np.array_equal(fresh, fit_images(again, 32, "resize"))
    with pytest.raises(ValueError, match=r"image_size must be one of \(32, 64\), got 48"):
        make_dsprites(tmp_path / "48", n_images=4, image_size=48)
    assert not (tmp_path / "48").exists()


def test_textured_background_noise_and_option_validation(tmp_path):
    dataset = make_dsprites(
        tmp_path / "n",
        n_images=16,
        seed=0,
        variant="textured",
        background_noise=0.1,
        grating_contrast=0.0,
        num_workers=1,
    )
    masks = render_masks(dataset.factor_classes).astype(bool)[:, None].repeat(3, axis=1)
    background = np.asarray(dataset.images)[~masks]
    assert background.max() <= round(0.1 * 255) and background.mean() > 5
    assert dataset.meta["params"]["texture"]["background_noise"] == 0.1
    fresh = dataset.observations_from_factors(dataset.factor_classes, 3)
    assert 0 < fresh[~masks].max() <= round(0.1 * 255)

    for option, value in (
        ("grating_contrast", 1.5),
        ("colour_min", -0.1),
        ("grating_frequency_max", 0.9),
        ("background_noise", 2.0),
    ):
        with pytest.raises(ValueError, match=option):
            make_dsprites(tmp_path / "bad", n_images=4, variant="textured", **{option: value})
    with pytest.raises(ValueError, match="colour_max"):
        dsprites.TextureOptions(colour_min=0.8, colour_max=0.6)
    with pytest.raises(ValueError, match="variant"):
        make_dsprites(tmp_path / "bad", n_images=4, variant="coloured")
    with pytest.raises(ValueError, match="n_images"):
        make_dsprites(tmp_path / "bad", n_images=0)
    with pytest.raises(ValueError, match="test_fraction"):
        make_dsprites(tmp_path / "bad", n_images=4, test_fraction=1.0)
    assert not (tmp_path / "bad").exists()


def small_dataset() -> GroundTruthDataset:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, (2, 3), size=(10, 2))
    return GroundTruthDataset(
        images=rng.integers(0, 256, size=(10, 2, 8, 8), dtype=np.uint8),
        factor_names=("colour", "size"),
        factor_sizes=(2, 3),
        factor_classes=classes,
        factor_values=classes * 0.5,
        nuisance={"noise": rng.random(10)},
        split=(np.arange(10) % 4 == 0).astype(np.uint8),
    )


def test_save_load_round_trip(tmp_path):
    dataset = small_dataset()
    save_dataset(dataset, tmp_path / "d", {"dataset": "toy", "variant": "plain", "params": {"seed": 0}})
    loaded = load_dataset(tmp_path / "d")
    assert isinstance(loaded.images, np.memmap) and not loaded.images.flags.writeable
    assert np.array_equal(loaded.images, dataset.images)
    assert loaded.factor_names == dataset.factor_names and loaded.factor_sizes == dataset.factor_sizes
    assert np.array_equal(loaded.factor_classes, dataset.factor_classes)
    assert loaded.factor_classes.dtype == np.int64 and loaded.factor_values.dtype == np.float64
    np.testing.assert_array_equal(loaded.factor_values, dataset.factor_values)
    np.testing.assert_array_equal(loaded.nuisance["noise"], dataset.nuisance["noise"])
    assert np.array_equal(loaded.split, dataset.split) and loaded.split.dtype == np.uint8
    assert loaded.train_indices.tolist() == [1, 2, 3, 5, 6, 7, 9] and loaded.test_indices.tolist() == [0, 4, 8]
    assert loaded.meta["dataset"] == "toy" and loaded.meta["params"] == {"seed": 0}
    assert loaded.meta["image_shape"] == [2, 8, 8]
    sampled = loaded.sample_factors(500, np.random.default_rng(1))
    assert sampled.shape == (500, 2) and sampled.dtype == np.int64
    assert set(sampled[:, 0].tolist()) == {0, 1} and set(sampled[:, 1].tolist()) == {0, 1, 2}
    with pytest.raises(NotImplementedError, match="no renderer"):
        loaded.observations_from_factors(sampled[:2], 0)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["factors.parquet", "images.npy", "meta.json"]


def test_load_corrupted_folder_names_the_file(tmp_path):
    meta = {"dataset": "toy", "variant": "plain", "params": {}}
    folder = tmp_path / "d"

    save_dataset(small_dataset(), folder, meta)
    (folder / "factors.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="factors.parquet"):
        load_dataset(folder)

    save_dataset(small_dataset(), folder, meta)
    np.save(folder / "images.npy", np.zeros((9, 2, 8, 8), dtype=np.uint8))  # one row short
    with pytest.raises(DatasetFormatError, match="images.npy.*9 images"):
        load_dataset(folder)
    np.save(folder / "images.npy", np.zeros((10, 1, 8, 8), dtype=np.uint8))  # wrong shape
    with pytest.raises(DatasetFormatError, match="images.npy"):
        load_dataset(folder)
    (folder / "images.npy").write_bytes(b"not an array")
    with pytest.raises(DatasetFormatError, match="images.npy"):
        load_dataset(folder)

    save_dataset(small_dataset(), folder, meta)
    shorter = small_dataset()
    base.write_factors(
        folder / "factors.parquet",
        shorter.factor_names,
        shorter.factor_classes[:7],
        shorter.factor_values[:7],
        shorter.split[:7],
        {},
    )
    with pytest.raises(DatasetFormatError, match="factors.parquet.*7 rows"):
        load_dataset(folder)

    save_dataset(small_dataset(), folder, meta)
    (folder / "meta.json").write_text("{truncated")
    with pytest.raises(DatasetFormatError, match="meta.json"):
        load_dataset(folder)
    (folder / "meta.json").write_text(json.dumps({"dataset": "toy"}))
    with pytest.raises(DatasetFormatError, match="meta.json"):
        load_dataset(folder)

    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")


def test_to_float():
    batch = np.array([[0, 128, 255]], dtype=np.uint8)
    result = to_float(batch)
    assert result.dtype == torch.float32
    assert result[0].tolist() == pytest.approx([0.0, 128 / 255, 1.0]) and result.max() == 1.0
    assert torch.equal(to_float(torch.from_numpy(batch)), result)
    assert to_float(np.array([True, False])).tolist() == [1.0, 0.0]
    with pytest.raises(TypeError):
        to_float(np.array([1, 2], dtype=np.int32))
