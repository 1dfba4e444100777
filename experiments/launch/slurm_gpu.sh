#!/usr/bin/env bash
#SBATCH --job-name=omniflatten
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
#
# Trains on a multi-node GPU SLURM cluster. Submit from the repository root, which must be on
# storage every node sees (NFS/Lustre), like the workdir:
#
#   sbatch experiments/launch/slurm_gpu.sh --workdir=/shared/omniflatten [options] [-- RUN_ARGS]
#   sbatch --nodes=8 --ntasks-per-node=8 experiments/launch/slurm_gpu.sh ...   # per-GPU mode
#   bash experiments/launch/slurm_gpu.sh --dry_run --nodes=4 --gpus_per_node=8 ...  # print only
#
# What it does, in the batch step (on the first node):
#   1. install, once: a venv on shared storage (VENV, default build/venv-cuda12 in the repo) with
#      the project and jax[cuda12] pinned to setup.cfg's JAX; skipped while its stamp matches
#   2. prepare, once: `srun --nodes=1 --ntasks=1` of `python experiments/prepare.py`
#      (CPU work: JAX_PLATFORMS=cpu)
#   3. train: `srun` of experiments/run.py --distributed on every task, with explicit
#      --coordinator_address=FIRST_NODE:PORT --num_processes=$SLURM_NTASKS
#      --process_id=$SLURM_PROCID (PORT as JAX's SLURM auto-detection picks it: 61440 + job id
#      mod 4096). Without those three flags JAX would detect the same values from SLURM itself.
#
# Two modes, chosen by the tasks per node (--ntasks-per-node to sbatch, or --mode=):
#   per_node (default, 1 task per node): one process owns all the node's GPUs. JAX's SLURM
#     detection would give each process only GPU $SLURM_LOCALID (= 0), so the recipe sets
#     JAX_LOCAL_DEVICE_IDS=0,1,...,7: every local GPU.
#   per_gpu (--ntasks-per-node = GPUs per node): one process per GPU. Every task sees all the
#     node's GPUs (srun --gpu-bind=none) and takes GPU $SLURM_LOCALID (JAX_LOCAL_DEVICE_IDS);
#     jax.devices() still lists every GPU of the job, jax.local_devices() the task's one.
#
# Preemption and the time limit: SLURM sends SIGTERM (--signal=TERM@300: 5 minutes before the
# limit); run.py saves at the next step all hosts agree on and exits 143; the script then
# requeues the job (scontrol requeue), and the requeued job resumes from that checkpoint.
#
# Options (flag or environment variable; flags win):
#   --workdir=DIR (WORKDIR, default REPO/workdir)  --config=NAME (CONFIG, qwen2_0_5b)
#   --stage=STAGE (STAGE, all)   --data=SOURCE (DATA)
#   --set=section.field=value (repeatable; to prepare and training; SET_ARGS adds more)
#   --mode=per_node|per_gpu (MODE)   --gpu=cuda12|cuda13 (GPU_EXTRA, cuda12)
#   --venv=DIR (VENV)   --python=EXE (PYTHON, python3; 3.11 or newer)
#   --dry_run (DRY_RUN=1): print the commands, run nothing; no allocation needed. Then the
#     shape comes from --nodes=N --gpus_per_node=G [--ntasks_per_node=T] (or SLURM_JOB_NUM_NODES,
#     SLURM_GPUS_ON_NODE, SLURM_NTASKS_PER_NODE, SLURM_JOB_NODELIST, SLURM_JOB_ID)
#   -- ARGS...: more run.py flags (EXTRA_ARGS)
set -euo pipefail
# sbatch runs a copy of this file from its spool folder: find the repository from the submit dir.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "$here/common.sh" ]; then here=${SLURM_SUBMIT_DIR:-$PWD}/experiments/launch; fi
source "$here/common.sh"

WORKDIR=${WORKDIR:-$REPO_DIR/workdir}
CONFIG=${CONFIG:-qwen2_0_5b}
STAGE=${STAGE:-all}
DATA=${DATA:-}
MODE=${MODE:-}
GPU_EXTRA=${GPU_EXTRA:-cuda12}
VENV=${VENV:-}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
NODES=${SLURM_JOB_NUM_NODES:-}
GPUS_PER_NODE=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}
GPUS_PER_NODE=${GPUS_PER_NODE##*:}  # "h100:8" -> 8
TASKS_PER_NODE=${SLURM_NTASKS_PER_NODE:-}
read -r -a SETS <<< "${SET_ARGS:-}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --workdir=*) WORKDIR=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --stage=*) STAGE=${1#*=} ;;
    --data=*) DATA=${1#*=} ;;
    --set=*) SETS+=("$1") ;;
    --mode=*) MODE=${1#*=} ;;
    --gpu=*) GPU_EXTRA=${1#*=} ;;
    --venv=*) VENV=${1#*=} ;;
    --python=*) PYTHON=${1#*=} ;;
    --nodes=*) NODES=${1#*=} ;;
    --gpus_per_node=*) GPUS_PER_NODE=${1#*=} ;;
    --ntasks_per_node=*) TASKS_PER_NODE=${1#*=} ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) sed -n '13,/^set -euo/p' "$here/slurm_gpu.sh" | sed '$d; s/^# \{0,1\}//'
               exit 0 ;;
    *) echo "error: unknown option $1 (--help lists them; run.py flags go after --)" >&2
       exit 2 ;;
  esac
  shift
done
export DRY_RUN
if [ "$DRY_RUN" != 1 ] && [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: not in a SLURM job: submit with sbatch (or print the plan with --dry_run)" >&2
  exit 2
fi

NODES=${NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
case "$MODE" in
  per_node) TASKS_PER_NODE=1 ;;
  per_gpu) TASKS_PER_NODE=$GPUS_PER_NODE ;;
  "") TASKS_PER_NODE=${TASKS_PER_NODE:-1} ;;
  *) echo "error: --mode must be per_node or per_gpu, not $MODE" >&2; exit 2 ;;
esac
TASKS_PER_NODE=${TASKS_PER_NODE%%(*}  # "8(x4)" -> 8
if [ "$TASKS_PER_NODE" = 1 ]; then
  MODE=per_node
  local_ids=$(seq -s, 0 $((GPUS_PER_NODE - 1)))  # every GPU of the node
  bind=()
elif [ "$TASKS_PER_NODE" = "$GPUS_PER_NODE" ]; then
  MODE=per_gpu
  local_ids='$SLURM_LOCALID'  # expanded by each task: its own GPU
  bind=(--gpu-bind=none)
else
  echo "error: $TASKS_PER_NODE tasks per node with $GPUS_PER_NODE GPUs: use 1 (per_node) or" \
    "$GPUS_PER_NODE (per_gpu)" >&2
  exit 2
fi
NTASKS=$((NODES * TASKS_PER_NODE))

# The coordinator: process 0's host, the first node of the allocation.
first_node() {  # "gpu[003-006,9],x" -> gpu003 (the same parse as JAX's SLURM detection)
  local list=$1 prefix rest
  prefix=${list%%[\[,]*}
  if [ "${list:${#prefix}:1}" = "[" ]; then
    rest=${list:${#prefix}+1}
    echo "$prefix${rest%%[-,\]]*}"
  else
    echo "$prefix"
  fi
}
NODELIST=${SLURM_JOB_NODELIST:-node[1-$NODES]}
if [ "$DRY_RUN" != 1 ] && command -v scontrol >/dev/null; then
  coordinator_host=$(scontrol show hostnames "$NODELIST" | sed -n 1p)  # reads all: no SIGPIPE
else
  coordinator_host=$(first_node "$NODELIST")
fi
job_id=${SLURM_JOB_ID:-0}
PORT=${COORDINATOR_PORT:-$(( ${job_id//[!0-9]/} % 4096 + 61440 ))}
COORDINATOR=$coordinator_host:$PORT

VENV=${VENV:-$REPO_DIR/build/venv-$GPU_EXTRA}
python_exe=$VENV/bin/python
data_args=()
if [ -n "$DATA" ]; then data_args+=(--data="$DATA"); fi
common_args=(--config="$CONFIG" --workdir="$WORKDIR" "${data_args[@]}" "${SETS[@]}")
prepare_args=(--stage="$(prepare_stage "$STAGE")" "${common_args[@]}")
train_args=(--stage="$STAGE" "${common_args[@]}" --distributed "${EXTRA[@]}")

note "SLURM GPU recipe: $NODES nodes x $GPUS_PER_NODE GPUs, mode $MODE: $NTASKS tasks" \
  "($TASKS_PER_NODE per node, $((GPUS_PER_NODE / TASKS_PER_NODE)) GPU(s) each)," \
  "coordinator $COORDINATOR"
note "accelerator JAX: $(jax_requirement "$GPU_EXTRA") (setup.cfg's jax," \
  "experiments/launch/common.sh)"
note "workdir $WORKDIR (shared: prepared data, checkpoints, metrics); config $CONFIG, stage $STAGE"

# 1. The venv, once (on shared storage): reinstalled only when setup.cfg or the pin changes.
stamp=$VENV/.omniflatten-installed
want="$(jax_requirement "$GPU_EXTRA") $(sha256sum "$REPO_DIR/setup.cfg" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  note "install: $VENV is up to date ($want)"
else
  note "install: the venv on shared storage, once"
  run bash -c "$(install_command "$GPU_EXTRA" "$PYTHON" "$VENV" "$REPO_DIR" \
    $(storage_packages "$WORKDIR"))"
  if [ "$DRY_RUN" != 1 ]; then echo "$want" > "$stamp"; fi
fi

# 2. The data, once, by one task.
note "prepare: once, one task on one node"
run srun --nodes=1 --ntasks=1 --chdir="$REPO_DIR" --export=ALL,JAX_PLATFORMS=cpu \
  "$python_exe" experiments/prepare.py "${prepare_args[@]}"

# 3. Training on every task.
note "train: $NTASKS processes; JAX_LOCAL_DEVICE_IDS=$local_ids; exit code 143 (preempted," \
  "after a checkpoint) requeues the job, which resumes"
rc=0
run srun --nodes="$NODES" --ntasks="$NTASKS" --ntasks-per-node="$TASKS_PER_NODE" \
  --gpus-per-node="$GPUS_PER_NODE" "${bind[@]}" --kill-on-bad-exit=1 --chdir="$REPO_DIR" \
  bash -c "export JAX_LOCAL_DEVICE_IDS=$local_ids; exec $(quote "$python_exe") \
experiments/run.py $(quote_all "${train_args[@]}") --coordinator_address=$COORDINATOR \
--num_processes=$NTASKS --process_id=\$SLURM_PROCID" || rc=$?
if [ "$rc" = 143 ] && [ "$DRY_RUN" != 1 ] && [ "${REQUEUE:-1}" = 1 ]; then
  echo "training stopped for preemption (exit 143): requeueing job $SLURM_JOB_ID" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
