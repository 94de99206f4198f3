"""The plain references of the sequence and generative presets (benchmarks/tasks.py prints them beside the runner).

- ctc_digits: the character error rate of the same recognizer untrained (greedy decoding, val split);
- language_model: the perplexity of byte frequencies counted on the training split (a unigram model);
- vae_mnist: the same VAE trained by a plain PyTorch loop (same data, optimizer, batch size, epochs, and
  the run's trainer.seed), its validation ELBO per epoch beside the runner's metrics.csv; once with its
  own shuffling and once with the runner's (then it is the runner's run to the digit).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

# preset: (metric, the reference's name)
SEQUENCE_PRESETS = {
    "ctc_digits": ("val/cer", "the recognizer untrained"),
    "language_model": ("val/perplexity", "byte frequencies (unigram)"),
    "vae_mnist": ("val/elbo", "plain PyTorch loop, same epochs"),
}


def untrained_cer() -> float:
    from torchmetrics.text import CharErrorRate

    from components.datasets.sequences import digit_strings
    from components.sequences import FrameRecognizer, as_text, greedy_decode

    torch.manual_seed(0)
    data, model = digit_strings(11), FrameRecognizer(8, 11).eval()
    (frames, lengths), (labels, label_lengths) = data.val.collate([data.val[i] for i in range(len(data.val))])
    with torch.no_grad():
        logits, out_lengths = model(frames, lengths)
    truth = [as_text(row[:n]) for row, n in zip(labels.tolist(), label_lengths.tolist())]
    return float(CharErrorRate()([as_text(p) for p in greedy_decode(logits, out_lengths)], truth))


def unigram_perplexity() -> float:
    from components.datasets.sequences import byte_corpus

    data = byte_corpus()
    counts = torch.bincount(data.train.targets.flatten(), minlength=256).double() + 1  # add-one smoothing
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[data.val.targets.flatten()].mean()))


def plain_vae_elbos(data_dir: str, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    runner_shuffle: bool = False) -> list[float]:
    """Validation ELBO (nats per image) after each epoch of a tutorial-style loop over the same data.

    Seeded as the runner seeds a run (`trainer.seed`, then the model's initialisation). The batches are
    shuffled by the global generator, as a tutorial does, or with `runner_shuffle` by the runner's own
    generator of each epoch (runner.run.data.epoch_generator): then every random number is the runner's,
    and the ELBOs are the runner's to the digit."""
    from components.generative import VAE, mnist_5k_pixels
    from runner.run.data import epoch_generator

    data = mnist_5k_pixels(data_dir, 1, 28, 10)
    train, val = data.train.inputs.float() / 255, data.val.inputs.float() / 255
    torch.manual_seed(seed)
    model = VAE(1, 28, latent_dim=16, hidden_size=400)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def negative_elbo(x):
        logits, mean, log_var = model(x)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, x.flatten(1), reduction="none").sum(1)
        return bce + 0.5 * (mean.square() + log_var.exp() - 1 - log_var).sum(1)

    elbos = []
    for epoch in range(1, epochs + 1):
        model.train()
        generator = epoch_generator(seed, epoch) if runner_shuffle else None
        for rows in torch.randperm(len(train), generator=generator).split(batch_size):
            loss = negative_elbo(train[rows]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            elbos.append(-float(negative_elbo(val).mean()))
    return elbos


def reference(preset: str, run_dir: Path, data_dir: str) -> dict:
    """The preset's plain reference value, and per epoch where it is a whole training (vae_mnist)."""
    from runner.results import read_metrics

    metric = SEQUENCE_PRESETS[preset][0]
    if preset == "ctc_digits":
        return {"reference": untrained_cer()}
    if preset == "language_model":
        return {"reference": unigram_perplexity()}
    runner_epochs = [row[metric] for row in read_metrics(run_dir)]
    seed = int(OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.seed)
    plain = plain_vae_elbos(data_dir, epochs=len(runner_epochs), seed=seed)
    same_stream = plain_vae_elbos(data_dir, epochs=len(runner_epochs), seed=seed, runner_shuffle=True)
    return {"reference": max(plain), "seed": seed,
            "per_epoch": {"runner": runner_epochs, "plain": plain, "plain, runner's shuffle": same_stream}}
