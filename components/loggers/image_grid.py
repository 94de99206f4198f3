"""The grid of captioned images that TensorBoard and MLflow show as a picture (W&B takes the images)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure


def image_grid(images: torch.Tensor, captions: list[str]) -> Figure:
    """Images in [0, 1], [N, C, H, W], eight to a row, each under its caption (green when it ends in ✓).

    A Figure of its own, not pyplot's: drawing leaves the process's matplotlib backend and figures alone.
    """
    import torch
    from matplotlib.figure import Figure

    n, channels, height, width = images.shape
    columns = min(8, n)
    rows = -(-n // columns)
    # every image on one white canvas, a caption band above each, drawn by one Axes: a tenth of
    # the time of one Axes per image with tight_layout (half a second per grid, paid by every trial)
    band, gap = height // 3, width // 8
    cell_height, cell_width = height + band, width + gap
    canvas = torch.ones(rows * cell_height, columns * cell_width, 3)
    pixels = images.detach().float().clamp(0, 1).cpu()
    pixels = pixels.expand(-1, 3, -1, -1) if channels == 1 else pixels
    for i in range(n):
        top, left = (i // columns) * cell_height + band, (i % columns) * cell_width + gap // 2
        canvas[top : top + height, left : left + width] = pixels[i].permute(1, 2, 0)
    figure = Figure(figsize=(1.6 * columns, 1.9 * rows))
    ax = figure.subplots()
    figure.subplots_adjust(0, 0, 1, 1)
    ax.axis("off")
    ax.imshow(canvas.numpy(), interpolation="nearest")
    for i, caption in enumerate(captions):
        ax.text((i % columns + 0.5) * cell_width, (i // columns) * cell_height + 0.8 * band, caption, ha="center",
                fontsize=8, color="green" if caption.endswith("✓") else "red")
    return figure
