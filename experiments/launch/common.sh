# Shared by the launch recipes (tpu_vm.sh, slurm_gpu.sh, jobset.sh); sourced, never run.
#
# The one place that says which JAX the accelerators get and how a host installs the project:
#   JAX_VERSION          the floor in setup.cfg (`jax>=X`), the version the tests run on; every
#                        recipe pins the accelerator build to exactly it
#   jax_requirement ACC  tpu -> jax[tpu]==X (its extra pins the matching libtpu),
#                        cuda12 | cuda13 -> jax[cuda12]==X (CUDA and cuDNN come as wheels),
#                        cpu -> jax==X
#   install_command ACC PYTHON VENV CODE [PACKAGES...]
#                        one shell line that creates VENV and installs CODE (editable) with it
# and the helpers they share: `run` (print a command; run it unless DRY_RUN=1), `quote`,
# `tpu_shape` (chips, hosts and topology of a TPU accelerator type).

if [ "${BASH_VERSINFO[0]}" -lt 4 ] || { [ "${BASH_VERSINFO[0]}" = 4 ] && [ "${BASH_VERSINFO[1]}" -lt 4 ]; }; then
  echo "error: the launch recipes need bash >= 4.4 (macOS: brew install bash)" >&2
  exit 2
fi

LAUNCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAUNCH_DIR/../.." && pwd)

JAX_VERSION=${JAX_VERSION:-$(sed -n 's/^[[:space:]]*jax>=\([0-9][0-9.]*\).*/\1/p' \
  "$REPO_DIR/setup.cfg" | sed -n 1p)}
if [ -z "$JAX_VERSION" ]; then
  echo "error: no 'jax>=X' line in $REPO_DIR/setup.cfg to pin the accelerator build to" >&2
  exit 2
fi

jax_requirement() {
  case "$1" in
    tpu) echo "jax[tpu]==$JAX_VERSION" ;;
    cuda12|cuda13) echo "jax[$1]==$JAX_VERSION" ;;
    cpu) echo "jax==$JAX_VERSION" ;;
    *) echo "error: unknown accelerator '$1' (tpu, cuda12, cuda13 or cpu)" >&2; return 2 ;;
  esac
}

# One line of shell: a virtual environment at VENV with the project at CODE installed editable
# (setup.cfg's dependencies) and JAX pinned for the accelerator, plus any extra PACKAGES (gcsfs
# when the workdir is a gs:// bucket). Paths are double-quoted so the line can sit inside a
# single-quoted remote command; use $HOME rather than ~ in them.
install_command() {
  local acc=$1 python=$2 venv=$3 code=$4 req pkg extra=""
  shift 4
  req=$(jax_requirement "$acc") || return 2
  for pkg in "$@"; do extra+=" \"$pkg\""; done
  printf '%s -m venv "%s" && "%s/bin/pip" install -q --upgrade pip && ' "$python" "$venv" "$venv"
  printf '"%s/bin/pip" install -q -e "%s" "%s"%s\n' "$venv" "$code" "$req" "$extra"
}

# Packages a workdir needs beyond setup.cfg: etils.epath reads and writes gs:// through gcsfs.
storage_packages() {
  case "$1" in gs://*) echo gcsfs ;; esac
}

# A word as bash reads it back: as is when it is plain, else in single quotes (after the
# `--flag=` of an option, which reads better and means the same).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
    printf '%s' "$1"
  elif [[ $1 =~ ^(--?[A-Za-z0-9_-]+=)(.+)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote "${BASH_REMATCH[2]}"
  else
    local q="'\\''"
    printf "'%s'" "${1//\'/$q}"
  fi
}

quote_all() {
  local a out=""
  for a in "$@"; do out+="${out:+ }$(quote "$a")"; done
  printf '%s' "$out"
}

# Prints the command, one line that bash reads back as the same words; runs it unless DRY_RUN=1
# (then stdout is the plan: commands, and `#` lines that explain them).
run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    quote_all "$@"; echo
  else
    echo "+ $(quote_all "$@")" >&2
    "$@"
  fi
}

note() { echo "# $*"; }

# tpu_shape ACCELERATOR sets TPU_CHIPS, TPU_HOSTS, TPU_CHIPS_PER_HOST, TPU_TOPOLOGY (GKE's
# gke-tpu-topology), TPU_GKE_ACCELERATOR (GKE's gke-tpu-accelerator) and TPU_RUNTIME (the TPU VM
# software version), as experiments/tpu_topology.py computes them (the one place slice shapes
# are decided; plan.py reads the same). TOPOLOGY=AxBxC overrides the computed grid.
tpu_shape() {
  local shape
  shape=$(python3 "$(dirname "${BASH_SOURCE[0]}")/../tpu_topology.py" "$1") || return 2
  eval "$shape"
  if [ -n "${TOPOLOGY:-}" ]; then TPU_TOPOLOGY=$TOPOLOGY; fi
}

# The prepare step's --stage for a training --stage: the datasets that stage reads.
prepare_stage() {
  case "$1" in
    alignment) echo alignment ;;
    all) echo all ;;
    *) echo dialogue ;;
  esac
}
