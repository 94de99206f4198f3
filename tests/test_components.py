"""Components on their own: plain PyTorch, no runner needed."""

from __future__ import annotations

import pytest
import torch

from components import datasets, models
from components.transforms import RandomCropFlip

SHAPES = [(1, 28), (3, 32)]
MODELS = {
    "MLP": lambda channels, size: models.MLP(num_outputs=10),
    "MLP(input_dim)": lambda channels, size: models.MLP(num_outputs=10, input_dim=channels * size * size),
    "LeNet5": lambda channels, size: models.LeNet5(in_channels=channels, image_size=size, num_classes=10),
    "TutorialCNN": lambda channels, size: models.TutorialCNN(in_channels=channels, image_size=size, num_classes=10),
    "SmallCNN": lambda channels, size: models.SmallCNN(in_channels=channels, num_classes=10),
    "resnet18": lambda channels, size: models.resnet18(in_channels=channels, image_size=size, num_classes=10),
}


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", MODELS)
def test_every_model_trains_a_step_on_every_shape(name, channels, size):
    torch.manual_seed(0)
    model = MODELS[name](channels, size)
    model(torch.zeros(1, channels, size, size))  # lazy layers take their size from a first batch
    images, labels = torch.randn(4, channels, size, size), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    assert model(images).shape == (4, 10)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_mnist_5k_is_a_stratified_fixed_split(tmp_path):
    data = datasets.mnist_5k(root=str(tmp_path), channels=1, image_size=28, num_classes=10)
    assert (len(data.train), len(data.val), len(data.test)) == (3500, 500, 1000)
    overall = torch.bincount(torch.cat([data.train.targets, data.val.targets, data.test.targets]), minlength=10).float() / 5000
    for split in (data.val, data.test):
        counts = torch.bincount(split.targets, minlength=10).float() / len(split)
        assert torch.allclose(counts, overall, atol=0.01)
    again = datasets.mnist_5k(root=str(tmp_path), channels=1, image_size=28, num_classes=10)
    assert torch.equal(again.val.targets, data.val.targets)
    assert (tmp_path / "runner_cache" / "mnist_5k.pt").exists()


def test_declared_shape_is_checked(tmp_path):
    with pytest.raises(ValueError, match=r"shape \(1, 28, 28\).*channels=3, image_size=32"):
        datasets.mnist_5k(root=str(tmp_path), channels=3, image_size=32, num_classes=10)


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST", "KMNIST"])
def test_torchvision_datasets_read_idx_files_offline(mnist_root, name):
    data = datasets.torchvision_images(name, root=str(mnist_root), channels=1, image_size=28, num_classes=10,
                                       download=False, val_size=16)
    # validation carved from the official training split, the official test split kept for the test stage
    assert data.train.inputs.shape == (48, 1, 28, 28) and data.val.inputs.shape == (16, 1, 28, 28)
    assert data.test.inputs.shape == (32, 1, 28, 28)
    assert sorted(torch.cat([data.train.targets, data.val.targets]).tolist()) == sorted(list(range(10)) * 6 + [0, 1, 2, 3])
    assert data.train.inputs.dtype == torch.uint8
    whole = datasets.torchvision_images(name, root=str(mnist_root), channels=1, image_size=28, num_classes=10,
                                        download=False, val_size=0)
    assert whole.train.inputs.shape == (64, 1, 28, 28) and whole.val.inputs.shape == (32, 1, 28, 28) and whole.test is None
    assert whole.train.targets[:10].tolist() == list(range(10))


def test_missing_dataset_names_the_folder_and_the_offline_option(tmp_path):
    with pytest.raises(datasets.DatasetNotFound, match=r"dataset=mnist_5k") as error:
        datasets.torchvision_images("CIFAR10", root=str(tmp_path / "empty"), channels=3, image_size=32,
                                    num_classes=10, download=False)
    assert str((tmp_path / "empty").resolve()) in str(error.value)


def test_synthetic_is_reproducible():
    a = datasets.synthetic(channels=3, image_size=32, num_classes=4, seed=1)
    b = datasets.synthetic(channels=3, image_size=32, num_classes=4, seed=1)
    assert torch.equal(a.train.inputs, b.train.inputs) and a.train.inputs.shape == (256, 3, 32, 32)


def test_random_crop_flip_keeps_shape_and_moves_pixels():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = RandomCropFlip(padding=2)(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and not torch.equal(out, images)
