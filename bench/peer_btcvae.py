"""The peer's beta-TCVAE training step, rebuilt here for timing: the side-by-side ``peer`` variant of
``bench.train_speed``.

What is measured is the step of YannDubs/disentangling-vae (https://github.com/YannDubs/disentangling-vae:
``disvae/models/encoders.py`` EncoderBurgess, ``decoders.py`` DecoderBurgess, ``losses.py`` BtcvaeLoss,
``disvae/utils/math.py``), with its defaults for beta-TCVAE: latent dimension 10, alpha = 1, beta = 6, gamma = 1,
Bernoulli reconstruction, minibatch stratified sampling, Adam at lr 5e-4, contiguous NCHW float32. This module is
not that code: it was written here from reading it, to time the same arithmetic on the same batches as the
project's own step, and it keeps the peer's choices (good or bad) wherever they change what is computed.

- Networks: the architecture of Burgess et al. 2018, "Understanding disentangling in beta-VAE" (appendix A.1), as
  the peer builds it: convolutions of 32 channels, kernel 4, stride 2, padding 1 (three, plus a fourth for 64 px
  inputs), then linear 32*4*4 -> 256 -> 256 -> 2 * latent, ReLU between layers; the decoder mirrors it (linear
  latent -> 256 -> 256 -> 32*4*4, transposed convolutions) and ends in a sigmoid. The encoder's last layer is read
  as interleaved (mu, logvar) pairs, as the peer reads it; weights get Kaiming-uniform (ReLU gain) initialisation,
  biases PyTorch's default, as in the peer.
- Objective: Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs" (sec. 3 and appendix B.2, minibatch
  stratified sampling), computed as the peer computes it: the (B, B, D) matrix of log q(z_i,d | x_j), an importance
  weight matrix built afresh each step on the host and moved to the device, logsumexp over the batch for log q(z)
  and for each log q(z_d), and loss = BCE summed over pixels / B + alpha MI + beta TC + w(step) gamma
  dimension-wise KL, where w ramps linearly to 1 over ``steps_anneal`` steps (the peer's ``reg_anneal``, 10,000 in
  its hyperparam.ini).

Two of the peer's choices are kept although the appendix reads otherwise. Its weight matrix is written through a
flat stride of B (not B + 1), so 1/N and the stratified weight land in columns 0 and 1 of every row instead of on
the diagonal and next to it, plus one stratified weight at row B - 2, column 0 (the peer's issue #58; the authors'
rtqichen/beta-tcvae has the same lines, which its pull request #1 points out). And the log-weights are added to
each of the D dimensions of the (B, B, D) matrix before the sum over dimensions, so log q(z) carries D log w_ij
where the estimator has log w_ij once (the peer's issue #60); log q(z_d) is as in the appendix. Neither changes the
cost of the step, which is what is measured; the value of the loss is the peer's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN_CHANNELS = 32
KERNEL = 4
HIDDEN_UNITS = 256
LATENT_DIM = 10
SIDES = (32, 64)


def _kaiming(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.kaiming_uniform_(module.weight, nonlinearity="relu")


def _check_shape(image_shape) -> tuple[int, int]:
    channels, height, width = (int(v) for v in image_shape)
    if height != width or height not in SIDES:
        raise ValueError(f"the Burgess networks take 32x32 or 64x64 images, not {height}x{width}")
    return channels, height


class BurgessEncoder(nn.Module):
    """Images (B, C, S, S), S in {32, 64} -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, image_shape, latent_dim: int = LATENT_DIM):
        super().__init__()
        channels, side = _check_shape(image_shape)
        self.latent_dim = latent_dim
        widths = [channels] + [HIDDEN_CHANNELS] * (4 if side == 64 else 3)
        self.convs = nn.ModuleList(
            nn.Conv2d(c_in, c_out, KERNEL, stride=2, padding=1) for c_in, c_out in zip(widths[:-1], widths[1:])
        )
        self.hidden = nn.ModuleList(
            [nn.Linear(HIDDEN_CHANNELS * KERNEL * KERNEL, HIDDEN_UNITS), nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS)]
        )
        self.head = nn.Linear(HIDDEN_UNITS, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x
        for conv in self.convs:
            h = torch.relu(conv(h))
        h = h.view(h.shape[0], -1)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        pairs = self.head(h).view(-1, self.latent_dim, 2)  # the peer's layout: (mu, logvar) side by side per unit
        return pairs[..., 0], pairs[..., 1]


class BurgessDecoder(nn.Module):
    """Codes (B, latent_dim) -> pixel probabilities (B, C, S, S) (sigmoid of the last transposed convolution)."""

    def __init__(self, image_shape, latent_dim: int = LATENT_DIM):
        super().__init__()
        channels, side = _check_shape(image_shape)
        self.hidden = nn.ModuleList(
            [
                nn.Linear(latent_dim, HIDDEN_UNITS),
                nn.Linear(HIDDEN_UNITS, HIDDEN_UNITS),
                nn.Linear(HIDDEN_UNITS, HIDDEN_CHANNELS * KERNEL * KERNEL),
            ]
        )
        widths = [HIDDEN_CHANNELS] * (4 if side == 64 else 3) + [channels]
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(c_in, c_out, KERNEL, stride=2, padding=1) for c_in, c_out in zip(widths[:-1], widths[1:])
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.hidden:
            h = torch.relu(layer(h))
        h = h.view(h.shape[0], HIDDEN_CHANNELS, KERNEL, KERNEL)
        for deconv in self.deconvs[:-1]:
            h = torch.relu(deconv(h))
        return torch.sigmoid(self.deconvs[-1](h))


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)), broadcasting, in the peer's order of operations."""
    return -0.5 * (math.log(2 * math.pi) + logvar) - 0.5 * ((x - mu) ** 2 * torch.exp(-logvar))


def peer_log_weights(batch_size: int, dataset_size: int) -> torch.Tensor:
    """(B, B) log importance weights as the peer lays them out (see the module docstring): 1/(B - 1) everywhere,
    1/N in column 0, (N - B + 1) / (N (B - 1)) in column 1 and at row B - 2, column 0."""
    n, m = int(dataset_size), int(batch_size) - 1
    if m < 1:
        raise ValueError("the stratified estimator needs at least 2 codes in the batch")
    stratified = (n - m) / (n * m)
    weights = torch.full((m + 1, m + 1), 1.0 / m)
    weights[:, 0] = 1.0 / n
    weights[:, 1] = stratified
    weights[m - 1, 0] = stratified
    return weights.log()


def btcvae_terms(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, dataset_size: int) -> dict[str, torch.Tensor]:
    """Batch means of the three KL terms (mutual information, total correlation, dimension-wise KL), estimated as
    the peer estimates them."""
    batch_size = z.shape[0]
    log_qz_given_x = gaussian_log_density(z, mu, logvar).sum(dim=1)
    zeros = torch.zeros_like(z)
    log_pz = gaussian_log_density(z, zeros, zeros).sum(dim=1)
    matrix = gaussian_log_density(z[:, None, :], mu[None, :, :], logvar[None, :, :])  # [i, j, d]: log q(z_id|x_j)
    matrix = matrix + peer_log_weights(batch_size, dataset_size).to(z.device)[:, :, None]
    log_qz = torch.logsumexp(matrix.sum(dim=2), dim=1)
    log_prod_qzd = torch.logsumexp(matrix, dim=1).sum(dim=1)
    return {
        "mi": (log_qz_given_x - log_qz).mean(),
        "tc": (log_qz - log_prod_qzd).mean(),
        "dim_kl": (log_prod_qzd - log_pz).mean(),
    }


class PeerBTCVAE(nn.Module):
    """The peer's model and loss behind the interface ``bench.train_speed`` drives: ``objective(x, step)`` ->
    (loss, logs) and ``optimised_parameters()``. ``x`` is float in [0, 1], (B, C, S, S), contiguous NCHW."""

    def __init__(
        self,
        image_shape,
        dataset_size: int,
        latent_dim: int = LATENT_DIM,
        alpha: float = 1.0,
        beta: float = 6.0,
        gamma: float = 1.0,
        steps_anneal: int = 10_000,
    ):
        super().__init__()
        self.encoder = BurgessEncoder(image_shape, latent_dim)
        self.decoder = BurgessDecoder(image_shape, latent_dim)
        self.dataset_size = int(dataset_size)
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.steps_anneal = steps_anneal
        self.apply(_kaiming)

    def forward(self, x: torch.Tensor):
        mu, logvar = self.encoder(x)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu) if self.training else mu
        return self.decoder(z), mu, logvar, z

    def anneal(self, step: int | None) -> float:
        if not self.steps_anneal or step is None:
            return 1.0
        return min(step / self.steps_anneal, 1.0)

    def loss(self, x, recon, mu, logvar, z, step: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        reconstruction = F.binary_cross_entropy(recon, x, reduction="sum") / x.shape[0]
        terms = btcvae_terms(z, mu, logvar, self.dataset_size)
        total = (
            reconstruction
            + self.alpha * terms["mi"]
            + self.beta * terms["tc"]
            + self.anneal(step) * self.gamma * terms["dim_kl"]
        )
        return total, {"reconstruction": reconstruction, **terms}

    def objective(self, x: torch.Tensor, step: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        recon, mu, logvar, z = self(x)
        total, _ = self.loss(x, recon, mu, logvar, z, step)
        return total, {"loss": total.item()}  # the peer's trainer reads the loss back every step

    def optimised_parameters(self):
        return self.parameters()


def build_peer(image_shape, dataset_size: int, device) -> tuple[PeerBTCVAE, torch.optim.Optimizer]:
    """The peer's model on ``device`` (float32, contiguous) and its optimiser (Adam, lr 5e-4, default betas)."""
    model = PeerBTCVAE(image_shape, dataset_size).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=5e-4)
