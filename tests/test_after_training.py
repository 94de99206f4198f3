"""After training: the test stage, evaluating any run, loading a model in plain Python, checkpoints that
are plain data, and a best trial rerun as printed from the folder the sweep started in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from runner.errors import CheckpointError
from runner.evaluate import evaluate_run
from runner.evaluate import main as evaluate_main
from runner.results import read_result
from runner.run.train import RunContext, train
from tests.conftest import REPO, TINY

# best epoch 1, last epoch 3: the objective is the learning rate, which the step scheduler halves
BEST_IS_FIRST = ["objective.metric=lr", "scheduler=step", "scheduler.fn.step_size=1", "trainer.max_epochs=3"]


def fit(compose_cfg, run_dir, overrides) -> float:
    return train(compose_cfg(overrides), RunContext(run_dir=run_dir))


def test_the_test_stage_evaluates_the_best_checkpoint_not_the_last(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, *BEST_IS_FIRST])
    result = read_result(tmp_path)
    assert result["objective"]["epoch"] == 1 and result["epochs"] == 3
    assert result["test_epoch"] == 1 and set(result["test_metrics"]) == {"test/loss", "test/acc", "test/acc_top5"}
    best = evaluate_run(tmp_path, "best", "test", device="cpu")["metrics"]
    last = evaluate_run(tmp_path, "last", "test", device="cpu")["metrics"]
    assert result["test_metrics"] == best and best["test/loss"] != last["test/loss"]


def test_no_test_stage_when_asked_or_without_a_test_split(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path / "off", [*TINY, "trainer.test=false"])
    fit(compose_cfg, tmp_path / "none", [*TINY, "dataset.num_test=0"])
    assert read_result(tmp_path / "off")["test_metrics"] is None
    assert read_result(tmp_path / "none")["test_metrics"] is None


def test_evaluating_a_run_reproduces_its_recorded_validation_metrics_exactly(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2", "model=cnn", "trainer.eval_batch_size=16"])
    best = read_result(tmp_path)["best_metrics"]
    record = evaluate_run(tmp_path, "best", "val", device="cpu")
    assert record["metrics"] == {k: v for k, v in best.items() if k.startswith("val/")}
    written = json.loads(Path(record["written_to"]).read_text())
    assert written["metrics"] == record["metrics"] and written["split"] == "val"
    assert Path(record["written_to"]).parent == tmp_path / "evaluations"


@pytest.mark.e2e
def test_evaluate_works_on_a_run_folder_copied_elsewhere_and_refuses_clearly(compose_cfg, tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    fit(compose_cfg, run, [*TINY, f"paths.data_dir={data_dir}"])
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    shutil.rmtree(run)
    done = subprocess.run([sys.executable, "-m", "runner.evaluate", str(moved), "--split", "val"],
                          cwd=tmp_path / "elsewhere", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    metrics = json.loads(next((moved / "evaluations").glob("*.json")).read_text())["metrics"]
    assert metrics == {k: v for k, v in read_result(moved)["best_metrics"].items() if k.startswith("val/")}
    assert "val/acc" in done.stdout

    out = subprocess.run([sys.executable, "-m", "runner.evaluate", str(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    fragment = f"there is no checkpoint {tmp_path}/checkpoints/best.pt"
    assert out.returncode != 0 and "Traceback" not in out.stderr and fragment in out.stderr, out.stderr

    def refused(*args: str, fragment: str) -> None:
        """The same refusal as on the terminal, by the CLI's own main() in this process (no torch start-up)."""
        try:
            code = evaluate_main(list(args))
        except SystemExit as exit_:  # argparse's errors
            code = exit_.code
        err = capsys.readouterr().err
        assert code != 0 and fragment in err, err

    refused(str(moved), "model.num_classes=3", fragment="does not fit model components.models.LeNet5")
    refused(str(moved), "--split", "train", fragment="--split 'train' is not allowed; use one of: val, test")
    refused(str(moved), "model.nothing=1", fragment="model.nothing is not in the run's config")
    refused(str(moved), "--device", "bogus", fragment="--device 'bogus' is not allowed; use auto, cpu")
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_bytes(b"not a checkpoint")
    refused(str(moved), "--checkpoint", str(not_a_checkpoint), fragment=f"cannot read the checkpoint {not_a_checkpoint}")
    assert not_a_checkpoint.read_bytes() == b"not a checkpoint"


def test_every_checkpoint_the_runner_writes_is_plain_data(compose_cfg, tmp_path, signal_at_step):
    """best.pt, last.pt, the epoch checkpoints and a mid-epoch one (with its metric states) all load
    with weights_only=True."""
    signal_at_step(6)
    overrides = [*TINY, "trainer.max_epochs=2", "callbacks=epoch_checkpoints", "callbacks.epoch_checkpoints.every_n_epochs=1"]
    with pytest.raises(SystemExit):
        fit(compose_cfg, tmp_path, overrides)
    mid_epoch = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert mid_epoch["progress"]["batch_in_epoch"] == 6 and mid_epoch["progress"]["partial"]["metrics"]["acc"]["states"]
    signal_at_step.disarm()
    fit(compose_cfg, tmp_path, overrides)
    files = sorted((tmp_path / "checkpoints").glob("*.pt"))
    assert [p.name for p in files] == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    for path in files:
        state = torch.load(path, weights_only=True)
        assert state["format_version"] == 2 and isinstance(state["config"], str)


def test_a_checkpoint_of_a_newer_format_is_refused_and_kept(compose_cfg, tmp_path):
    fit(compose_cfg, tmp_path, TINY)
    last = tmp_path / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    torch.save({**state, "format_version": 99}, last)
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="format 99, newer than this runner reads"):
        fit(compose_cfg, tmp_path, [*TINY, "trainer.max_epochs=2"])
    assert last.read_bytes() == before


LOAD_AND_PREDICT = textwrap.dedent("""
    import sys, torch

    class NoRunner:
        '''Refuses imports of the runner: unpickling a checkpoint must not need it.'''
        def find_spec(self, name, path=None, target=None):
            if name == "runner" or name.startswith("runner."):
                raise ImportError(f"{name} may not be imported while a checkpoint is read")

    blocker = NoRunner()
    sys.meta_path.insert(0, blocker)
    state = torch.load(sys.argv[1] + "/checkpoints/best.pt", weights_only=True)
    assert "runner" not in sys.modules
    sys.meta_path.remove(blocker)

    from components.datasets import synthetic
    from runner import load_run

    run = load_run(sys.argv[1])
    test = synthetic(channels=1, image_size=28, num_classes=10).test   # raw uint8 images, as stored
    predicted = run.predict(test.inputs).argmax(1)
    print((predicted == test.targets).float().mean().item(), run.epoch, run.model.training, run.class_names[:3])
""")


@pytest.mark.e2e
def test_a_plain_script_outside_the_repository_loads_a_run_and_predicts(compose_cfg, tmp_path):
    run = tmp_path / "run"
    fit(compose_cfg, run, [*TINY, "trainer.max_epochs=2"])
    script = tmp_path / "elsewhere" / "predict.py"
    script.parent.mkdir()
    script.write_text(LOAD_AND_PREDICT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(script), str(run)], cwd=script.parent, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    accuracy, epoch, training, names = done.stdout.split(maxsplit=3)
    result = read_result(run)
    assert float(accuracy) == pytest.approx(result["test_metrics"]["test/acc"]) and int(epoch) == result["test_epoch"]
    assert training == "False"


def test_a_run_records_the_git_state_of_the_project_it_started_from(compose_cfg, tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    git = lambda *args: subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (project / "model.py").write_text("x = 1\n")
    git("add", "model.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    (project / "model.py").write_text("x = 2\n")  # a change not committed
    train(compose_cfg(TINY), RunContext(run_dir=tmp_path / "run", started_in=project))
    result = read_result(tmp_path / "run")
    assert result["project_git"] == {"commit": commit, "dirty": True, "root": str(project)}
    assert result["git_commit"] == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                                                  text=True).stdout.strip()


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_the_best_trials_command_reruns_it_from_the_folder_the_sweep_started_in(tmp_path):
    """A sweep started outside the repository, with the user's config folder and package, under the
    parallel launcher: best.yaml's command, run as printed from that folder, gives the same objective."""
    (tmp_path / "mylab.py").write_text(textwrap.dedent("""
        import torch
        class Wide(torch.nn.Module):
            def __init__(self, num_classes, width):
                super().__init__()
                self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, width), torch.nn.ReLU(),
                                               torch.nn.Linear(width, num_classes))
            def forward(self, x):
                return self.net(x)
    """))
    (tmp_path / "myconf" / "model").mkdir(parents=True)
    (tmp_path / "myconf" / "model" / "wide.yaml").write_text(
        "_target_: mylab.Wide\nnum_classes: ${task.num_outputs}\nwidth: 16\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "RUNNER_OUTPUT_DIR": str(tmp_path / "outputs")}
    cores = max(1, len(os.sched_getaffinity(0)) // 2)
    sweep = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "runner", "-m", "--config-dir", "myconf", "model=wide",
                           "hydra/launcher=parallel", f"hydra.launcher.cpus_per_task={cores}",
                           "model.width=8,32", "dataset=synthetic", "trainer.max_epochs=2", "logger=none",
                           "trainer.deterministic=true", "objective=val_loss", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    best = yaml.safe_load((sweep / "best.yaml").read_text())
    assert best["cwd"] == str(tmp_path) and "--config-dir" in best["command"] and "PYTHONPATH=" in best["command"]
    rerun_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}  # the command carries its own
    again = subprocess.run(best["command"] + f" hydra.run.dir={tmp_path / 'again'}", shell=True, cwd=best["cwd"],
                           env=rerun_env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert read_result(tmp_path / "again")["objective"]["value"] == best["objective"]["value"]
