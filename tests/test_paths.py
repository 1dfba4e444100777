"""Workdir paths: URLs keep their scheme, local paths become absolute, and a folder copied
into a workdir replaces what was there (`copy_tree`, the stages' kept FDB samples)."""

import os

from omniflatten_jax.distributed import paths


def test_urls_keep_their_scheme_and_local_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.join("gs://bucket/run", "duplex_3", "fdb") == "gs://bucket/run/duplex_3/fdb"
    assert paths.absolute("gs://bucket/run") == "gs://bucket/run"
    assert paths.join("run", "fdb") == os.path.join(str(tmp_path), "run", "fdb")


def test_copy_tree_replaces_the_target_with_the_folder(tmp_path):
    source = tmp_path / "scratch"
    (source / "pause_handling" / "1").mkdir(parents=True)
    (source / "pause_handling" / "1" / "output.wav").write_bytes(bytes(range(256)))
    (source / "fdb.json").write_text("{}")
    (source / "empty").mkdir()
    target = tmp_path / "stage" / "fdb"
    (target / "stale").mkdir(parents=True)
    (target / "stale" / "old.wav").write_bytes(b"old")
    paths.copy_tree(str(source), str(target))
    found = {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*")
             if p.is_file()}
    assert found == {os.path.join("pause_handling", "1", "output.wav"): bytes(range(256)),
                     "fdb.json": b"{}"}
    assert (target / "empty").is_dir()
