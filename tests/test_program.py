"""The train step's shardings are decided, never left to the compiler (8 fake CPU devices)."""

import jax
import pytest

from omniflatten_jax.config import override
from omniflatten_jax.distributed import sharding
from omniflatten_jax.training.program import TrainProgram
from tests.helpers import small_config


def program(*overrides):
    cfg = small_config("embedded")
    for assignment in overrides:
        cfg = override(cfg, assignment)
    return TrainProgram.build(cfg, cfg.train, sharding.make_mesh(cfg.mesh))


def test_adam_moments_are_sharded_like_their_parameters():
    prog = program("train.batch_size=8", "mesh.data=2")
    params = jax.tree_util.tree_leaves_with_path(prog.param_shardings)
    sharded = [s for _, s in params if any(s.spec)]
    assert sharded, "the test model must have parameters sharded over fsdp"
    state = prog.opt_shardings
    adam = state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
    for moment in (adam.mu, adam.nu):
        assert jax.tree.leaves(moment) == [s for _, s in params]
    assert adam.count.spec == jax.sharding.PartitionSpec()
    # And the compiled step keeps them there: nothing left to the compiler's choice.
    compiled = prog.lower().compile()
    _, out_opt, _, _ = compiled.output_shardings
    shapes = jax.tree.leaves(prog.abstract_params)
    for got, want, x in zip(jax.tree.leaves(out_opt[1][0].mu), jax.tree.leaves(adam.mu), shapes):
        assert got.is_equivalent_to(want, x.ndim)


def test_a_batch_that_does_not_divide_over_the_data_axes_is_an_error():
    with pytest.raises(ValueError, match=r"train.batch_size=12 does not divide over the 8 "
                       r"data-parallel devices \(mesh data=2 x fsdp=4\): use a multiple of 8, "
                       r"e.g. --set=train.batch_size=16"):
        program("train.batch_size=12", "mesh.data=2")
    # The tensor axis does not split the batch: 4 rows over data=2 x fsdp=2 divide.
    program("train.batch_size=4", "mesh.data=2", "mesh.tensor=2")


def test_one_slice_of_devices_cannot_be_split_into_two():
    with pytest.raises(ValueError, match="mesh.slices=2, but the 8 devices belong to 1 "
                       "processes"):
        program("train.batch_size=8", "mesh.slices=2")
