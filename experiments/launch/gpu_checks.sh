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
# The live server (#25): conversations at once for qwen2_0_5b (random weights: a step costs the
# same whatever they are), with recordings and a 4,096-code tokenizer made here from eSpeak.
$py -c "import aiohttp" 2>/dev/null || $py -m pip install -q "aiohttp>=3.10"
$py - <<'PY'
import os
import numpy as np
from data_pipelines.synth.espeak import Synthesizer, Voice
from experiments.configs import get_config
from omniflatten_jax.config import MelConfig
from omniflatten_jax.speech.audio import resample, save_audio
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
synth, waves = Synthesizer(), []
os.makedirs("/tmp/serve_inputs", exist_ok=True)
for i, text in enumerate(["hello there, how are you today", "what is your favourite book",
                          "tell me a joke about computers please", "I would like a cup of tea",
                          "could you tell me the time", "see you tomorrow at the station"] * 8):
    u = synth.speak(text, Voice(["en+m3", "en+f3", "en-us", "en+m7"][i % 4]))
    wave = resample(u.audio, u.sample_rate, 16_000)
    waves.append(wave)
    save_audio(f"/tmp/serve_inputs/{i:02d}.wav", np.concatenate([wave, np.zeros(16_000)]), 16_000)
codes = get_config("qwen2_0_5b", []).layout.num_speech_codes
KMeansMelTokenizer.fit(waves * 3, MelConfig(), codes, seed=0).save("/tmp/serve_tok.npz")
PY
$py experiments/serve_bench.py --config=qwen2_0_5b --speech_tokenizer=/tmp/serve_tok.npz \
  --inputs='/tmp/serve_inputs/*.wav' --conversations=8,16,32,48,64 --seconds=30 2>&1 \
  | grep -v -e xla_bridge -e "^W" -e "^I"
