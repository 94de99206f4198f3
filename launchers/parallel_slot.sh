# Sourced (POSIX sh) before each trial of the `parallel` launcher preset (hydra.launcher.setup),
# after `set -- CPUS SLOT_DIR GPUS`: waits for a free run slot on this machine, keeps it for as
# long as the trial runs, and gives the trial its share of the machine.
#   CPUS      cores per trial (hydra.launcher.cpus_per_task)
#   SLOT_DIR  folder of the slot lock files (one per slot, inside the sweep folder)
#   GPUS      GPU ids the sweep may use, comma-separated; "all": every GPU nvidia-smi lists; "": none
# Slots = usable cores // CPUS, and at most one per GPU when there are GPUs. submitit starts every
# trial of a sweep batch at once; the slots are what keep at most that many running.
# A slot is a lock (flock) on SLOT_DIR/<i> held by fd 9, which the trial's controller process
# inherits: it is released when the trial ends, however it ends.
slot_cpus=$1 slot_dir=$2 slot_gpus=$3
case "$slot_cpus" in ''|*[!0-9]*|0)
  echo "parallel launcher: hydra.launcher.cpus_per_task must be a positive integer, got '$slot_cpus'" >&2
  return 1 ;;
esac
if [ "$slot_gpus" = all ]; then
  slot_gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | paste -sd, -)
fi
slot_count=$(( $(nproc) / slot_cpus ))
[ "$slot_count" -ge 1 ] || slot_count=1
if [ -n "$slot_gpus" ]; then
  slot_ngpus=$(echo "$slot_gpus" | tr , '\n' | wc -l)
  [ "$slot_count" -le "$slot_ngpus" ] || slot_count=$slot_ngpus
fi
mkdir -p "$slot_dir"
slot=
while [ -z "$slot" ]; do
  i=0
  while [ "$i" -lt "$slot_count" ]; do
    exec 9>"$slot_dir/$i"
    if flock -n 9; then slot=$i; break; fi
    i=$((i + 1))
  done
  [ -n "$slot" ] || sleep 0.2
done
# torch (and MKL/OpenMP) size their thread pools from these when the trial starts
export OMP_NUM_THREADS="$slot_cpus" MKL_NUM_THREADS="$slot_cpus" RUNNER_SLOT="$slot"
export CUDA_VISIBLE_DEVICES="$(echo "$slot_gpus" | tr , '\n' | sed -n "$((slot + 1))p")"
