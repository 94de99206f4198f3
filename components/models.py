"""Models sized from the config: an MLP for any input, image classifiers for 1- or 3-channel images."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected layers with LeakyReLU, as in the W&B tutorial; inputs of any shape are flattened.

    `input_dim`: the flattened input size; None infers it from the first batch (nn.LazyLinear), so the
    same config fits images of any size and feature vectors alike.
    """

    def __init__(self, num_outputs: int, input_dim: int | None = None, hidden_sizes: list[int] = (200, 200),
                 dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = input_dim
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden) if width else nn.LazyLinear(hidden), nn.LeakyReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_outputs) if width else nn.LazyLinear(num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LeNet5(nn.Module):
    """LeNet-5; the first convolution pads by 2 so 28 px digits keep LeNet's 32 px geometry."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int):
        super().__init__()
        after_pool1 = image_size // 2
        after_pool2 = (after_pool1 - 4) // 2
        if after_pool2 < 1:
            raise ValueError(f"LeNet5 needs images of at least 12 px, got image_size={image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * after_pool2 * after_pool2, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TutorialCNN(nn.Module):
    """The PyTorch/W&B MNIST tutorial's `Net`, returning logits instead of log-probabilities."""

    def __init__(self, in_channels: int, image_size: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        if side < 1:
            raise ValueError(f"TutorialCNN needs images of at least 16 px, got image_size={image_size}")
        self.conv1 = nn.Conv2d(in_channels, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(20 * side * side, 50)
        self.fc2 = nn.Linear(50, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(torch.max_pool2d(self.conv1(x), 2))
        x = torch.relu(torch.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(self.dropout(x))


class SmallCNN(nn.Module):
    """Two 3x3 convolution blocks (the second pooled to 2x2) and a linear head: fits images from 4 px up,
    such as scikit-learn's 8x8 digits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32, dropout: float = 0.25):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(8 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resnet18(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 with a 3x3 stride-1 stem and no max-pool: the usual small-image variant."""
    from torchvision.models import resnet18 as torchvision_resnet18

    if image_size < 8:
        raise ValueError(f"resnet18 needs images of at least 8 px, got image_size={image_size}")
    model = torchvision_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
