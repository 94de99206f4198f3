"""Augmentations applied to a whole batch of image tensors on the device, not per sample."""

from __future__ import annotations

import torch


class RandomCropFlip:
    """Random crop after zero padding, and a random horizontal flip: CIFAR's standard augmentation."""

    def __init__(self, padding: int = 4, horizontal_flip: bool = True):
        self.padding = padding
        self.horizontal_flip = horizontal_flip

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n, _, h, w = images.shape
        device = images.device
        if self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(images, (p, p, p, p))
            # one crop offset per image: gather each image's rows and columns at its own offset
            dy = torch.randint(0, 2 * p + 1, (n,), generator=generator, device="cpu").to(device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=generator, device="cpu").to(device)
            rows = (dy[:, None] + torch.arange(h, device=device)[None, :])[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=device)[None, :])[:, None, None, :]
            batch = torch.arange(n, device=device)[:, None, None, None]
            channels = torch.arange(images.shape[1], device=device)[None, :, None, None]
            images = padded[batch, channels, rows, cols]
        if self.horizontal_flip:
            flip = torch.rand(n, generator=generator, device="cpu").to(device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images
