"""Generative tasks without labels: a variational autoencoder whose loss uses the model's extra outputs
(the posterior's mean and log-variance beside the reconstruction), its ELBO as a metric, and MNIST
pixels in [0, 1] for its Bernoulli likelihood."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from components.datasets import mnist_5k
from components.datasets.data import Data, Standardize
from components.media import describe
from components.tasks import Task


def mnist_5k_pixels(root: str, channels: int, image_size: int, num_classes: int, val_size: int = 500,
                    test_size: int = 1000, split_seed: int = 0) -> Data:
    """The offline MNIST digits (components.datasets.mnist_5k) with pixels scaled to [0, 1] instead of
    standardised: what a Bernoulli likelihood reconstructs."""
    data = mnist_5k(root, channels, image_size, num_classes, val_size, test_size, split_seed)
    data.preprocess = Standardize(torch.zeros(channels, 1, 1), torch.ones(channels, 1, 1), 1.0 / 255)
    return data


class VAE(nn.Module):
    """A fully connected variational autoencoder (Kingma & Welling): images -> `(reconstruction logits
    [B, C*H*W], mean [B, latent_dim], log-variance [B, latent_dim])`; the decoder reads one sample of the
    posterior (in eval mode too: the validation ELBO is the same one-sample estimate as training's)."""

    def __init__(self, channels: int, image_size: int, latent_dim: int = 16, hidden_size: int = 400):
        super().__init__()
        pixels = channels * image_size * image_size
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden_size), nn.ReLU())
        self.mean = nn.Linear(hidden_size, latent_dim)
        self.log_var = nn.Linear(hidden_size, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, pixels))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hidden = self.encoder(images)
        mean, log_var = self.mean(hidden), self.log_var(hidden)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        return self.decoder(z), mean, log_var


class VariationalAutoencoder(Task):
    """No labels: the target is the input itself. The model returns (reconstruction logits, mean,
    log-variance); the loss is the negative ELBO per sample, averaged: the criterion's reconstruction
    term summed over pixels (BCEWithLogitsLoss with reduction none: a Bernoulli likelihood) plus
    `kl_weight` times KL(q(z|x) || N(0, I)). The metrics get the ELBO of each sample (KL weight 1), in
    nats; torchmetrics.aggregation.MeanMetric averages it.

    Loss setting (`loss.tasks.vae`): `kl_weight` (1: the ELBO; other values: a beta-VAE).
    """

    name = "vae"

    def __init__(self, num_outputs: int, metrics: dict[str, Any] | None = None):
        super().__init__(num_outputs, metrics)
        self.kl_weight = 1.0

    def bind_loss(self, criterion: Callable, kl_weight: float = 1.0) -> None:
        if kl_weight < 0:
            raise ValueError(f"kl_weight={kl_weight} must be >= 0")
        self.criterion, self.kl_weight = criterion, kl_weight

    def unpack(self, batch: Any) -> tuple[Tensor, Tensor]:
        images, _labels = batch  # the labels are not used
        return images, images

    def terms(self, output: tuple[Tensor, Tensor, Tensor], target: Tensor) -> tuple[Tensor, Tensor]:
        """(reconstruction negative log-likelihood, KL divergence) per sample."""
        logits, mean, log_var = (part.float() for part in output)
        reconstruction = self.criterion(logits, target.flatten(1).float()).sum(1)
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1)
        return reconstruction, kl

    def loss(self, output, target: Tensor) -> Tensor:
        reconstruction, kl = self.terms(output, target)
        return (reconstruction + self.kl_weight * kl).mean()

    def update_metrics(self, metrics, output, target: Tensor) -> None:
        reconstruction, kl = self.terms(tuple(part.detach() for part in output), target)
        metrics.update(-(reconstruction + kl))

    def check(self, output: Any, target: Any) -> None:
        if not (isinstance(output, tuple) and len(output) == 3 and all(isinstance(p, Tensor) for p in output)):
            raise ValueError(f"a VAE must return (reconstruction logits, mean, log-variance); the model outputs "
                             f"{describe(output)}")
        if output[0].shape != target.flatten(1).shape or output[1].shape != output[2].shape:
            raise ValueError(f"the reconstruction must have the input's {target.flatten(1).shape[1]} values per "
                             f"sample and the mean and log-variance one shape; the model outputs {describe(output)}")
        if target.is_floating_point() and (float(target.min()) < 0 or float(target.max()) > 1):
            raise ValueError(f"a Bernoulli likelihood needs inputs in [0, 1]; these go from {float(target.min()):.3g} "
                             f"to {float(target.max()):.3g} (use dataset=mnist_5k_pixels, not standardised pixels)")
