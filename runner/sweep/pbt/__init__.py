"""Population Based Training across a sweep's trials, coordinated through files in the sweep folder.

PBT (Jaderberg et al. 2017; Ray Tune's PopulationBasedTraining) trains a sweep's trials side by
side. At each perturbation point (every `perturbation_interval` epochs from `burn_in` on, below
`trainer.max_epochs`) a trial saves its checkpoint, records its objective and decides on its own,
never waiting for another trial: if it is in the bottom `quantile_fraction` of the trials that
recorded the same epoch, it copies a random top-quantile trial's checkpoint (weights, optimizer,
scheduler, step and random states) with that trial's hyperparameters ("exploit"), perturbs them
("explore") and trains on from there in its own folder.

Trials share no memory, server or database. They meet in one append-only file,
`SWEEP_DIR/pbt_global.jsonl`, read and extended under a file lock (runner.sweep.shared_log.SharedLog): one
line per trial and perturbation point with its value, its hyperparameters, its checkpoint and the
decision. A trial compares itself with the records of the *same epoch*: trials of one sweep may run
all at once, two at a time or one after another (a local sweep), and a trial at epoch 2 is
compared with what others had at epoch 2, never with a trial that has already finished.

Files:
- `SWEEP_DIR/pbt_global.jsonl`: the global log, every perturbation point of every trial;
- `TRIAL/checkpoints/pbt_epoch_NNNN.pt`: the trial's state at each perturbation point, what donors
  are copied from (written atomically before the record that names it);
- `TRIAL/checkpoints/pbt_donor_epoch_NNNN.pt`: the donor's checkpoint, hard-linked (or copied)
  under the lock when the decision is made, so nothing it refers to can disappear;
- `TRIAL/pbt_policy.jsonl`: the lineage of the trial's weights: where it started and every exploit
  (epoch, trial, donor, old, copied and new values), copied from the donor's and extended. It is
  the schedule a replay (`pbt=replay pbt.policy=TRIAL`) trains with.

Decisions are final: a resumed trial that reaches a perturbation point it recorded before applies
the recorded decision again (from the donor checkpoint it linked) instead of deciding anew.
Only trials of one *population* are compared: trials whose configs are the same apart from the
mutated keys and what a resume may change (runner.config.resume.MAY_CHANGE, trainer.max_epochs
excepted), since only their weights fit each other.

Modules: records (the global log, the population and each decision), live_values (the mutated
values of a running fit: read, checked, set), policy (a trial's lineage and the schedule it
amounts to), trial (the callback of a PBT trial: record, decide, exploit, explore), replay (the
callback that retrains one run on a lineage's schedule). PBT's settings and the explore step
itself are checked and drawn in runner.config.pbt.

Imports runner.run (the callback base, checkpoints), runner.config, runner.sweep.shared_log and the
base modules; no torch at load time: the config checks run before torch is imported.
"""

# the `_target_`s of conf/pbt/*.yaml (runner.config.pbt's POPULATION_TARGET and REPLAY_TARGET); a
# checkpoint stores them with its config and a resume refuses a config that differs, so they stay
from runner.sweep.pbt.replay import Replay
from runner.sweep.pbt.trial import PopulationBasedTraining

__all__ = ["PopulationBasedTraining", "Replay"]
