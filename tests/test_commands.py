"""The commands room: every command is listed once, parses its flags the same way, and fails
in one line naming the fix (`experiments.cli`)."""

import glob
import os
import re

import pytest

from experiments import COMMANDS
from tests.helpers import ROOT, run_command


def test_every_command_is_listed_and_every_listed_one_exists():
    scripts = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments",
                                                                       "*.py"))
               if "cli.run(main" in open(p).read()}
    assert scripts == set(COMMANDS)
    readme = open(os.path.join(ROOT, "README.md")).read()
    table = readme[readme.index("## Commands"):]
    for name in COMMANDS:
        assert f"`experiments/{name}.py`" in table, name


def test_no_library_or_data_module_imports_the_commands_room():
    for path in glob.glob(os.path.join(ROOT, "omniflatten_jax", "**", "*.py"), recursive=True) \
            + glob.glob(os.path.join(ROOT, "data_pipelines", "**", "*.py"), recursive=True):
        text = open(path).read()
        assert not re.search(r"^\s*(from|import) experiments\b", text, re.M), path


@pytest.mark.parametrize("name", ["duplex", "to_hf", "upgrade_checkpoint"])
def test_commands_parse_and_fail_alike(name, tmp_path):
    """A missing checkpoint is one line naming it; an unknown argument is refused; --help
    works."""
    helped = run_command(name, "--help")  # absl: the docstring and the flags, exit status 1
    assert "--checkpoint" in helped.stdout, helped.stdout
    args = {"duplex": ["--input", tmp_path / "none.wav", "--out_dir", tmp_path / "out"],
            "to_hf": ["--out", tmp_path / "hf"],
            "upgrade_checkpoint": ["--out", tmp_path / "new", "--stage", "duplex_3",
                                   "--speech_tokenizer", tmp_path / "tok.npz"]}[name]
    missing = run_command(name, "--checkpoint", tmp_path / "nowhere", *args)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert str(tmp_path) in missing.stderr
    stray = run_command(name, "--checkpoint", tmp_path / "nowhere", *args, "stray")
    assert stray.returncode != 0 and "unexpected arguments: ['stray']" in stray.stderr
