#!/usr/bin/env bash
# Renders experiments/launch/jobset.yaml (a Kubernetes JobSet: prepare once, then train on GKE
# TPU slices) and prints it; --apply pipes it to `kubectl apply -f -` instead.
#
#   bash experiments/launch/jobset.sh --workdir=gs://BUCKET/omniflatten [options] [-- RUN_ARGS]
#   bash experiments/launch/jobset.sh ... --apply          # DRY_RUN=1 prints even with --apply
#   kubectl get jobset,pods; kubectl logs -f POD           # process 0: <name>-slice-0-0-...
#
# Options (flag or environment variable; flags win):
#   --name=NAME (NAME, omniflatten)               --accelerator=TYPE (ACCELERATOR, v5p-64)
#   --slices=N (SLICES, 1): N > 1 adds --set=mesh.slices=N to training
#   --workdir=gs://... (WORKDIR, required)        --config=NAME (CONFIG, qwen2_0_5b)
#   --stage=STAGE (STAGE, all)                    --data=SOURCE (DATA)
#   --set=section.field=value (repeatable; to prepare and training; SET_ARGS adds more)
#   --repo_url=URL (REPO_URL, default: this checkout's origin)
#   --repo_ref=REF (REPO_REF, default: this checkout's HEAD commit; it must be pushed)
#   --image=IMAGE (IMAGE, python:3.11)   --service_account=SA (SERVICE_ACCOUNT, default)
#   --max_restarts=N (MAX_RESTARTS, 10): JobSet restarts after a failure or preemption
#   --apply   --dry_run (DRY_RUN=1)   -- ARGS...: more run.py flags (EXTRA_ARGS)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NAME=${NAME:-omniflatten}
ACCELERATOR=${ACCELERATOR:-v5p-64}
SLICES=${SLICES:-1}
WORKDIR=${WORKDIR:-}
CONFIG=${CONFIG:-qwen2_0_5b}
STAGE=${STAGE:-all}
DATA=${DATA:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-}
IMAGE=${IMAGE:-python:3.11}
SERVICE_ACCOUNT=${SERVICE_ACCOUNT:-default}
MAX_RESTARTS=${MAX_RESTARTS:-10}
DRY_RUN=${DRY_RUN:-0}
APPLY=0
read -r -a SETS <<< "${SET_ARGS:-}"
read -r -a EXTRA <<< "${EXTRA_ARGS:-}"

while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) NAME=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --slices=*) SLICES=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --stage=*) STAGE=${1#*=} ;;
    --data=*) DATA=${1#*=} ;;
    --set=*) SETS+=("$1") ;;
    --repo_url=*) REPO_URL=${1#*=} ;;
    --repo_ref=*) REPO_REF=${1#*=} ;;
    --image=*) IMAGE=${1#*=} ;;
    --service_account=*) SERVICE_ACCOUNT=${1#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${1#*=} ;;
    --apply) APPLY=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown option $1 (--help lists them; run.py flags go after --)" >&2
       exit 2 ;;
  esac
  shift
done

if [ -z "$WORKDIR" ]; then
  echo "error: --workdir=gs://BUCKET/PATH is required: storage every pod shares" >&2
  exit 2
fi
[[ $SLICES =~ ^[1-9][0-9]*$ ]] || { echo "error: --slices must be a positive integer" >&2; exit 2; }
REPO_URL=${REPO_URL:-$(git -C "$REPO_DIR" remote get-url origin 2>/dev/null || true)}
if [ -z "$REPO_REF" ]; then
  REPO_REF=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || true)
  if [ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    echo "warning: the pods run commit $REPO_REF; this checkout's uncommitted changes are" \
      "not in it" >&2
  fi
fi
for var in REPO_URL REPO_REF; do
  if [ -z "${!var}" ]; then
    if [ "$APPLY" = 1 ] && [ "$DRY_RUN" != 1 ]; then
      echo "error: set $var (--${var,,}=...): the pods clone the code from it" >&2
      exit 2
    fi
    echo "warning: $var is not set; the manifest says <$var>" >&2
    printf -v "$var" '%s' "<$var>"
  fi
done
tpu_shape "$ACCELERATOR"

data_args=()
if [ -n "$DATA" ]; then data_args+=(--data="$DATA"); fi
common_args=(--config="$CONFIG" --workdir="$WORKDIR" "${data_args[@]}" "${SETS[@]}")
train_args=(--stage="$STAGE" "${common_args[@]}" --distributed)
if [ "$SLICES" -gt 1 ]; then train_args+=(--set=mesh.slices="$SLICES"); fi
train_args+=("${EXTRA[@]}")
# shellcheck disable=SC2046  # storage_packages prints zero or one word
declare -A values=(
  [NAME]=$NAME [SLICES]=$SLICES [HOSTS]=$TPU_HOSTS [CHIPS_PER_HOST]=$TPU_CHIPS_PER_HOST
  [TOPOLOGY]=$TPU_TOPOLOGY [GKE_ACCELERATOR]=$TPU_GKE_ACCELERATOR [IMAGE]=$IMAGE
  [SERVICE_ACCOUNT]=$SERVICE_ACCOUNT [MAX_RESTARTS]=$MAX_RESTARTS [WORKDIR]=$WORKDIR
  [REPO_URL]=$(quote "$REPO_URL") [REPO_REF]=$(quote "$REPO_REF")
  [JAX_REQUIREMENT]=$(jax_requirement tpu)
  [TPU_INSTALL]=$(install_command tpu python3 /app/.venv /app $(storage_packages "$WORKDIR"))
  [CPU_INSTALL]=$(install_command cpu python3 /app/.venv /app $(storage_packages "$WORKDIR"))
  [PREPARE_ARGS]=$(quote_all --stage="$(prepare_stage "$STAGE")" "${common_args[@]}")
  [TRAIN_ARGS]=$(quote_all "${train_args[@]}")
)

# The template's body (its header comments explain the placeholders, not this rendering).
manifest=$(sed -n '/^apiVersion:/,$p' "$LAUNCH_DIR/jobset.yaml")
shopt -u patsub_replacement 2>/dev/null || true  # bash 5.2: no '&' magic in replacements
for key in "${!values[@]}"; do
  manifest=${manifest//"\${$key}"/"${values[$key]}"}
done
if [[ $manifest =~ \$\{[A-Z_]+\} ]]; then
  echo "error: jobset.yaml has a placeholder this script does not fill: ${BASH_REMATCH[0]}" >&2
  exit 2
fi

manifest="# experiments/launch/jobset.sh: $ACCELERATOR = $TPU_CHIPS chips: $SLICES slice(s) x \
$TPU_HOSTS hosts x $TPU_CHIPS_PER_HOST chips ($TPU_TOPOLOGY); $(jax_requirement tpu)
$manifest"
if [ "$APPLY" = 1 ] && [ "$DRY_RUN" != 1 ]; then
  echo "+ kubectl apply -f - ($ACCELERATOR: $SLICES slice(s) x $TPU_HOSTS hosts x" \
    "$TPU_CHIPS_PER_HOST chips)" >&2
  printf '%s\n' "$manifest" | kubectl apply -f -
else
  if [ "$APPLY" = 1 ]; then echo "# dry run: would pipe this to: kubectl apply -f -" >&2; fi
  printf '%s\n' "$manifest"
fi
