"""The sharded train step of one stage on one mesh, with every sharding decided here.

What the runner executes and what `experiments/plan.py` compiles for a TPU topology are the
same object, so the memory a plan reports is the memory the run needs. Nothing is left to the
compiler: parameters follow the logical-axis rules, each optimiser moment is sharded like the
parameter it belongs to (replicated Adam moments would cost two copies of the model per
chip), scalars in the optimiser state are replicated, and the batch is split over the
data-parallel axes (a batch that does not divide is an error, `sharding.check_batch_divides`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from omniflatten_jax import checkpoint
from omniflatten_jax.config import ExperimentConfig, TrainConfig
from omniflatten_jax.distributed import sharding
from omniflatten_jax.model import Transformer, transformer
from omniflatten_jax.tokens.batches import FIELD_DTYPES, FIELDS
from omniflatten_jax.training.guard import init_guard
from omniflatten_jax.training.optimizer import make_optimizer
from omniflatten_jax.training.step import TurnWeight, guarded_train_step


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    model: Transformer
    tx: optax.GradientTransformation
    mesh: Mesh
    rules: sharding.Rules
    batch_shape: tuple[int, int]  # global [batch, seq_len]
    on_nonfinite: str = "stop"  # `TrainConfig.on_nonfinite`
    turn: TurnWeight = TurnWeight()  # `TrainConfig.turn_weight`
    divergence_factor: float = 0.0  # `TrainConfig.divergence_factor`

    @classmethod
    def build(cls, cfg: ExperimentConfig, train: TrainConfig, mesh: Mesh,
              setting: str = "train.batch_size") -> "TrainProgram":
        """`setting` names the batch size in errors (``dialogue_train.batch_size``...)."""
        sharding.check_batch_divides(mesh, cfg.mesh.rules, train.batch_size, setting)
        return cls(transformer(cfg.model, cfg.layout.vocab_size),
                   make_optimizer(cfg.optimizer, train.steps), mesh, tuple(cfg.mesh.rules),
                   (train.batch_size, train.seq_len), train.on_nonfinite,
                   TurnWeight(train.turn_weight, cfg.layout.special("<silent_speech>")),
                   train.divergence_factor)

    @functools.cached_property
    def param_shardings(self):
        return self.model.param_shardings(self.mesh, self.rules)

    @functools.cached_property
    def opt_shardings(self):
        shapes = jax.eval_shape(self.tx.init, self.model.abstract_params)
        return optax.tree_map_params(self.tx, lambda _, s: s, shapes, self.param_shardings,
                                     transform_non_params=lambda _: self.replicated)

    @functools.cached_property
    def batch_shardings(self) -> dict[str, NamedSharding]:
        return {k: sharding.batch_sharding(self.mesh, self.rules, self.batch_shape)
                for k in FIELDS}

    @property
    def abstract_params(self):
        return checkpoint.abstract_like(self.model.abstract_params, self.param_shardings)

    @property
    def abstract_opt_state(self):
        return checkpoint.abstract_like(jax.eval_shape(self.tx.init, self.model.abstract_params),
                                        self.opt_shardings)

    @property
    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        return {k: jax.ShapeDtypeStruct(self.batch_shape, np.dtype(FIELD_DTYPES[k]),
                                        sharding=self.batch_shardings[k]) for k in FIELDS}

    def init_params(self, seed: int):
        return self.model.init(jax.random.key(seed), self.mesh, self.rules)

    def init_opt_state(self, params):
        return jax.jit(self.tx.init, out_shardings=self.opt_shardings)(params)

    def init_guard(self, step: int):
        """The numerics guard's device scalars (`training.guard`), replicated."""
        return jax.device_put(init_guard(step), self.replicated)

    @functools.cached_property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def step(self, params, opt_state, guard, batch):
        """``(params, opt_state, guard, batch) -> (params, opt_state, guard, metrics)``,
        donating the state; a non-finite step does not update it (`training.guard`). Traced
        and run under the program's own mesh and rules."""
        with sharding.activate(self.mesh, self.rules):
            return self.jitted_step(params, opt_state, guard, batch)

    @functools.cached_property
    def jitted_step(self):
        return jax.jit(functools.partial(guarded_train_step, self.model, self.tx,
                                         self.on_nonfinite, turn=self.turn,
                                         divergence_factor=self.divergence_factor),
                       in_shardings=(self.param_shardings, self.opt_shardings, self.replicated,
                                     self.batch_shardings),
                       out_shardings=(self.param_shardings, self.opt_shardings, self.replicated,
                                      None),
                       donate_argnums=(0, 1, 2))

    def lower(self):
        """The step lowered for abstract arguments: ``.compile()`` it to measure memory."""
        guard = jax.tree.map(lambda v: jax.ShapeDtypeStruct((), v.dtype,
                                                            sharding=self.replicated),
                             init_guard(0))
        with sharding.activate(self.mesh, self.rules):
            return self.jitted_step.lower(self.abstract_params, self.abstract_opt_state, guard,
                                   self.abstract_batch)

    def global_batch(self, rows: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The global batch from `rows`, the whole global batch every host holds: each device
        takes its own rows, so the split is right for any mesh and any process layout."""
        out = {}
        for k in FIELDS:
            value = np.asarray(rows[k], FIELD_DTYPES[k])
            if value.shape != self.batch_shape:
                raise ValueError(f"batch field {k} has shape {value.shape}, the step takes "
                                 f"{self.batch_shape}")
            out[k] = jax.make_array_from_callback(self.batch_shape, self.batch_shardings[k],
                                                  lambda index, v=value: v[index])
        return out

