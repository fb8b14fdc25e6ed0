"""JointVAE's discrete code collapses when its capacity C_c rises faster than the decoder learns to use c: the
capacity term is then met by making q(c|x) confidently pick the same value for every x (KL = log K, no
information). On four clearly separated clusters, a capacity squeezed into the first steps collapses the code and
the collapse check says so; the same steps with the capacity rising slowly (as the paper's 25,000 iterations do on
MNIST) give a code whose KL is all information about x, and that finds the clusters."""

from __future__ import annotations

import math

import numpy as np
import torch

from multistage.metrics.clustering import collapse_message, discrete_information, majority_accuracy
from multistage.models import build


def trained_code(capacity_steps: int, steps: int = 250, clusters: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    prototypes = rng.random((clusters, 1, 8, 8)) < 0.5
    labels = rng.integers(0, clusters, 2000)
    images = torch.tensor(prototypes[labels] ^ (rng.random((2000, 1, 8, 8)) < 0.05), dtype=torch.float32)
    model = build(
        "stage_one",
        "jointvae",
        image_channels=1,
        image_size=8,
        latent_dim=2,
        discrete_dims=(clusters,),
        architecture="mlp",
        capacity_z_max=5.0,
        capacity_c_max=5.0,
        capacity_z_steps=capacity_steps,
        capacity_c_steps=capacity_steps,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    for step in range(steps):
        loss, _ = model.objective(images[rng.integers(0, 2000, 64)], step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        alpha = model.discrete_probabilities(images)[0].numpy()
    return discrete_information(alpha), majority_accuracy(alpha.argmax(axis=1), labels)


def test_a_capacity_that_outruns_the_decoder_collapses_the_code_and_is_flagged():
    information, accuracy = trained_code(capacity_steps=60)
    assert information["kl"] > 0.9 * math.log(4)  # the capacity term is met...
    assert information["mutual_information"] < 0.05 and information["values_used"] == 1  # ...with no information
    assert collapse_message(information) is not None and accuracy < 0.35


def test_a_slowly_rising_capacity_carries_information_and_finds_the_clusters():
    information, accuracy = trained_code(capacity_steps=2500)
    assert information["mutual_information"] > 0.8 * information["kl"] > 0.3
    assert collapse_message(information) is None and information["values_used"] >= 3 and accuracy > 0.6
