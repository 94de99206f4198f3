"""The sequence and generative presets through the real CLI: CTC on digit strings, a byte-level language
model, a VAE on mnist_5k; and a CTC target that cannot fit the model's output refused before training."""

from __future__ import annotations

import pytest
import torch

from components.datasets.sequences import DigitStrings, check_alignable
from components.sequences import greedy_decode
from runner.results import read_metrics, read_result
from tests.test_cli import assert_clean_error, only_run

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("experiment,args,objective,learned", [
    # after one epoch the recognizer still outputs mostly blanks: CER near 1; two more bring it well down
    ("ctc_digits", ["trainer.max_epochs=3"], "val/cer", lambda first, last: last < 0.6 < first),
    ("language_model", ["trainer.max_epochs=3"], "val/perplexity", lambda first, last: last < first < 256),
    # the ELBO rises (it is negative: nats per image)
    ("vae_mnist", ["trainer.max_epochs=2"], "val/elbo", lambda first, last: first < last < 0),
])
def test_each_sequence_and_generative_preset_trains(run_cli, tmp_path, data_dir, experiment, args, objective,
                                                    learned):
    done = run_cli(f"experiment={experiment}", *args, f"paths.data_dir={data_dir}", "logger=none")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    result, rows = read_result(run), read_metrics(run)
    assert result["status"] == "completed" and result["objective"]["metric"] == objective
    assert learned(rows[0][objective], rows[-1][objective]), [row[objective] for row in rows]
    assert objective.replace("val/", "test/") in result["test_metrics"]


def test_a_ctc_target_longer_than_the_models_output_is_refused_before_training(run_cli, tmp_path):
    # a stride of 16 frames gives a 5-digit string of 40 frames 3 output frames
    done = run_cli("experiment=ctc_digits", "model.stride=16", "dataset.min_digits=5", "logger=none")
    assert_clean_error(done, "its CTC target has 5 labels", "model's output has 3 frames")
    assert not (only_run(tmp_path) / "metrics.csv").exists()


def test_a_target_longer_than_its_input_frames_is_refused_by_the_data():
    with pytest.raises(ValueError, match="sample 1: its CTC target has 3 labels .* but its input has 2 frames"):
        check_alignable(torch.tensor([4, 2]), torch.tensor([2, 3]))
    # a label repeated needs a blank between: 2 labels "1 1" need 3 frames
    with pytest.raises(ValueError, match="needs 3 frames"):
        check_alignable(torch.tensor([2]), torch.tensor([2]), torch.tensor([[1, 1]]))


def test_collate_pads_and_greedy_decoding_merges_repeats_and_drops_blanks():
    items = [(torch.ones(3, 8), torch.tensor([2, 5])), (torch.ones(5, 8), torch.tensor([7]))]
    (frames, lengths), (labels, label_lengths) = DigitStrings.collate(items)
    assert frames.shape == (2, 5, 8) and lengths.tolist() == [3, 5] and frames[0, 3:].abs().sum() == 0
    assert labels.tolist() == [[2, 5], [7, 0]] and label_lengths.tolist() == [2, 1]
    best = torch.tensor([[3, 3, 0, 3, 4, 4], [0, 0, 2, 9, 9, 9]])
    logits = torch.nn.functional.one_hot(best, 10).float()
    assert greedy_decode(logits, torch.tensor([6, 3])) == [[3, 3, 4], [2]]


def test_the_vae_preset_is_a_plain_loop_seeded_alike(compose_cfg, tmp_path, data_dir):
    """Same seed, same shuffling: the runner's validation ELBO is the plain loop's of
    benchmarks/sequence_baselines.py (its pre-training check draws none of the run's random numbers)."""
    from benchmarks.sequence_baselines import plain_vae_elbos
    from runner.run.train import RunContext, train

    train(compose_cfg(["experiment=vae_mnist", "trainer.max_epochs=1", "trainer.seed=3", "trainer.test=false",
                       f"paths.data_dir={data_dir}", "logger=none"]), RunContext(run_dir=tmp_path))
    runner_elbo = read_metrics(tmp_path)[0]["val/elbo"]
    plain_elbo, = plain_vae_elbos(str(data_dir), epochs=1, seed=3, runner_shuffle=True)
    assert runner_elbo == pytest.approx(plain_elbo, abs=1e-3)
