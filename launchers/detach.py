"""Submit a whole sweep as one light SLURM job (the driver), so that it outlives the terminal.

    python -m launchers.detach [--partition P] [--time T] [--mem M] -- <arguments of python -m runner>

Hydra's SLURM launcher waits, in the process that started the sweep, for every trial to end:
if that process dies (a closed laptop, a login node that logs you out) the sweep is lost. The
driver runs that process on the cluster instead: `python -m runner --multirun <arguments>`
with one CPU; it submits the trials as jobs of their own (hydra/launcher=slurm unless the
arguments choose another launcher) and waits for them. This prints the driver's job id, the
sweep folder (fixed here, so it is known before the driver starts) and the driver's log. The
folder reaches the driver as a quoted override (launchers.detach.hydra_quote): any path works.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

# The driver's own SLURM_* variables (its job id, its one CPU, its memory) must not leak into
# the trials it submits: sbatch and srun read many of them as defaults. SLURM_CONF stays.
CLEAN_SLURM_ENV = (
    'for v in $(env | sed -n "s/^\\(SLURM_[A-Za-z0-9_]*\\)=.*/\\1/p"); do '
    '[ "$v" = SLURM_CONF ] || unset "$v"; done'
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launchers.detach",
        description="Run `python -m runner --multirun ARGS` as a SLURM job that waits for the sweep's trials.",
        epilog="Example: python -m launchers.detach -- hydra/launcher=slurm optimizer.lr=0.1,0.01,0.001",
    )
    parser.add_argument("--partition", help="partition of the driver job (default: the cluster's default); "
                        "pick one whose jobs are not preempted")
    parser.add_argument("--time", help="time limit of the driver job, in sbatch's format (default: the "
                        "partition's); it must cover the whole sweep")
    parser.add_argument("--mem", default="2G", help="memory of the driver job (default: 2G)")
    parser.add_argument("--job-name", default="runner-sweep", help="name of the driver job")
    parser.add_argument("runner_args", nargs=argparse.REMAINDER,
                        help="arguments of `python -m runner --multirun`, after `--`")
    options = parser.parse_args(argv)
    args = options.runner_args[1:] if options.runner_args[:1] == ["--"] else options.runner_args
    args = [a for a in args if a not in ("--multirun", "-m")]
    if not any(a.startswith(("hydra/launcher=", "override hydra/launcher=")) for a in args):
        args = ["hydra/launcher=slurm", *args]

    try:
        sweep_dir = resolve_sweep_dir(args)
    except Exception as error:  # a config that does not compose: Hydra's own message
        print(f"launchers.detach: these arguments do not compose: {error}", file=sys.stderr)
        return 1
    sweep_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "runner", "--multirun", *args, f"hydra.sweep.dir={hydra_quote(str(sweep_dir))}"]
    sbatch = [
        "sbatch", "--parsable",
        f"--job-name={options.job_name}",
        "--ntasks=1", "--cpus-per-task=1", f"--mem={options.mem}",
        # requeued, it would submit every trial again next to the ones still running
        "--no-requeue",
        f"--chdir={os.getcwd()}",
        # sbatch reads % in a file name as a pattern: %% is a literal one
        f"--output={str(sweep_dir).replace('%', '%%')}/driver-%j.log",
    ]
    if options.partition:
        sbatch.append(f"--partition={options.partition}")
    if options.time:
        sbatch.append(f"--time={options.time}")
    sbatch.append(f"--wrap={CLEAN_SLURM_ENV}; exec {shlex.join(command)}")
    try:
        submitted = subprocess.run(sbatch, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        print("launchers.detach: sbatch not found: is this a SLURM login node? "
              "(a local one: launchers/slurm/start.sh)", file=sys.stderr)
        return 1
    if submitted.returncode != 0:
        print(f"launchers.detach: sbatch refused the driver job:\n{submitted.stderr.strip()}", file=sys.stderr)
        return 1
    job_id = submitted.stdout.strip().split(";")[0]
    print(f"driver job: {job_id}")
    print(f"sweep dir:  {sweep_dir}")
    print(f"driver log: {sweep_dir}/driver-{job_id}.log")
    print(f"follow it with `tail -f {sweep_dir}/driver-{job_id}.log`, stop it with `scancel {job_id}` "
          f"(trials already submitted run on: `squeue --me` lists them)")
    return 0


def resolve_sweep_dir(args: list[str]) -> Path:
    """The sweep folder the arguments give, resolved now (its timestamp included), as an absolute path.

    Composes the config here as `python -m runner --multirun ARGS` composes it (the same argument
    parser, config folder, --config-dir and --config-name), so paths.output_dir, RUNNER_OUTPUT_DIR
    and an explicit hydra.sweep.dir all count, and sweep overrides are taken as the sweep takes them.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import setup_globals
    from hydra.types import RunMode

    from runner.paths import CONF_DIR

    options = get_args_parser().parse_args(args)
    search_path = create_automatic_config_search_path(None, None, str(options.config_path or CONF_DIR))
    if options.config_dir is not None:
        from hydra.core.config_search_path import SearchPathQuery

        config_dir = Path(options.config_dir).absolute()
        if not config_dir.is_dir():
            raise ValueError(f"--config-dir {config_dir} is not a folder")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}",
                            anchor=SearchPathQuery(provider="schema"))
    setup_globals()
    try:
        hydra = Hydra.create_main_hydra2(task_name="runner", config_search_path=search_path)
        config = hydra.compose_config(options.config_name or "config", options.overrides,
                                      run_mode=RunMode.MULTIRUN, with_log_configuration=False)
    finally:
        GlobalHydra.instance().clear()
    return Path(str(config.hydra.sweep.dir)).absolute()


def hydra_quote(value: str) -> str:
    """VALUE as one quoted value of Hydra's override grammar: commas, spaces, = and quotes stay literal.

    Inside Hydra's quotes a quote is escaped with a backslash, backslashes are literal except right
    before a quote or at the end (there they are doubled), and `${` would start an interpolation
    (escaped as `\\${`).
    """
    def escape(match: re.Match) -> str:
        backslashes, what = match.group(1), match.group(2)
        return backslashes * 2 + ("\\" + what if what else "")

    return "'" + re.sub(r"(\\*)('|\$\{|$)", escape, value) + "'"


if __name__ == "__main__":
    sys.exit(main())
