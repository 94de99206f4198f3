"""A user's own VAE task with its own two-optimizer training step, from a package outside the repository
(on PYTHONPATH, configs through --config-dir): swept on a 2-point grid, and interrupted by a signal
mid-epoch then resumed to the same metrics as an uninterrupted run, every optimizer's state restored."""

from __future__ import annotations

import json
import os
import textwrap

import pytest
import torch
import yaml

from runner.results import read_metrics, read_result

pytestmark = pytest.mark.e2e

USER_PACKAGE = '''
import os
import signal

import torch
from torch import nn

from components.tasks import Task


class TinyVAE(nn.Module):
    def __init__(self, pixels: int, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 64), nn.ReLU(), nn.Linear(64, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, 64), nn.ReLU(), nn.Linear(64, pixels))

    def forward(self, images):
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * log_var)
        return self.decoder(z), mean, log_var


class AlternatingVAE(Task):
    """A VAE whose decoder and encoder take turns, each with its own optimizer (a GAN-style step)."""

    name = "alternating_vae"

    def unpack(self, batch):
        return batch[0], batch[0]

    def loss(self, output, target):
        logits, mean, log_var = output
        reconstruction = nn.functional.binary_cross_entropy_with_logits(logits, target.flatten(1), reduction="none")
        kl = 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1)
        return (reconstruction.sum(1) + kl).mean()

    def update_metrics(self, metrics, output, target):
        metrics.update(-self.loss(output, target))

    def configure_optimizers(self, model, optimizer):
        return {"decoder": optimizer(model.decoder.parameters()),
                "encoder": torch.optim.SGD(model.encoder.parameters(), lr=0.01, momentum=0.9)}

    def training_step(self, model, inputs, target, optimizers):
        self.steps = getattr(self, "steps", 0) + 1
        for name in ("decoder", "encoder"):
            optimizers[name].zero_grad(set_to_none=True)
            output = model(inputs)
            loss = self.loss(output, target)
            loss.backward()
            optimizers[name].step()
        if os.environ.get("SIGNAL_AT_STEP") == str(self.steps):  # a scheduler's signal, at a known step
            signal.raise_signal(signal.SIGTERM)
        return loss, output
'''

USER_CONFIGS = {
    "task/alternating_vae.yaml": """
        defaults:
          - override /loss@_global_.loss: user_elbo
          - override /objective@_global_.objective: val_elbo
        _target_: mygen.AlternatingVAE
        num_outputs: 8
        metrics:
          elbo: {_target_: torchmetrics.aggregation.MeanMetric}
    """,
    "model/tiny_vae.yaml": """
        _target_: mygen.TinyVAE
        pixels: 784
        latent: ${task.num_outputs}
    """,
    # the task computes its own loss; the criterion is unused
    "loss/user_elbo.yaml": """
        criterion: {_target_: torch.nn.Identity}
        tasks:
          alternating_vae: {}
    """,
}


@pytest.fixture
def user_package(tmp_path):
    (tmp_path / "mygen.py").write_text(USER_PACKAGE)
    conf = tmp_path / "myconf"
    for name, text in USER_CONFIGS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(textwrap.dedent(text))
    return conf


def args_for(conf, data_dir, *extra):
    return ("--config-dir", str(conf), "task=alternating_vae", "model=tiny_vae", "dataset=mnist_5k_pixels",
            f"paths.data_dir={data_dir}", "trainer.max_epochs=3", "trainer.limit_train_batches=12",
            "trainer.batch_size=32", "logger=none", *extra)


def test_a_users_two_optimizer_step_sweeps_on_a_grid(run_cli, tmp_path, data_dir, user_package):
    sweep = tmp_path / "sweep"
    done = run_cli("--multirun", *args_for(user_package, data_dir, "optimizer.lr=0.003,0.00001",
                                           f"hydra.sweep.dir={sweep}"), env={"PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["objective"]["metric"] == "val/elbo" and "optimizer.lr=0.003" in best["overrides"]
    trials = [json.loads((p / "result.json").read_text()) for p in sweep.iterdir() if (p / "result.json").exists()]
    assert len(trials) == 2 and all(t["status"] == "completed" for t in trials)
    assert best["objective"]["value"] == max(t["objective"]["value"] for t in trials)


def test_a_users_two_optimizer_step_resumes_exactly_after_a_signal(run_cli, tmp_path, data_dir, user_package):
    env = {"PYTHONPATH": str(tmp_path)}
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    done = run_cli(*args_for(user_package, data_dir, f"hydra.run.dir={straight}"), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    # step 18 is in the middle of epoch 2 (12 steps an epoch)
    stopped = run_cli(*args_for(user_package, data_dir, f"hydra.run.dir={interrupted}"),
                      env={**env, "SIGNAL_AT_STEP": "18"}, cwd=tmp_path)
    assert stopped.returncode != 0 and len(read_metrics(interrupted)) == 1, stopped.stderr
    saved = torch.load(interrupted / "checkpoints" / "last.pt", weights_only=True)
    assert saved["progress"]["step"] == 18 and set(saved["optimizers"]) == {"decoder", "encoder"}
    assert saved["optimizers"]["encoder"]["state"][0]["momentum_buffer"].abs().sum() > 0
    resumed = run_cli(*args_for(user_package, data_dir, f"hydra.run.dir={interrupted}"), env=env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert read_result(interrupted)["status"] == "completed"

    def comparable(rows):
        return [{k: v for k, v in row.items() if k not in ("time_s", "train/samples_per_s")} for row in rows]

    assert len(read_metrics(straight)) == 3
    assert comparable(read_metrics(interrupted)) == comparable(read_metrics(straight))
