"""Unit tests of multistage.metrics on known answers and against independent computations (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multistage.metrics.conditioning import conditioning_terms, normalized_code_mutual_information
from multistage.metrics.frechet import (
    FactorClassifier,
    extract_features,
    frechet_distance,
    frechet_distance_from_statistics,
    train_factor_classifier,
)
from multistage.metrics.mig import discretize, mig_key, mutual_information_gap, mutual_information_matrix
from multistage.metrics.reconstruction import (
    ReconstructionErrorAccumulator,
    reconstruction_errors,
    reconstruction_errors_from_batches,
)

NUM_SAMPLES = 5000
FACTOR_NAMES = ("shape", "scale", "position")
FACTOR_SIZES = (3, 6, 10)


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([rng.integers(0, size, NUM_SAMPLES) for size in FACTOR_SIZES], axis=1)


def plugin_mutual_information(a: np.ndarray, b: np.ndarray) -> float:
    """Independent plug-in MI (nats) by counting the joint histogram with numpy (no scikit-learn)."""
    _, a_index = np.unique(a, return_inverse=True)
    _, b_index = np.unique(b, return_inverse=True)
    joint = np.zeros((a_index.max() + 1, b_index.max() + 1))
    np.add.at(joint, (a_index, b_index), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float(np.sum(joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])))


# ---------------------------------------------------------------------------------------------------- MIG


def test_mig_perfect_representation_is_close_to_one(factors):
    # One latent per factor equal to its class index (<= 20 classes, so each class lands in its own bin and
    # I = H exactly), plus noise latents whose plug-in MI bias is ~ 19 * 9 / (2 * 5000) = 0.017 nats, i.e.
    # < 0.01 after dividing by H >= log 3. Hence MIG >= 1 - 0.01 - sampling noise > 0.97.
    rng = np.random.default_rng(1)
    codes = np.concatenate([factors.astype(float), rng.normal(size=(NUM_SAMPLES, 3))], axis=1)
    result = mutual_information_gap(codes, factors, FACTOR_NAMES)
    assert result["mig.histogram20"] > 0.97
    for name in FACTOR_NAMES:
        assert result[f"mig.histogram20.{name}"] > 0.97


def test_mig_rotated_representation_is_lower(factors):
    rng = np.random.default_rng(2)
    noise = rng.normal(size=(NUM_SAMPLES, 3))
    scale, position = factors[:, 1] / 5.0, factors[:, 2] / 9.0
    rotated = np.stack([factors[:, 0], (scale + position) / np.sqrt(2), (scale - position) / np.sqrt(2)], 1)
    perfect = mutual_information_gap(np.concatenate([factors.astype(float), noise], 1), factors, FACTOR_NAMES)
    mixed = mutual_information_gap(np.concatenate([rotated, noise], 1), factors, FACTOR_NAMES)
    assert mixed["mig.histogram20.scale"] < 0.2 and mixed["mig.histogram20.position"] < 0.2
    assert mixed["mig.histogram20"] < perfect["mig.histogram20"] - 0.5


def test_mig_pure_noise_is_near_zero(factors):
    codes = np.random.default_rng(3).normal(size=(NUM_SAMPLES, 6))
    assert mutual_information_gap(codes, factors, FACTOR_NAMES)["mig.histogram20"] < 0.05


def test_mig_duplicated_latent_gives_zero_gap(factors):
    rng = np.random.default_rng(4)
    codes = np.concatenate(
        [factors.astype(float), factors[:, 1:2].astype(float), rng.normal(size=(NUM_SAMPLES, 2))], axis=1
    )
    result = mutual_information_gap(codes, factors, FACTOR_NAMES)
    assert result["mig.histogram20.scale"] == 0.0
    assert result["mig.histogram20.shape"] > 0.97


def test_mig_exclude_factors_and_keys(factors):
    rng = np.random.default_rng(5)
    codes = np.concatenate([rng.normal(size=(NUM_SAMPLES, 1)), factors[:, 1:].astype(float)], axis=1)
    result = mutual_information_gap(codes, factors, FACTOR_NAMES, bins=10, exclude_factors=("shape",))
    assert mig_key(10, ("shape",)) == "mig.histogram10.no_shape"
    assert set(result) == {
        "mig.histogram10",
        "mig.histogram10.shape",
        "mig.histogram10.scale",
        "mig.histogram10.position",
        "mig.histogram10.no_shape",
    }
    per_factor = [result[f"mig.histogram10.{name}"] for name in FACTOR_NAMES]
    assert result["mig.histogram10"] == pytest.approx(np.mean(per_factor))
    assert result["mig.histogram10.no_shape"] == pytest.approx(np.mean(per_factor[1:]))
    with pytest.raises(ValueError, match="not factors"):
        mutual_information_gap(codes, factors, FACTOR_NAMES, exclude_factors=("colour",))


def test_mutual_information_matrix_matches_numpy_counting(factors):
    rng = np.random.default_rng(6)
    codes = np.concatenate([factors + rng.normal(scale=0.7, size=factors.shape), rng.normal(size=(NUM_SAMPLES, 2))], 1)
    discrete = discretize(codes, 20)
    assert discrete.min() >= 1 and discrete.max() <= 20
    matrix = mutual_information_matrix(discrete, factors)
    assert matrix.shape == (codes.shape[1], len(FACTOR_SIZES))
    for j in range(codes.shape[1]):
        for k in range(len(FACTOR_SIZES)):
            assert matrix[j, k] == pytest.approx(plugin_mutual_information(discrete[:, j], factors[:, k]), abs=1e-9)


def test_discretize_matches_histogram_bins_and_handles_constant_latents(factors):
    rng = np.random.default_rng(7)
    column = rng.uniform(-2, 3, size=1000)
    low, high = column.min(), column.max()  # bins span the column's own range; the maximum joins the last bin
    expected = np.clip(np.floor((column - low) / (high - low) * 20).astype(int) + 1, 1, 20)
    np.testing.assert_array_equal(discretize(column[:, None], 20)[:, 0], expected)
    codes = np.concatenate([np.full((NUM_SAMPLES, 1), 0.3), factors.astype(float)], axis=1)
    result = mutual_information_gap(codes, factors, FACTOR_NAMES)
    assert np.isfinite(result["mig.histogram20"]) and result["mig.histogram20"] > 0.97
    assert np.all(mutual_information_matrix(discretize(codes[:, :1], 20), factors) == 0.0)
    with pytest.raises(ValueError, match="NaN"):
        discretize(np.array([[0.0], [np.nan]]))


# ---------------------------------------------------------------------------------------------- conditioning


def test_conditioning_known_values_and_ordering():
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(NUM_SAMPLES, 10))

    def noisy(scale: float) -> np.ndarray:
        return reference + scale * rng.normal(size=reference.shape)

    assert normalized_code_mutual_information(reference, reference) == pytest.approx(1.0, abs=1e-12)
    independent = rng.normal(size=reference.shape)
    assert normalized_code_mutual_information(reference, independent) < 0.05
    values = [normalized_code_mutual_information(reference, noisy(scale)) for scale in (0.05, 0.2, 0.5, 1.0, 2.0)]
    assert all(0.05 < value < 1.0 for value in values)
    assert all(a > b for a, b in zip(values, values[1:]))

    terms = conditioning_terms(reference, noisy(0.3), noisy(0.1), noisy(1.0), independent)
    assert set(terms) == {f"conditioning.M{i}" for i in (1, 2, 3, 4)}
    assert terms["conditioning.M2"] > terms["conditioning.M1"] > terms["conditioning.M3"] > terms["conditioning.M4"]
    assert terms["conditioning.M4"] < 0.05


def test_conditioning_skips_constant_reference_dimensions():
    rng = np.random.default_rng(9)
    reference = np.concatenate([rng.normal(size=(500, 2)), np.zeros((500, 1))], axis=1)
    assert normalized_code_mutual_information(reference, reference) == pytest.approx(1.0)


# -------------------------------------------------------------------------------------------------- Fréchet


def test_frechet_identity_shift_and_symmetry():
    rng = np.random.default_rng(10)
    features_a = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    features_b = rng.normal(size=(1500, 6)) * 2.0 + 0.5
    assert frechet_distance(features_a, features_a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0, 0.25])
    assert frechet_distance(features_a, features_a + shift) == pytest.approx(shift @ shift, rel=1e-7)
    assert frechet_distance(features_a, features_b) == pytest.approx(frechet_distance(features_b, features_a), rel=1e-8)


def test_frechet_matches_closed_forms():
    rng = np.random.default_rng(11)
    # two diagonal Gaussians: ||mu_a - mu_b||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mean_a, mean_b = rng.normal(size=5), rng.normal(size=5)
    variance_a, variance_b = rng.uniform(0.1, 3.0, size=5), rng.uniform(0.1, 3.0, size=5)
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(variance_a) - np.sqrt(variance_b)) ** 2)
    actual = frechet_distance_from_statistics(mean_a, np.diag(variance_a), mean_b, np.diag(variance_b))
    assert actual == pytest.approx(expected, rel=1e-10)
    # one-dimensional features: (m_a - m_b)^2 + (s_a - s_b)^2 with sample mean and unbiased std
    a, b = rng.normal(1.0, 2.0, size=(300, 1)), rng.normal(-0.5, 0.5, size=(400, 1))
    expected_1d = (a.mean() - b.mean()) ** 2 + (a.std(ddof=1) - b.std(ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected_1d, rel=1e-9)


def test_frechet_singular_covariance_does_not_crash():
    rng = np.random.default_rng(12)
    features_a, features_b = rng.normal(size=(10, 20)), rng.normal(size=(12, 20)) + 1.0
    distance = frechet_distance(features_a, features_b)
    assert np.isfinite(distance) and distance > 0


def quadrant_images(num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """16x16 uint8 images with a bright 5x5 square in one of 4 quadrants (factor 0) and a dim or bright
    background (factor 1)."""
    rng = np.random.default_rng(seed)
    quadrant = rng.integers(0, 4, num_images)
    background = rng.integers(0, 2, num_images)
    images = np.zeros((num_images, 1, 16, 16), dtype=np.uint8)
    images += (background * 60).astype(np.uint8)[:, None, None, None]
    for i in range(num_images):
        top = 8 * (quadrant[i] // 2) + rng.integers(0, 4)
        left = 8 * (quadrant[i] % 2) + rng.integers(0, 4)
        images[i, 0, top : top + 5, left : left + 5] = 255
    return images, np.stack([quadrant, background], axis=1)


def test_factor_classifier_learns_easy_factors_and_features():
    torch.set_num_threads(1)
    images, classes = quadrant_images(600, seed=13)
    state_before = torch.random.get_rng_state()
    steps_seen = []
    classifier, accuracy = train_factor_classifier(
        images,
        classes,
        (4, 2),
        steps=150,
        batch_size=32,
        seed=0,
        device="cpu",
        progress=lambda step, logs: steps_seen.append(step),
        factor_names=("quadrant", "background"),
    )
    assert torch.equal(state_before, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert steps_seen[-1] == 150
    assert set(accuracy) == {"quadrant", "background", "mean"}
    assert accuracy["quadrant"] > 0.9 and accuracy["background"] > 0.9
    assert not classifier.training

    features_uint8 = extract_features(classifier, images[:50], batch_size=16)
    features_float = extract_features(classifier, images[:50].astype(np.float64) / 255.0, batch_size=7)
    features_tensor = extract_features(classifier, torch.from_numpy(images[:50]).float() / 255.0, batch_size=50)
    assert features_uint8.shape == (50, 128) and features_uint8.dtype == np.float64
    # float32 convolutions sum in a batch-size-dependent order (oneDNN picks kernels by shape): ~6e-6 apart
    np.testing.assert_allclose(features_float, features_uint8, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(features_tensor, features_uint8, rtol=1e-4, atol=1e-4)


def test_factor_classifier_is_deterministic_from_seed():
    torch.set_num_threads(1)
    images, classes = quadrant_images(100, seed=14)
    first, accuracy_first = train_factor_classifier(images, classes, (4, 2), steps=5, batch_size=8, seed=3)
    second, accuracy_second = train_factor_classifier(images, classes, (4, 2), steps=5, batch_size=8, seed=3)
    assert accuracy_first == accuracy_second
    for (name, tensor_a), tensor_b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(tensor_a, tensor_b), name
    rebuilt = FactorClassifier(**first.config)
    rebuilt.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(extract_features(rebuilt, images), extract_features(first, images))


# -------------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_known_values():
    rng = np.random.default_rng(15)
    binary = (rng.uniform(size=(4, 1, 8, 8)) > 0.5).astype(np.float64)
    exact = reconstruction_errors(binary, binary)
    assert exact["l1"] == 0.0 and exact["l2"] == 0.0
    assert exact["bce"] == pytest.approx(-np.log(1 - 1e-6), rel=1e-6)

    x, x_hat = np.full((3, 1, 4, 4), 0.25), np.full((3, 1, 4, 4), 0.75)
    offset = reconstruction_errors(x, x_hat)
    assert offset["l1"] == pytest.approx(0.5)
    assert offset["l2"] == pytest.approx(0.25)
    assert offset["bce"] == pytest.approx(-(0.25 * np.log(0.75) + 0.75 * np.log(0.25)))
    torch_offset = reconstruction_errors(torch.from_numpy(x).float(), torch.from_numpy(x_hat).float())
    for key in offset:
        assert torch_offset[key] == pytest.approx(offset[key], rel=1e-6)


def test_reconstruction_streaming_equals_one_shot():
    rng = np.random.default_rng(16)
    x = (rng.uniform(size=(20, 1, 8, 8)) > 0.5).astype(np.uint8) * 255
    x_hat = rng.uniform(size=x.shape)
    one_shot = reconstruction_errors(x, x_hat)
    streamed = reconstruction_errors_from_batches((x[i : i + 6], x_hat[i : i + 6]) for i in range(0, 20, 6))
    accumulator = ReconstructionErrorAccumulator()
    for i in range(0, 20, 7):
        accumulator.update(torch.from_numpy(x[i : i + 7]), torch.from_numpy(x_hat[i : i + 7]))
    for key in one_shot:
        assert streamed[key] == pytest.approx(one_shot[key], rel=1e-12)
        assert accumulator.result()[key] == pytest.approx(one_shot[key], rel=1e-12)
    assert one_shot["l1"] == pytest.approx(np.mean(np.abs(x / 255.0 - x_hat)), rel=1e-12)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_errors(x, x_hat[:3])


def test_mig_single_latent_and_constant_factor():
    classes = np.stack([np.arange(100) % 4, np.zeros(100, dtype=int)], axis=1)
    result = mutual_information_gap(classes[:, :1].astype(float), classes, ("varying", "constant"))
    assert result["mig.histogram20.varying"] == pytest.approx(1.0)  # second-best MI is 0 with one latent
    assert np.isnan(result["mig.histogram20.constant"])  # H = 0: undefined, left out of the mean
    assert result["mig.histogram20"] == pytest.approx(1.0)
