"""Orbax checkpoints: model parameters plus the metadata that says how to read them.

A checkpoint folder is an Orbax `CheckpointManager` directory of numbered steps. Each step holds
named items:

* ``params``: the model parameter tree (always);
* ``meta``: JSON describing everything needed to use the weights (always): the model config,
  the token layout, the lineage and, for a trained stage, the stage, its flatten settings, its
  context window and the content hash of its speech tokenizer;
* ``speech_tokenizer``: the speech tokenizer's file itself (trained stages), so that a
  checkpoint copied anywhere can still turn audio into ids and ids into audio;
* ``opt_state`` and ``data_iter``: written by training runs, so a run resumes exactly.

Every command that takes a checkpoint accepts the folder (its latest step is used) or one step
folder inside it (`resolve`). Restoring checks every parameter against the model config, so a
partial or mismatched checkpoint is an error, not silently half-initialised weights.
Checkpoints written before the stage description existed (meta without ``format``) still load;
what needs the description (the duplex command) says how to add it (`upgrade`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from omniflatten_jax import finite
from omniflatten_jax.checkpoint import checksums, orbax_echoes
from omniflatten_jax.config import DecodingPolicy, FlattenConfig, ModelConfig, from_dict, to_dict
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.distributed import paths

# 1 (no "format" key): model, layout, lineage; 2: + stage; 3: + data fingerprint and the
# arrays' checksums; 4: + the meta's checksum. (`model.family` came within format 3: a
# checkpoint without it is a Qwen2.)
FORMAT = 4
CHECKSUMS_SINCE = 3  # a step of this format or later without its `checksums` item is damaged


class CheckpointMismatchError(ValueError):
    """A checkpoint cannot go on as this run: another architecture, tokenizer or stage."""


class CorruptCheckpointError(ValueError):
    """A checkpoint step whose files cannot be read or do not hold what was written."""


class ArchitectureMismatchError(CheckpointMismatchError):
    """A checkpoint holds another model architecture than the run expects."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    model: ModelConfig
    layout: TokenLayout
    # Where these weights came from: a list of {"kind", "path", "step", ...} records, oldest first.
    lineage: tuple[dict[str, Any], ...] = ()
    # What a trained stage's weights are for (None for imports and format-1 checkpoints).
    stage: str | None = None
    flatten: FlattenConfig | None = None
    context_chunks: int | None = None  # duplex: the training window, the decoder's context
    speech_tokenizer_sha256: str | None = None  # of the file in the `speech_tokenizer` item
    # The prepared dataset a training run read (`data_pipelines.prepare`): resuming on another
    # dataset would continue a data order that means nothing there.
    data_fingerprint: str | None = None
    # Duplex: how to decode it (`config.DecodingPolicy`), chosen on the validation split after
    # training and written into the final step (`store_decoding`); None until then.
    decoding: DecodingPolicy | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "model": to_dict(self.model), "layout": self.layout.to_dict(),
                "lineage": list(self.lineage), "stage": self.stage,
                "flatten": None if self.flatten is None else to_dict(self.flatten),
                "context_chunks": self.context_chunks,
                "speech_tokenizer_sha256": self.speech_tokenizer_sha256,
                "data_fingerprint": self.data_fingerprint,
                "decoding": None if self.decoding is None else to_dict(self.decoding)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "CheckpointMeta":
        flatten, decoding = d.get("flatten"), d.get("decoding")
        return cls(from_dict(ModelConfig, d["model"]), TokenLayout.from_dict(d["layout"]),
                   tuple(d.get("lineage", ())), d.get("stage"),
                   None if flatten is None else from_dict(FlattenConfig, flatten),
                   d.get("context_chunks"), d.get("speech_tokenizer_sha256"),
                   d.get("data_fingerprint"),
                   None if decoding is None else from_dict(DecodingPolicy, decoding))

    @property
    def planned_steps(self) -> int | None:
        """The steps its stage was planned for (the last ``train`` lineage record)."""
        runs = [r for r in self.lineage if r.get("kind") == "train"]
        return runs[-1]["steps"] if runs else None


def check_architecture(theirs: ModelConfig, ours: ModelConfig, where: str) -> None:
    """The fields weights depend on (`ModelConfig.ARCHITECTURE`) must agree, by name."""
    a, b = theirs.architecture(), ours.architecture()
    diff = {k: (a[k], b[k]) for k in b if a[k] != b[k]}
    if diff:
        fields = ", ".join(f"{k}: {t!r} in the checkpoint, {o!r} in this run"
                           for k, (t, o) in diff.items())
        raise ArchitectureMismatchError(
            f"{where} holds another model architecture than this run's ({fields}). Use the "
            "checkpoint's model settings (--set=model.FIELD=VALUE), or another checkpoint.")


def check_continues(theirs: CheckpointMeta, ours: CheckpointMeta, where: str, *,
                    same_stage: bool) -> None:
    """`where` (described by `theirs`) may go on as `ours`: the same architecture, token
    layout and speech tokenizer and, when the run resumes the same stage (`same_stage`), the
    same stage description and prepared dataset. Each mismatch is an error that names the
    differing fields."""
    check_architecture(theirs.model, ours.model, where)
    ours.layout.check_matches(theirs.layout, ours="this run", theirs=f"checkpoint {where}")
    a, b = theirs.speech_tokenizer_sha256, ours.speech_tokenizer_sha256
    if a and b and a != b:
        raise CheckpointMismatchError(
            f"{where} was trained with another speech tokenizer (sha256 {a[:12]}...) than this "
            f"run's ({b[:12]}...): its speech ids would mean other sounds. Use the same "
            "speech.tokenizer_path (or workdir data), or another checkpoint.")
    if same_stage and theirs.stage is not None:
        fields = ("stage", "flatten", "context_chunks")
        diff = {k: (getattr(theirs, k), getattr(ours, k)) for k in fields
                if getattr(theirs, k) != getattr(ours, k)}
        if diff:
            raise CheckpointMismatchError(
                f"{where} was written by another stage description than this run's "
                f"(checkpoint, run): {diff}; resume with its settings, or delete the stage's "
                "folder to train it anew.")
    a, b = theirs.data_fingerprint, ours.data_fingerprint
    if same_stage and a and b and a != b:
        raise CheckpointMismatchError(
            f"{where} was trained on another prepared dataset (fingerprint {a[:12]}) than this "
            f"run reads ({b[:12]}): a setting that shapes the data (data.*, speech.*, "
            "dialogue.*, a seed) or an input file (the manifest, its audio) changed since, and "
            "the saved data position means nothing in the new dataset. Resume with the "
            "settings and files it was trained with, or train the stage anew in another "
            "--workdir.")


def _tokenizer_item(data: bytes) -> dict:
    return {"file": np.frombuffer(data, np.uint8)}


TRAINING_ITEM = "opt_state"  # the item only a training run's steps hold


def training_step_within(folder: str | os.PathLike, depth: int = 4) -> str | None:
    """A checkpoint step at or below `folder` that a training run wrote (it holds an optimiser
    state), searched as deep as WORKDIR/STAGE/checkpoints/STEP; None if there is none."""
    root = epath.Path(paths.absolute(folder))
    for level in range(depth + 1):
        for item in root.glob("/".join(["*"] * level + [TRAINING_ITEM])):
            return str(item.parent)
    return None


def resolve(path: str | os.PathLike) -> tuple[str, int]:
    """A checkpoints folder or a step folder inside it -> (manager directory, step)."""
    path = paths.absolute(path)
    if not epath.Path(path).is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if (epath.Path(path) / "params").is_dir():
        step = epath.Path(path).name
        if not step.isdigit():
            raise ValueError(f"{path} looks like a step folder but its name is not a step number")
        return str(epath.Path(path).parent), int(step)
    with ocp.CheckpointManager(path) as manager:
        step = manager.latest_step()
    if step is None:
        raise FileNotFoundError(f"{path} holds no checkpoint steps (expected numbered step "
                                "folders, each with params/ and meta/)")
    return path, step


def save_params(directory: str | os.PathLike, step: int, params, meta: CheckpointMeta,
                speech_tokenizer: bytes | None = None) -> str:
    """Writes a params-only step (imports, upgrades); training writes more items, same format.
    `speech_tokenizer` (the file's bytes) must hash to `meta.speech_tokenizer_sha256`."""
    directory = paths.absolute(directory)
    items = described_items(params, meta, speech_tokenizer)
    with ocp.CheckpointManager(directory) as manager:
        manager.save(step, args=ocp.args.Composite(**items))
        manager.wait_until_finished()
    return paths.join(directory, str(step))


def described_items(params, meta: CheckpointMeta, speech_tokenizer: bytes | None,
                     opt_state=None) -> dict:
    """The items of a step; ``checksums`` (`checkpoint.checksums`) lets restoring prove the
    arrays are those written."""
    if (speech_tokenizer is None) != (meta.speech_tokenizer_sha256 is None) or (
            speech_tokenizer is not None and sha256(speech_tokenizer)
            != meta.speech_tokenizer_sha256):
        raise ValueError("the speech tokenizer given does not match the metadata's hash")
    sums = {"params": checksums.tree_checksums(params)}
    described = meta.to_json()
    sums["meta"] = checksums.document_checksum(described)
    items = dict(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(described))
    if opt_state is not None:
        sums["opt_state"] = checksums.tree_checksums(opt_state)
        items[TRAINING_ITEM] = ocp.args.StandardSave(opt_state)
    items["checksums"] = ocp.args.JsonSave(sums)
    if speech_tokenizer is not None:
        items["speech_tokenizer"] = ocp.args.StandardSave(_tokenizer_item(speech_tokenizer))
    return items


def load_speech_tokenizer_bytes(path: str | os.PathLike) -> bytes:
    """The speech tokenizer file stored in a checkpoint, checked against its content hash."""
    directory, step = resolve(path)
    where = paths.join(directory, str(step))
    meta = load_meta(where)
    if meta.speech_tokenizer_sha256 is None:
        raise FileNotFoundError(
            f"{where} carries no speech tokenizer: it is an import, or it was written before "
            "checkpoints stored theirs. Add it with "
            "`python experiments/upgrade_checkpoint.py --checkpoint ... --stage ... "
            "--speech_tokenizer FILE --out NEW` (see its --help).")
    with ocp.CheckpointManager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(
            speech_tokenizer=ocp.args.StandardRestore()))
    data = np.asarray(restored["speech_tokenizer"]["file"], np.uint8).tobytes()
    if sha256(data) != meta.speech_tokenizer_sha256:
        raise ValueError(f"{where}: the stored speech tokenizer does not match its hash "
                         f"{meta.speech_tokenizer_sha256[:12]}...: the checkpoint is corrupted")
    return data


def load_speech_tokenizer(path: str | os.PathLike):
    """The checkpoint's own speech tokenizer (`load_speech_tokenizer_bytes`), loaded."""
    from omniflatten_jax.speech import load_speech_tokenizer as load

    return load(io.BytesIO(load_speech_tokenizer_bytes(path)))


def load_meta(path: str | os.PathLike) -> CheckpointMeta:
    directory, step = resolve(path)
    where = paths.join(directory, str(step))
    with ocp.CheckpointManager(directory) as manager:
        restored = restore_items(manager, step, where, meta=ocp.args.JsonRestore())
    try:
        return CheckpointMeta.from_json(restored["meta"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptCheckpointError(f"{where}/meta does not describe a checkpoint ({e}): the "
                                     "step is damaged or was not written by this project; use "
                                     "another step") from None


def store_decoding(step_dir: str, policy: DecodingPolicy) -> CheckpointMeta:
    """Writes `policy` into the ``meta`` of an existing step (its other fields unchanged): a
    duplex stage chooses how to decode after its last step is saved. The JSON is replaced
    whole (written beside, then renamed over), so a reader sees the old or the new one."""
    meta = dataclasses.replace(load_meta(step_dir), decoding=policy)
    target = epath.Path(step_dir) / "meta" / "metadata"
    sums_file = epath.Path(step_dir) / "checksums" / "metadata"
    if not (target.exists() and sums_file.exists()):
        raise CorruptCheckpointError(f"{step_dir}/meta or /checksums has no metadata file to "
                                     "update: the step was not written by this project's Orbax "
                                     "version")
    described = meta.to_json()
    sums = json.loads(sums_file.read_text()) | {"meta": checksums.document_checksum(described)}
    # Both are written beside, then renamed over, one right after the other.
    scratch = target.parent / "metadata.writing"
    sums_scratch = sums_file.parent / "metadata.writing"
    scratch.write_text(json.dumps(described))
    sums_scratch.write_text(json.dumps(sums))
    scratch.replace(target)
    sums_scratch.replace(sums_file)
    return meta


def _probe_ocdbt(folder: str) -> None:
    """Lists an array item's OCDBT database: a damaged manifest or index fails here, once,
    instead of in every array's concurrent read."""
    if not (epath.Path(folder) / "manifest.ocdbt").exists():
        return
    import tensorstore as ts

    base = folder if paths.is_url(folder) else "file://" + folder
    ts.KvStore.open({"driver": "ocdbt", "base": base.rstrip("/") + "/"}).result().list().result()


def restore_items(manager, step: int, where: str, **items) -> dict:
    """Restores the named items of `step`, with `checksums` verified when the step has them.

    What Orbax raises on damaged files (a truncated manifest, undecodable chunk bytes) becomes
    one `CorruptCheckpointError` naming the step; the checksums catch what decodes but
    differs (changed bytes, a flipped bit) and name the array."""
    arrays = [k for k in ("params", "opt_state") if k in items]
    if (arrays or "meta" in items) and (epath.Path(where) / "checksums").exists():
        items["checksums"] = ocp.args.JsonRestore()
    restored = {}
    orbax_echoes.quiet_background_failures()
    for name, arg in items.items():  # one at a time, so that an error names its item
        try:
            _probe_ocdbt(paths.join(where, name))
            restored[name] = manager.restore(step, args=ocp.args.Composite(**{name: arg}))[name]
        except (CheckpointMismatchError, CorruptCheckpointError):
            raise
        except Exception as e:  # noqa: BLE001  Orbax and TensorStore raise many kinds
            found = (epath.Path(where) / name).exists()
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            first = first.split(" See full TensorStore details")[0][:300]  # not its spec dump
            raise CorruptCheckpointError(
                f"{where}/{name} {'cannot be read' if found else 'is missing'} "
                f"({type(e).__name__}: {first}): the step is damaged or was not finished; use "
                "another step of its folder (a run resumes from the step before once this one is "
                "moved away), or a copy") from e
    sums = restored.get("checksums")
    if "meta" in restored:
        _verify_meta(restored["meta"], sums, where)
    for item in arrays if sums else ():
        bad = checksums.mismatches(restored[item], sums.get(item, {}))
        if bad:
            raise CorruptCheckpointError(
                f"{where}: {item}{bad[0]}"
                f"{f' (and {len(bad) - 1} more arrays)' if len(bad) > 1 else ''} does not "
                "match the checksum written with it: the checkpoint's files were changed or "
                "damaged after saving. Use another step of its folder (a run resumes from the "
                "step before once this one is moved away), or a copy.")
    return restored


def _verify_meta(meta: dict, sums: dict | None, where: str) -> None:
    """A step of a format that carries checksums has them, and its meta is the one written."""
    if sums is None:
        if isinstance(meta, dict) and meta.get("format", 1) >= CHECKSUMS_SINCE:
            raise CorruptCheckpointError(
                f"{where}/checksums is missing: a format-{meta['format']} step always carries "
                "one, so the step is damaged or was copied in part; use another step of its "
                "folder, or a whole copy")
        return
    if "meta" in sums and checksums.document_checksum(meta) != sums["meta"]:
        raise CorruptCheckpointError(
            f"{where}/meta does not match the checksum written with it: it was edited or "
            "damaged after saving. The weights were trained under the settings it first held: "
            "use another step or a copy (and --set=... to change how a run uses them).")


def check_complete(restored, abstract, where: str) -> None:
    """Every expected parameter is present, materialised, and of the expected shape."""
    want = dict(jax.tree_util.tree_leaves_with_path(abstract))
    got = dict(jax.tree_util.tree_leaves_with_path(restored))
    missing = [jax.tree_util.keystr(k) for k in want if k not in got]
    extra = [jax.tree_util.keystr(k) for k in got if k not in want]
    bad = [f"{jax.tree_util.keystr(k)}: {getattr(got[k], 'shape', None)} vs {want[k].shape}"
           for k in want if k in got and (isinstance(got[k], jax.ShapeDtypeStruct)
                                          or np.shape(got[k]) != want[k].shape)]
    if missing or extra or bad:
        raise ValueError(f"checkpoint {where} does not match the model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, wrong or unrestored {bad[:5]}")


def load_params(path: str | os.PathLike, shardings=None, layout: TokenLayout | None = None):
    """Restores ``(params, meta, step_dir)``; params land in `shardings` (default: one device).

    With `layout`, the checkpoint's token layout must equal it (ids must mean the same tokens).
    """
    from omniflatten_jax.model import transformer

    directory, step = resolve(path)
    meta = load_meta(paths.join(directory, str(step)))
    if layout is not None:
        layout.check_matches(meta.layout, ours="this run", theirs=f"checkpoint {path}")
    model = transformer(meta.model, meta.layout.vocab_size)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, model.abstract_params)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            model.abstract_params, shardings)
    where = paths.join(directory, str(step))
    with ocp.CheckpointManager(directory) as manager:
        restored = restore_items(manager, step, where, params=ocp.args.StandardRestore(abstract))
    check_complete(restored["params"], abstract, where)
    finite.check_finite(restored["params"], f"checkpoint {where}",
                        "It was written by a run that diverged (or is corrupted): use an "
                        "earlier step folder of it, or retrain with a lower learning rate.")
    return restored["params"], meta, where


def abstract_like(tree, shardings):
    """ShapeDtypeStructs carrying the shardings that restored arrays should land in."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        tree, shardings)
