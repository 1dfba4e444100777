"""Prepares a stage's data in the workdir, once: speech tokenizer, token layout, TFDS dataset.

A dataset is built in the calling process or by Apache Beam (`beam_build`) on any runner
(`runners.Runner`; `run.py` uses ``auto``: one process for a small corpus, the DirectRunner for
a large one); both write the same records under the same cache key, so a training run reuses a
dataset whichever way it was built.

Everything is cached under ``WORKDIR/data`` and keyed by the settings it depends on and by a
fingerprint of its inputs (`data_pipelines.inputs`), so a second run reuses it, and a changed
setting or input file rebuilds only what it affects (the log says what changed). A dataset is
built in a staging folder and moved into place when finished: a failed or killed build leaves
nothing that passes as a dataset.

One dataset per pod: on several hosts, process 0 alone fits the tokenizer and builds the
dataset while the others wait; then every host reads what it wrote (the workdir must be shared
storage) and the hosts compare the dataset's fingerprint, which checkpoints also record. A
launcher may run the step of its own first, on one machine:

    python experiments/prepare.py --workdir=DIR [--config=NAME --data=... --set=...]
        [--runner=direct|auto|local|dataflow|flink|spark] [-- BEAM PIPELINE OPTIONS]
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable

import jax
from etils import epath

from data_pipelines import inputs as data_inputs
from data_pipelines.builders import speech_text
from data_pipelines.corpus import speech_text_items, split_of, start_afresh_if_synthesised
from data_pipelines.runners import Runner
from omniflatten_jax.config import DialogueConfig, ExperimentConfig, to_dict
from omniflatten_jax.config.stages import ALIGNMENT
from omniflatten_jax.distributed import hosts, paths
from omniflatten_jax.speech import load_speech_tokenizer
from omniflatten_jax.speech.activity import speech_problem
from omniflatten_jax.speech.audio import AudioError
from omniflatten_jax.speech.kmeans import KMeansMelTokenizer
from omniflatten_jax.stage_plan import dialogue_plans, plan_stage

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreparedData:
    data_dir: str  # the TFDS data_dir
    config_name: str  # the dataset's builder config (its cache key)
    tokenizer_path: str
    report: dict  # the build report: kept and skipped counts (build_report.json)
    # sha256 of what the dataset is: its name, token layout, tokenizer, split sizes and shards
    fingerprint: str

    def speech_tokenizer_bytes(self) -> bytes:
        """The tokenizer file itself: what every checkpoint of the stage stores."""
        return epath.Path(self.tokenizer_path).read_bytes()


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _file_hash(path: str) -> str:
    return hashlib.sha256(epath.Path(path).read_bytes()).hexdigest()[:10]


def _on_process_0(what: str, build: Callable[[], str]) -> str:
    """Runs `build` on process 0 while the other hosts wait, and returns its result (a short
    string: the inputs' key) on every host; a failure there stops every host (process 0
    raises its own error, the others say where to look)."""
    error, result = None, None
    if hosts.is_primary():
        try:
            result = build()
        except BaseException as e:  # re-raised below, after the other hosts are told
            error = e
    if hosts.any_host(error is not None):
        if error is not None:
            raise error
        raise RuntimeError(f"process 0 failed to prepare {what}: see its log")
    return hosts.from_primary(result)


STAGING_PREFIX = ".staging-"
STALE_STAGING_S = 24 * 3600


@contextlib.contextmanager
def _staging(data_dir: str, name: str, config_name: str):
    """A private TFDS data_dir to build `name/config_name` in; on success its folder is moved
    to `data_dir` (a rename on a local disk; on object stores a copy whose build report, the
    mark of a finished dataset, is written last). Always removed afterwards."""
    root = epath.Path(data_dir)
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f"{STAGING_PREFIX}*"):  # left by killed builds
        with contextlib.suppress(OSError):
            if time.time() - old.stat().mtime > STALE_STAGING_S:
                shutil.rmtree(old) if not paths.is_url(str(old)) else old.rmtree()
    staging = root / f"{STAGING_PREFIX}{config_name}-{uuid.uuid4().hex[:8]}"
    try:
        yield str(staging)
        _publish(staging / name / config_name, root / name / config_name)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging) if not paths.is_url(str(staging)) else staging.rmtree()


def _publish(built: epath.Path, final: epath.Path) -> None:
    if (final / "build_report.json").exists():
        return  # another build of the same key finished first: same content
    final.parent.mkdir(parents=True, exist_ok=True)
    if not paths.is_url(str(final)):
        if final.exists():  # an unfinished folder of an older version of this code
            shutil.rmtree(final)
        os.rename(built, final)
        return
    files = sorted(p for p in built.rglob("*") if p.is_file())
    report = built / "build_report.json"
    for path in [p for p in files if p != report] + [report]:
        target = final / path.relative_to(built)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.copy(target, overwrite=True)


def _read_prepared(data_dir: str, name: str, config_name: Callable[[], str],
                   tokenizer_path: str, layout) -> PreparedData:
    """What process 0 built, as this host sees it; the hosts must agree on its fingerprint.
    `config_name` (the dataset's cache key) hashes the tokenizer file, so it is asked for only
    once the file is known to be there."""
    found = epath.Path(tokenizer_path).exists()
    folder = epath.Path(data_dir) / name / (config_name() if found else "?")
    report_path = folder / "build_report.json"
    missing = not (found and report_path.exists())
    if hosts.any_host(missing):  # every host stops, not only the one that misses it
        raise FileNotFoundError(
            f"process {jax.process_index()} does not see the dataset process 0 built "
            f"({tokenizer_path if not found else report_path} is missing): the workdir must "
            "be storage every host shares (a gs:// bucket, NFS, Lustre), or run `python -m "
            "data_pipelines.prepare` where all hosts can read its output" if missing else
            f"another host does not see the dataset process 0 built ({report_path}): the "
            "workdir must be storage every host shares")
    report = json.loads(report_path.read_text())
    infos = sorted(folder.glob("*/dataset_info.json"))
    fingerprint = hashlib.sha256(json.dumps({
        "dataset": f"{name}/{folder.name}", "layout": layout.to_dict(),
        "speech_tokenizer": _file_hash(tokenizer_path), "report": report,
        "info": [json.loads(p.read_text()).get("splits") for p in infos]},
        sort_keys=True).encode()).hexdigest()
    hosts.agree(f"the prepared dataset {folder}", fingerprint,
                "every host must read the same workdir (shared storage)")
    return PreparedData(data_dir, folder.name, tokenizer_path, report, fingerprint)


def speech_tokenizer_file(cfg: ExperimentConfig, data_root: str, inputs_key: str) -> str:
    """Where the speech tokenizer is: the configured file, or the embedded k-means one's place
    in the workdir (keyed by the corpus, its inputs' fingerprint `inputs_key` and the settings
    it is fitted with)."""
    if cfg.speech.tokenizer_path:
        return cfg.speech.tokenizer_path
    seed = plan_stage(cfg, ALIGNMENT).train.seed
    source = {k: v for k, v in to_dict(cfg.data).items()
              if k in ("source", "language", "max_utterances", "min_audio_seconds")}
    key = _key(source, to_dict(cfg.speech), cfg.layout.num_speech_codes, seed, inputs_key)
    return paths.join(data_root, f"speech_tokenizer-{key}.npz")


def _speech_text_inputs(cfg: ExperimentConfig) -> tuple[dict, data_inputs.Inputs]:
    items = speech_text_items(cfg.data, plan_stage(cfg, ALIGNMENT).train.seed)
    return items, data_inputs.speech_text_inputs(cfg.data.source, cfg.data.language, items)


def speech_tokenizer(cfg: ExperimentConfig, data_root: str, items: dict,
                     inputs_key: str) -> str:
    """The tokenizer file: the configured one, or the embedded k-means one fitted once on the
    speech-text corpus (`items`, read from `cfg.data` when not given) with the alignment
    stage's seed: every stage's speech ids mean the same sounds. The fit is deterministic
    (seeded sampling and k-means), and on a pod only process 0 runs it."""
    path = speech_tokenizer_file(cfg, data_root, inputs_key)
    if cfg.speech.tokenizer_path:
        tok = load_speech_tokenizer(path)
        if tok.num_codes != cfg.layout.num_speech_codes:
            raise ValueError(f"{cfg.speech.tokenizer_path} has {tok.num_codes} codes but the "
                             f"token layout has {cfg.layout.num_speech_codes} speech ids")
        return path
    if epath.Path(path).exists():
        return path
    seed = plan_stage(cfg, ALIGNMENT).train.seed
    start = time.perf_counter()
    mel = cfg.speech.mel
    waves, unreadable, not_speech = [], 0, 0
    tried = items["train"][:cfg.speech.fit_max_utterances]
    for item in tried:
        start_afresh_if_synthesised(item)  # the audio the dataset will hold
        for audio in dict.fromkeys((item.audio, item.tts_audio)):  # ordered: reproducible
            try:
                wave = audio.load(mel.sample_rate, cfg.data.min_audio_seconds)
            except AudioError:
                unreadable += 1
                continue  # counted when the dataset is built
            if cfg.data.check_speech_activity and speech_problem(wave, mel.sample_rate):
                not_speech += 1
                continue  # silence or a 1e6-amplitude file would skew the k-means fit
            waves.append(wave)
    if not waves:
        raise ValueError(
            f"no usable audio to fit the speech tokenizer on: of the {len(tried)} train "
            f"utterances of {cfg.data.source} it read, {unreadable} recordings could not be "
            f"read (or are shorter than data.min_audio_seconds={cfg.data.min_audio_seconds}) "
            f"and {not_speech} are not speech (data.check_speech_activity); give a train split "
            "with speech, or a fitted tokenizer (speech.tokenizer_path)")
    tok = KMeansMelTokenizer.fit(waves, mel, cfg.layout.num_speech_codes, seed,
                                 cfg.speech.fit_max_frames)
    with tempfile.TemporaryDirectory() as scratch:
        local = os.path.join(scratch, "tokenizer.npz")
        tok.save(local)
        tmp = epath.Path(path + ".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(epath.Path(local).read_bytes())
        tmp.rename(path)  # never leave a half-written tokenizer behind
    log.info("fitted the speech tokenizer (%d codes, %d Hz) on %d utterances in %.0f s: %s",
             tok.num_codes, mel.frame_rate, len(waves), time.perf_counter() - start, path)
    return path


def prepare_speech_text(cfg: ExperimentConfig, workdir: str,
                        runner: Runner = Runner()) -> PreparedData:
    """The alignment stage's dataset (split and tokenized with its plan's seed, examples
    checked against its row length), built by process 0 (in that process, or on a Beam
    `runner`) and read by every host."""
    plan = plan_stage(cfg, ALIGNMENT)
    data_root = paths.join(workdir, "data")
    data_dir = paths.join(data_root, "tfds")
    kind = cfg.data.source.split(":")[0]

    def config_name(inputs_key: str) -> str:
        data = {k: v for k, v in to_dict(cfg.data).items()
                if k not in ("asr_fraction", "num_workers", "num_packing_bins")}
        return f"{kind}_" + _key(data, cfg.layout.to_dict(),
                                 _file_hash(speech_tokenizer_file(cfg, data_root, inputs_key)),
                                 plan.train.seq_len, str(speech_text.OmniflattenSpeechText.VERSION),
                                 inputs_key)

    def build() -> str:
        epath.Path(data_root).mkdir(parents=True, exist_ok=True)
        items, inputs = _speech_text_inputs(cfg)
        tokenizer_path = speech_tokenizer(cfg, data_root, items, inputs.key)
        name = config_name(inputs.key)
        datasets = paths.join(data_dir, speech_text.NAME)
        if (epath.Path(datasets) / name / "build_report.json").exists():
            return inputs.key
        log.info("building speech-text dataset %s (%s)", name,
                 data_inputs.why_rebuild(inputs, datasets, name))
        context = speech_text.BuildContext(
            load_speech_tokenizer(tokenizer_path), cfg.layout, cfg.data, plan.train.seq_len,
            speech_text.held_out_repeats(items), tokenizer_path=tokenizer_path)
        start = time.perf_counter()
        with _staging(data_dir, speech_text.NAME, name) as staging:
            data_inputs.save(inputs, _mkdir(staging, speech_text.NAME, name))
            report = speech_text.build(staging, name, items, context, runner)
        skipped = sum(report["skipped"].values())
        log.info("built speech-text dataset %s in %.0f s: kept %s, skipped %d %s", name,
                 time.perf_counter() - start, report["kept"], skipped,
                 report["skipped"] if skipped else "")
        return inputs.key

    key = _on_process_0("the speech-text dataset", build)
    return _read_prepared(data_dir, speech_text.NAME, lambda: config_name(key),
                          speech_tokenizer_file(cfg, data_root, key), cfg.layout)


def _mkdir(*parts: str) -> str:
    folder = epath.Path(paths.join(*parts))
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def dialogue_splits(entries, d: DialogueConfig) -> dict[str, list]:
    """``[(id, turns or Rejected)]`` -> ``{split: [...]}`` by a hash of each id; rejected
    dialogues travel in their split, for the builder to count (or stop on). With
    ``d.train_variants`` = K, each training dialogue comes K times (ids ``ID~1`` ...): the
    variants take later places in the split, so their voices, timing, pauses and
    backchannels are drawn anew, and the held-out splits are those of K = 1."""
    splits: dict[str, list] = {"train": [], "validation": [], "test": []}
    for uid, turns in entries:
        splits[split_of(uid, d.validation_fraction, d.test_fraction)].append((uid, turns))
    splits["train"] += [(f"{uid}~{k}", turns) for k in range(1, d.train_variants)
                        for uid, turns in list(splits["train"])]
    return splits


def prepare_dialogues(cfg: ExperimentConfig, workdir: str,
                      runner: Runner = Runner()) -> PreparedData:
    """Simulates, tokenizes and writes the dialogue dataset once for every dialogue stage of
    the curriculum (their plans share the dialogue training section: one seed, one row
    length), with the alignment stage's speech tokenizer; process 0 builds (in that process,
    or on a Beam `runner`), every host reads."""
    from data_pipelines.builders import dialogues as dialogue_builder

    data_root = paths.join(workdir, "data")
    data_dir = paths.join(data_root, "tfds")
    d = cfg.dialogue
    plans = dialogue_plans(cfg)
    seed = plans[0].train.seed

    def config_name(keys: str) -> str:
        speech_key, dialogue_key = keys.split(",")
        key = _key(to_dict(d), cfg.layout.to_dict(),
                   _file_hash(speech_tokenizer_file(cfg, data_root, speech_key)),
                   to_dict(cfg.flatten), plans[0].train.seq_len, [p.name for p in plans],
                   cfg.data.normalize_text, seed,
                   str(dialogue_builder.OmniflattenDialogues.VERSION), dialogue_key)
        return f"{d.source.split(':')[0]}_{key}"

    def build() -> str:
        from data_pipelines.synth.dialogues import dialogue_entries

        epath.Path(data_root).mkdir(parents=True, exist_ok=True)
        items, speech_inputs = (({}, None) if cfg.speech.tokenizer_path
                                else _speech_text_inputs(cfg))
        speech_key = speech_inputs.key if speech_inputs else "-"
        # The corpus is read only to fit a tokenizer, when there is none yet.
        tokenizer_path = speech_tokenizer(cfg, data_root, items, speech_key)
        inputs = data_inputs.dialogue_inputs(d.source, d.language)
        keys = f"{speech_key},{inputs.key}"
        name = config_name(keys)
        datasets = paths.join(data_dir, dialogue_builder.NAME)
        if (epath.Path(datasets) / name / "build_report.json").exists():
            return keys
        log.info("building dialogue dataset %s (%s)", name,
                 data_inputs.why_rebuild(inputs, datasets, name))
        splits = dialogue_splits(dialogue_entries(d, on_bad_input=cfg.data.on_bad_input,
                                                  normalize_text=cfg.data.normalize_text), d)
        context = dialogue_builder.DialogueContext(
            load_speech_tokenizer(tokenizer_path), cfg.layout, d, seed, plans,
            cfg.data.normalize_text, cfg.data.on_bad_input, tokenizer_path=tokenizer_path)
        start = time.perf_counter()
        with _staging(data_dir, dialogue_builder.NAME, name) as staging:
            data_inputs.save(inputs, _mkdir(staging, dialogue_builder.NAME, name))
            report = dialogue_builder.build(staging, name, splits, context, runner)
        log.info("built dialogue dataset %s in %.0f s: %s", name, time.perf_counter() - start,
                 {k: v for k, v in report.items() if k != "first_skipped"})
        return keys

    keys = _on_process_0("the dialogue dataset", build)
    return _read_prepared(data_dir, dialogue_builder.NAME, lambda: config_name(keys),
                          speech_tokenizer_file(cfg, data_root, keys.split(",")[0]), cfg.layout)
