"""launchers: where trials run. Trial pools that feed a launcher one trial at a time (pools.py),
the `parallel` launcher's warm workers (workers.py, worker.py, process_state.py), the
`slurm_workers` launcher's warm SLURM jobs fed through files in the sweep folder
(slurm_workers.py, slurm_worker.py, trial_queue.py), the detached sweep driver
(`python -m launchers.detach`) and the scripts of a single-node SLURM cluster (slurm/)."""
