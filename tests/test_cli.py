"""The real CLI, as a user types it: the README's command, bad input, start-up without torch,
and a user's own components from their own package and config folder."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from runner.results import read_result
from tests.conftest import REPO, TINY

pytestmark = pytest.mark.e2e


def only_run(tmp_path):
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def test_readme_command_trains_lenet_with_sgd(run_cli, tmp_path, data_dir):
    done = run_cli("model=lenet", "optimizer=sgd", f"paths.data_dir={data_dir}")
    assert done.returncode == 0, done.stderr
    run = only_run(tmp_path)
    result = read_result(run)
    assert result["status"] == "completed" and result["epochs"] == 10
    assert result["objective"]["value"] > 0.9
    assert (run / ".hydra" / "config.yaml").exists() and (run / "runner.log").exists()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "metrics.csv").read_text().count("\n") == 11


def assert_clean_error(done, *fragments):
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_unknown_group_option_lists_the_options(run_cli):
    assert_clean_error(run_cli("model=transformer"), "Could not find 'model/transformer'", "lenet", "resnet18")


def test_unknown_key_is_refused(run_cli):
    assert_clean_error(run_cli("trainer.max_epoch=3"), "trainer.max_epoch")


def test_wrong_type_is_refused(run_cli):
    assert_clean_error(run_cli("trainer.max_epochs=ten"), "trainer.max_epochs")


def test_bad_values_are_all_named(run_cli):
    assert_clean_error(run_cli("optimizer.lr=0", "trainer.batch_size=0"), "optimizer.lr=0 must be a number > 0",
                       "trainer.batch_size=0 must be >= 1")


def test_unwritable_output_folder(run_cli, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert_clean_error(run_cli(*TINY, f"hydra.run.dir={blocker}/run"), "cannot write the output folder", str(blocker))


def test_missing_dataset_offline_names_the_folder(run_cli, tmp_path):
    done = run_cli("dataset=cifar10", f"paths.data_dir={tmp_path}/nothing", "dataset.download=false", "trainer=debug")
    assert_clean_error(done, str(tmp_path / "nothing"), "dataset=mnist_5k")


def test_nan_loss_exits_non_zero_and_records_why(run_cli, tmp_path):
    done = run_cli(*TINY, "optimizer=sgd", "optimizer.lr=1e12", "trainer.log_every_n_steps=1")
    assert_clean_error(done, "loss became")
    # printed once, by Hydra as the run ends; runner.log keeps the log line and its traceback
    assert (done.stdout + done.stderr).count("loss became") == 1, done.stdout + done.stderr
    run = only_run(tmp_path)
    log_text = (run / "runner.log").read_text()
    assert "the run failed: " in log_text and "Traceback" in log_text
    result = read_result(run)
    assert result["status"] == "failed" and "loss became" in result["reason"]


def test_full_error_shows_the_traceback_when_asked(run_cli):
    done = run_cli("optimizer.lr=0", env={"HYDRA_FULL_ERROR": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["--cfg", "job"], ["optimizer.lr=0"]])
def test_help_print_config_and_config_errors_do_not_import_torch(args):
    probe = textwrap.dedent(f"""
        import sys, runpy
        sys.argv = ["runner", *{args!r}]
        try:
            runpy.run_module("runner", run_name="__main__")
        except SystemExit:
            pass
        print("TORCH_LOADED" if "torch" in sys.modules else "NO_TORCH")
    """)
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "NO_TORCH" in done.stdout, done.stdout + done.stderr


def test_bring_your_own_dataset_and_model(run_cli, tmp_path):
    package = tmp_path / "mylab"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        from torch.utils.data import Dataset

        class Stripes(Dataset):
            '''Horizontal stripes (class 0) or vertical stripes (class 1), 12x12, one channel.'''
            def __init__(self, size):
                self.size = size
            def __len__(self):
                return self.size
            def __getitem__(self, index):
                label = index % 2
                image = torch.zeros(1, 12, 12)
                if label:
                    image[:, :, ::2] = 1.0
                else:
                    image[:, ::2, :] = 1.0
                return image + 0.1 * torch.randn(1, 12, 12), label

        class TinyNet(nn.Module):
            def __init__(self, in_channels, image_size, num_classes):
                super().__init__()
                self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size ** 2, num_classes))
            def forward(self, x):
                return self.net(x)
    """))
    conf = tmp_path / "myconf"
    (conf / "dataset").mkdir(parents=True)
    (conf / "model").mkdir()
    (conf / "dataset" / "stripes.yaml").write_text(textwrap.dedent("""
        _target_: components.datasets.from_datasets
        train: {_target_: mylab.Stripes, size: 128}
        val: {_target_: mylab.Stripes, size: 32}
        channels: 1
        image_size: 12
        num_classes: 2
    """))
    (conf / "model" / "tiny.yaml").write_text(textwrap.dedent("""
        _target_: mylab.TinyNet
        in_channels: ${dataset.channels}
        image_size: ${dataset.image_size}
        num_classes: ${dataset.num_classes}
    """))
    done = run_cli("--config-dir", str(conf), "dataset=stripes", "model=tiny", "trainer.max_epochs=3",
                   "trainer.batch_size=16", "optimizer.lr=0.01", env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    result = json.loads((only_run(tmp_path) / "result.json").read_text())
    assert result["status"] == "completed" and result["objective"]["value"] > 0.9


def test_console_script_is_the_same_entry_point(tmp_path):
    script = REPO / ".venv" / "bin" / "runner"
    if not script.exists():
        pytest.skip("the console script is installed by `pip install -e .` into .venv")
    done = subprocess.run([str(script), "--cfg", "job", "model=mlp"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "components.models.MLP" in done.stdout
