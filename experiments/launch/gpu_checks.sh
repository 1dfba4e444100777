#!/usr/bin/env bash
# The GPU checks and benchmarks, as one script for a short lease of a GPU machine:
#   bash experiments/launch/gpu_checks.sh
# Runs in the repository root with a Python that has JAX (CUDA), Flax, Optax and Orbax; prints
# the card and versions, the GPU tests (the Pallas GPU and cuDNN attention vs XLA, duplex
# decoding in bf16), the duplex decode latency of the tiny and 0.5B models, 0.5B train-step
# time per attention backend, and our step against transformers + torch.compile in one run
# (0.5B, 8 x 4096 packed; needs a CUDA torch: PYTHON may name another venv's python for it).
# Figures from a run go to docs/benchmarks.md.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$py -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
JAX_PLATFORMS=cuda,cpu $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -20
for cfg in embedded qwen2_0_5b; do
  for batch in 1 8; do
    $py experiments/benchmark_duplex.py --config=$cfg --chunks=100 --batch=$batch 2>&1 \
      | grep -v -e xla_bridge -e "^W" -e "^I"
  done
done
$py experiments/benchmark_train_step.py --config=qwen2_0_5b --batch=4 --seq_len=2048 2>&1 \
  | grep -v -e xla_bridge -e "^W" -e "^I"
$py experiments/benchmark_vs_torch.py --config=qwen2_0_5b --batch=8 --seq_len=4096 2>&1 \
  | grep -v -e xla_bridge -e "^W" -e "^I"
