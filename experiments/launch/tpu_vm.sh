#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice (or several: multi-slice), end to end, from this checkout:
#
#   bash experiments/launch/tpu_vm.sh --workdir=gs://BUCKET/omniflatten [options] [-- RUN_ARGS]
#   bash experiments/launch/tpu_vm.sh --dry_run ...      # (or DRY_RUN=1) print, run nothing
#
# Phases (--phases=..., default create,copy,install,prepare,train):
#   create   the TPU VM (`gcloud compute tpus tpu-vm create`); with --slices=N > 1 a queued
#            resource of N slices (multi-slice needs queued resources), waiting until ACTIVE
#   copy     this checkout's files (tracked and untracked, not ignored) to every worker
#   install  a venv on every worker: the project + jax[tpu] pinned to setup.cfg's JAX
#   prepare  the data, once, on worker 0 of the first slice (CPU work: JAX_PLATFORMS=cpu)
#   train    experiments/run.py --distributed on every worker of every slice, all at once
#   delete   (not in the default) deletes the TPU VM / queued resource
# Resume after a preemption (exit code 143) or any stop: rerun with --phases=train (after a
# spot/preemptible slice is gone: delete, then create,copy,install,train). The workdir (gs://)
# holds the prepared data and checkpoints; the code and venv live on each worker's disk.
#
# Options (flag or environment variable; flags win):
#   --name=NAME (NAME, default omniflatten)       --zone=ZONE (ZONE, default us-east5-a)
#   --accelerator=TYPE (ACCELERATOR, v5p-64)      --runtime=VERSION (RUNTIME_VERSION, by type)
#   --slices=N (SLICES, 1): N > 1 adds --set=mesh.slices=N to training
#   --project=ID (PROJECT)   --spot (SPOT=1)      --detach (DETACH=1): train under nohup, log
#                                                 to ~/omniflatten-train.log on each worker
#   --workdir=gs://... (WORKDIR, required)        --config=NAME (CONFIG, qwen2_0_5b)
#   --stage=STAGE (STAGE, all)                    --data=SOURCE (DATA)
#   --set=section.field=value (repeatable; to prepare and training; SET_ARGS adds more)
#   --phases=LIST (PHASES)   --dry_run (DRY_RUN=1)   -- ARGS...: more run.py flags (EXTRA_ARGS)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME=${NAME:-omniflatten}
ZONE=${ZONE:-us-east5-a}
ACCELERATOR=${ACCELERATOR:-v5p-64}
RUNTIME_VERSION=${RUNTIME_VERSION:-}
SLICES=${SLICES:-1}
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
DETACH=${DETACH:-0}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-qwen2_0_5b}
STAGE=${STAGE:-all}
DATA=${DATA:-}
PHASES=${PHASES:-create,copy,install,prepare,train}
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3.11}  # the runtimes ship Ubuntu 22.04's python3.10; the project needs 3.11
TARBALL=${TARBALL:-${TMPDIR:-/tmp}/omniflatten-jax-code.tgz}
read -r -a SETS <<< "${SET_ARGS:-}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --runtime=*) RUNTIME_VERSION=${1#*=} ;;
    --slices=*) SLICES=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --spot) SPOT=1 ;;
    --detach) DETACH=1 ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --stage=*) STAGE=${1#*=} ;;
    --data=*) DATA=${1#*=} ;;
    --set=*) SETS+=("$1") ;;
    --phases=*) PHASES=${1#*=} ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (--help lists them; run.py flags go after --)" >&2
       exit 2 ;;
  esac
  shift
done
export DRY_RUN

if [ -z "$WORKDIR" ]; then
  echo "error: --workdir=gs://BUCKET/PATH is required: storage every worker shares" >&2
  exit 2
fi
case "$WORKDIR" in
  gs://*) ;;
  *) echo "warning: workdir $WORKDIR is not gs://: every worker must see the same folder" >&2 ;;
esac
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || { echo "error: --slices must be a positive integer" >&2; exit 2; }
tpu_shape "$ACCELERATOR"
RUNTIME_VERSION=${RUNTIME_VERSION:-$TPU_RUNTIME}

gflags=(--zone="$ZONE")
if [ -n "$PROJECT" ]; then gflags+=(--project="$PROJECT"); fi
# The TPU VMs: NAME itself, or the queued resource's nodes NAME-0 ... NAME-(N-1).
nodes=("$NAME")
if [ "$SLICES" -gt 1 ]; then
  nodes=()
  for ((i = 0; i < SLICES; i++)); do nodes+=("$NAME-$i"); done
fi
code='$HOME/omniflatten-jax'
venv="$code/.venv"
data_args=()
if [ -n "$DATA" ]; then data_args+=(--data="$DATA"); fi
common_args=(--config="$CONFIG" --workdir="$WORKDIR" "${data_args[@]}" "${SETS[@]}")
train_args=(--stage="$STAGE" "${common_args[@]}" --distributed)
if [ "$SLICES" -gt 1 ]; then train_args+=(--set=mesh.slices="$SLICES"); fi
train_args+=("${EXTRA[@]}")
prepare_args=(--stage="$(prepare_stage "$STAGE")" "${common_args[@]}")

ssh_all() {  # NODE WORKER COMMAND
  run gcloud compute tpus tpu-vm ssh "$1" "${gflags[@]}" --worker="$2" --command="$3"
}

note "TPU VM recipe: $ACCELERATOR = $TPU_CHIPS chips on $TPU_HOSTS workers x" \
  "$TPU_CHIPS_PER_HOST chips per slice; $SLICES slice(s): ${nodes[*]};" \
  "$((SLICES * TPU_HOSTS)) workers in all; runtime $RUNTIME_VERSION"
note "accelerator JAX: $(jax_requirement tpu) (setup.cfg's jax, experiments/launch/common.sh)"
note "workdir $WORKDIR (shared: prepared data, checkpoints, metrics); config $CONFIG, stage $STAGE"

for phase in ${PHASES//,/ }; do
  case "$phase" in
    create)
      note "create: $( [ "$SLICES" -gt 1 ] && echo "a queued resource of $SLICES slices" \
        || echo "one TPU VM slice")"
      spot=()
      if [ "$SPOT" = 1 ]; then spot=(--spot); fi
      if [ "$SLICES" = 1 ]; then
        run gcloud compute tpus tpu-vm create "$NAME" "${gflags[@]}" \
          --accelerator-type="$ACCELERATOR" --version="$RUNTIME_VERSION" "${spot[@]}"
      else
        run gcloud compute tpus queued-resources create "$NAME" "${gflags[@]}" \
          --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" \
          --node-count="$SLICES" --node-prefix="$NAME" "${spot[@]}"
        if [ "$DRY_RUN" = 1 ]; then
          note "then wait until this prints ACTIVE:"
          run gcloud compute tpus queued-resources describe "$NAME" "${gflags[@]}" \
            --format='value(state.state)'
        else
          until [ "$(gcloud compute tpus queued-resources describe "$NAME" "${gflags[@]}" \
                     --format='value(state.state)')" = ACTIVE ]; do
            echo "waiting for queued resource $NAME to become ACTIVE ..." >&2
            sleep 30
          done
        fi
      fi ;;
    copy)
      note "copy: this checkout's files to every worker, unpacked in ~/omniflatten-jax"
      run bash -c "cd $(quote "$REPO_DIR") && git ls-files -z --cached --others \
--exclude-standard | tar --null -czf $(quote "$TARBALL") -T -"
      for node in "${nodes[@]}"; do
        run gcloud compute tpus tpu-vm scp "$TARBALL" "$node:omniflatten-jax-code.tgz" \
          "${gflags[@]}" --worker=all
        ssh_all "$node" all "mkdir -p $code && tar -xzf \$HOME/omniflatten-jax-code.tgz -C $code"
      done ;;
    install)
      note "install: the venv on every worker, with $(jax_requirement tpu)"
      # shellcheck disable=SC2046  # storage_packages prints zero or one word
      cmd="command -v $PYTHON >/dev/null || (sudo apt-get update -q && sudo apt-get install \
-y -q $PYTHON $PYTHON-venv) && $(install_command tpu "$PYTHON" "$venv" "$code" \
        $(storage_packages "$WORKDIR"))"
      for node in "${nodes[@]}"; do ssh_all "$node" all "$cmd"; done ;;
    prepare)
      note "prepare: once, on worker 0 of ${nodes[0]}; training reads what it writes"
      ssh_all "${nodes[0]}" 0 "cd $code && JAX_PLATFORMS=cpu $venv/bin/python \
experiments/prepare.py $(quote_all "${prepare_args[@]}")" ;;
    train)
      note "train: every worker of every slice ($((SLICES * TPU_HOSTS)) processes) at once;" \
        "exit code 143 = preempted after a checkpoint: rerun with --phases=train to resume"
      train="cd $code && exec $venv/bin/python experiments/run.py $(quote_all "${train_args[@]}")"
      if [ "$DETACH" = 1 ]; then
        train="cd $code && nohup $venv/bin/python experiments/run.py \
$(quote_all "${train_args[@]}") > \$HOME/omniflatten-train.log 2>&1 < /dev/null &"
      fi
      pids=()
      for node in "${nodes[@]}"; do
        if [ "$DRY_RUN" = 1 ] || [ "${#nodes[@]}" = 1 ]; then
          ssh_all "$node" all "$train"
        else
          ssh_all "$node" all "$train" & pids+=($!)  # the slices must start together
        fi
      done
      rc=0
      for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
      if [ "$rc" != 0 ]; then
        echo "training exited with $rc (143: preempted; rerun with --phases=train)" >&2
        exit "$rc"
      fi
      if [ "$DETACH" = 1 ]; then
        note "logs: gcloud compute tpus tpu-vm ssh ${nodes[0]} ${gflags[*]} --worker=0" \
          "--command='tail -f ~/omniflatten-train.log'"
      fi ;;
    delete)
      if [ "$SLICES" = 1 ]; then
        run gcloud compute tpus tpu-vm delete "$NAME" "${gflags[@]}" --quiet
      else
        run gcloud compute tpus queued-resources delete "$NAME" "${gflags[@]}" --force --quiet
      fi ;;
    *) echo "error: unknown phase '$phase' (create copy install prepare train delete)" >&2
       exit 2 ;;
  esac
done
