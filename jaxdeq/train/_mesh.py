"""Where a run's arrays live: the device mesh, parameter and batch sharding."""

import functools

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ._config import TrainConfig


class Layout:
    """A run's device mesh, with a `data` axis (the batch is split along it) and a
    `model` axis (parameter and optimiser-state arrays of at least `threshold`
    elements are split along it, on their largest divisible axis; smaller ones are
    replicated)."""

    def __init__(self, config: TrainConfig):
        available = jax.devices()
        wanted = len(available) if config.devices is None else config.devices
        if not 1 <= wanted <= len(available):
            raise ValueError(
                f"train: {wanted} devices requested, {len(available)} available "
                f"({jax.default_backend()}). On a CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={wanted} before "
                "starting Python to get several host devices."
            )
        if wanted % config.model_parallel:
            raise ValueError(
                f"train: model_parallel={config.model_parallel} does not divide the "
                f"{wanted} device(s); use a divisor of {wanted}."
            )
        # Under jax.distributed every process's devices make up the mesh.
        devices = available[:wanted] if jax.process_count() == 1 else available
        self.model_parallel = config.model_parallel
        self.threshold = config.shard_threshold
        self.mesh = Mesh(
            np.array(devices).reshape(-1, self.model_parallel), ("data", "model")
        )
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    def check_batch(self, config: TrainConfig, num_examples: int) -> None:
        """Refuse a batch that does not split across the mesh and accumulation."""
        data_parallel = self.num_devices // self.model_parallel
        per_step = data_parallel * config.accumulate
        if config.batch_size % per_step:
            raise ValueError(
                f"train: batch size {config.batch_size} does not divide across "
                f"{data_parallel} data-parallel device group(s) x "
                f"{config.accumulate} accumulation step(s); use a multiple of "
                f"{per_step}, e.g. --batch-size "
                f"{per_step * max(1, config.batch_size // per_step)}."
            )
        if config.batch_size > num_examples:
            raise ValueError(
                f"train: batch size {config.batch_size} exceeds the {num_examples} "
                "training examples."
            )

    def _sharding_of(self, x) -> NamedSharding:
        shape = np.shape(x)
        if self.model_parallel == 1 or int(np.prod(shape)) < self.threshold:
            return self.replicated
        axes = [i for i, n in enumerate(shape) if n % self.model_parallel == 0]
        if not axes:
            return self.replicated
        axis = max(axes, key=lambda i: shape[i])
        spec: list[str | None] = [None] * len(shape)
        spec[axis] = "model"
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def place(self, tree):
        """`tree` (a model, an optimiser state) with its arrays put on the mesh in
        their shardings."""
        arrays, rest = eqx.partition(tree, eqx.is_array)
        arrays = jax.device_put(arrays, jax.tree.map(self._sharding_of, arrays))
        return eqx.combine(arrays, rest)

    def _constrain(self, tree):
        arrays, rest = eqx.partition(tree, eqx.is_array)
        arrays = jax.tree.map(
            lambda x: jax.lax.with_sharding_constraint(x, self._sharding_of(x)), arrays
        )
        return eqx.combine(arrays, rest)

    def sharded(self, step):
        """`step` (from [`jaxdeq.train.make_step`][]) with the model's parameters and
        the optimiser state kept in their shardings."""

        @eqx.filter_jit
        def sharded_step(model, opt_state, lr_scale, batch, key):
            model, opt_state, lr_scale, finite, metrics = step(
                model, opt_state, lr_scale, batch, key
            )
            params, static = eqx.partition(model, eqx.is_inexact_array)
            model = eqx.combine(self._constrain(params), static)
            return model, self._constrain(opt_state), lr_scale, finite, metrics

        return sharded_step

    def batch(self, data: dict[str, np.ndarray], indices: np.ndarray) -> dict:
        """The global batch `data[indices]`, split along `data`; each process
        provides its own slice."""
        local = np.array_split(indices, jax.process_count())[jax.process_index()]
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_sharding, np.asarray(v[local])
            )
            for k, v in data.items()
        }


@functools.lru_cache(maxsize=2)
def _epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(step: int, seed: int, num_examples: int, batch_size: int):
    """The global batch of `step`: a fresh seeded permutation each epoch, so the data
    position is a function of the step alone and a resumed run sees the same data."""
    per_epoch = num_examples // batch_size
    epoch, offset = divmod(step, per_epoch)
    # One permutation per epoch, not per step: the batch loop stays light.
    perm = _epoch_permutation(seed, epoch, num_examples)
    return perm[offset * batch_size : (offset + 1) * batch_size]
