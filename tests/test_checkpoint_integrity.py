"""A checkpoint step is read as written or refused: its arrays and its meta are checked against
the checksums written with them, and a step of a format that carries checksums without them is
damaged (issue #24). Real Orbax steps of a tiny model, edited as an unlucky user would."""

import dataclasses
import json
import os
import shutil

import jax
import pytest

from omniflatten_jax import checkpoint
from omniflatten_jax.config import DecodingPolicy, ModelConfig
from omniflatten_jax.config.token_layout import TokenLayout
from omniflatten_jax.model import transformer
from tests.helpers import command_error

CFG = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                  num_kv_heads=1, head_dim=16, rope_theta=10_000.0)
LAYOUT = TokenLayout("bytes", 256, 32)


@pytest.fixture(scope="module")
def step(tmp_path_factory):
    """A params-only step as an import writes it: `checkpoints/3`."""
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    params = transformer(CFG, LAYOUT.vocab_size).init(jax.random.key(0))
    meta = checkpoint.CheckpointMeta(CFG, LAYOUT, ({"kind": "test"},), stage="alignment")
    checkpoint.save_params(folder, 3, params, meta)
    return folder


@pytest.fixture
def copy(step, tmp_path):
    shutil.copytree(step, tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


def edit_meta(folder, change):
    path = folder / "3" / "meta" / "metadata"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_an_untouched_step_loads_and_records_the_current_format(step):
    _, meta, _ = checkpoint.load_params(step)
    assert meta.stage == "alignment"
    assert json.loads((step / "3" / "meta" / "metadata").read_text())["format"] == \
        checkpoint.FORMAT == 4


def test_a_hand_edited_model_setting_is_refused(copy):
    edit_meta(copy, lambda m: m["model"].update(rope_theta=1_000_000.0))
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match="3/meta does not match the checksum written with it"):
        checkpoint.load_params(copy)
    err = command_error("to_hf", ["--checkpoint", copy, "--out", copy.parent / "hf"])
    assert "meta does not match the checksum" in err
    assert not (copy.parent / "hf").exists()


def test_a_relabelled_stage_is_refused(copy):
    edit_meta(copy, lambda m: m.update(stage="duplex_2"))
    with pytest.raises(checkpoint.CorruptCheckpointError, match="edited or damaged"):
        checkpoint.load_meta(copy)


def test_a_step_whose_checksums_were_deleted_is_damaged(copy):
    shutil.rmtree(copy / "3" / "checksums")
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match="3/checksums is missing: a format-4 step always carries one"):
        checkpoint.load_params(copy)


def test_a_flipped_bit_in_the_weights_is_refused(copy):
    files = [os.path.join(d, f) for d, _, fs in os.walk(copy / "3" / "params")
             for f in fs if os.sep + "d" + os.sep in os.path.join(d, f)]
    biggest = max(files, key=os.path.getsize)
    data = bytearray(open(biggest, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(biggest, "wb").write(bytes(data))
    with pytest.raises(checkpoint.CorruptCheckpointError,
                       match=r"3: params\[.*\] does not match the checksum written with it"):
        checkpoint.load_params(copy)


def test_a_step_from_before_checksums_still_loads(copy):
    """Format 2 had no checksums: such a step loads as it always did."""
    shutil.rmtree(copy / "3" / "checksums")
    edit_meta(copy, lambda m: m.update(format=2))
    _, meta, _ = checkpoint.load_params(copy)
    assert meta.stage == "alignment"


def test_storing_a_decoding_policy_keeps_the_step_verified(copy):
    policy = DecodingPolicy(onset_threshold=0.3)
    checkpoint.store_decoding(str(copy / "3"), policy)
    assert checkpoint.load_meta(copy).decoding == policy
    edit_meta(copy, lambda m: m["decoding"].update(onset_threshold=0.9))
    with pytest.raises(checkpoint.CorruptCheckpointError, match="meta does not match"):
        checkpoint.load_meta(copy)


def test_a_changed_architecture_is_still_named_when_the_meta_is_intact(step):
    _, meta, _ = checkpoint.load_params(step)
    wide = dataclasses.replace(meta.model, intermediate_size=128)
    with pytest.raises(checkpoint.ArchitectureMismatchError, match="intermediate_size"):
        checkpoint.check_architecture(meta.model, wide, str(step))


def test_a_damaged_params_file_is_reported_once_not_echoed(copy, capfd):
    """Before: the one-line error, then (in about 3 runs of 10, when the garbage collector
    found the other arrays' abandoned reads) 1,500-2,000 lines of TensorStore specs."""
    import gc

    data = max((copy / "3" / "params").rglob("d/*"), key=lambda p: p.stat().st_size)
    data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])  # a cut-short copy
    with pytest.raises(checkpoint.CorruptCheckpointError, match="3/params cannot be read"
                       r" \(Exception: Encountered error while reading array index: .*\)\.\): "
                       "the step is damaged") as raised:
        checkpoint.load_params(copy)
    assert "TensorStore" not in str(raised.value)  # not its spec dump
    del raised
    gc.collect()  # where the abandoned reads print, if nothing drops them
    out, err = capfd.readouterr()
    assert "Exception ignored" not in err and "Traceback" not in err, err[:3000]
    err = command_error("to_hf", ["--checkpoint", copy, "--out", copy.parent / "hf"])
    assert "cannot be read" in err
