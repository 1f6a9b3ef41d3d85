"""Device mesh and sharding rules (jax.sharding; no pmap).

The mesh has two axes: 'data' (batch parallelism) and 'fsdp' (parameters and optimizer state are
split along it, the batch too). Batches are sharded along both axes on their batch dimension;
each parameter leaf is split on its largest dimension divisible by the fsdp size (and replicated
when small or indivisible). Teacher, generator, critic, EMA and optimizer states all follow the
same rule, so one function gives every state's sharding.
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Optional[list] = None) -> Mesh:
  """A ('data', 'fsdp') mesh (jax.make_mesh: devices laid out for the interconnect); data = -1
  takes all remaining devices. `devices` defaults to jax.devices() (e.g. a TPU topology's); in a
  single process, a mesh smaller than that takes its first data × fsdp devices (e.g. mesh.data=1:
  a run on one device of a multi-device host; on XLA:CPU's fake devices a small run is twice as
  fast on one). Several processes must use every device."""
  if (devices is None and data != -1 and jax.process_count() == 1
      and 1 <= data * fsdp < jax.device_count()):
    devices = jax.devices()[:data * fsdp]
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if fsdp < 1 or n % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must be >= 1 and divide the {n} available devices")
  if data == -1:
    data = n // fsdp
  if data * fsdp != n:
    raise ValueError(f"mesh data={data} × fsdp={fsdp} = {data * fsdp} but {n} devices are "
                     "available; set mesh.data=-1 to use them all")
  auto = (jax.sharding.AxisType.Auto,) * 2  # shardings from jit's in/out_shardings, as written
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=auto, devices=devices)


def mesh_from_config(config, devices: Optional[list] = None) -> Mesh:
  """The run's mesh from config.mesh (data, fsdp)."""
  return make_mesh(int(config.mesh.data), int(config.mesh.fsdp), devices)


def param_spec(shape, fsdp_size: int, min_size: int = 2**14) -> P:
  """Shard the largest fsdp-divisible dimension of a big leaf; replicate the rest."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  dims = sorted(range(len(shape)), key=lambda i: -shape[i])
  for i in dims:
    if shape[i] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[i] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, tree: Any) -> Any:
  """NamedShardings for a pytree of arrays (or ShapeDtypeStructs) following param_spec."""
  fsdp = mesh.shape["fsdp"]

  def one(x):
    shape = getattr(x, "shape", ())
    return NamedSharding(mesh, param_spec(shape, fsdp) if len(shape) else P())

  return jax.tree.map(one, tree)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
  """Shard dimension `leading` (the batch) over data × fsdp; leading axes before it replicated."""
  return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def check_batch(mesh: Mesh, batch_size: int, what: str = "batch_size"):
  n = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % n:
    raise ValueError(f"{what}={batch_size} must be divisible by the {n} devices of the mesh "
                     f"(data={mesh.shape['data']}, fsdp={mesh.shape['fsdp']})")


def host_rows(global_size: int) -> slice:
  """The rows of a global batch of `global_size` that this process feeds (multi-host)."""
  pi, pc = jax.process_index(), jax.process_count()
  if global_size % pc:
    raise ValueError(f"a global batch of {global_size} does not split over {pc} processes")
  return slice(pi * global_size // pc, (pi + 1) * global_size // pc)


def global_batch(mesh: Mesh, host_array, leading: int = 0):
  """Builds a global jax.Array from this process's slice of the batch (multi-host safe)."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh, leading), np.asarray(host_array))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree):
  """(A pytree of) possibly multi-process global arrays as numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def jit_round(round_step, mesh: Mesh, state_shardings, teacher_shardings, split: bool = False):
  """jit of the IBMD round with explicit in/out shardings and the state donated. split=True: the
  round as two programs, its critic steps and its generator step (`round_step.phases`, see
  steps.make_ibmd_steps), called one after the other: same numbers, one more dispatch per round,
  and compile mode compiles the two at once in two threads (tools/split_compile.py), so the
  wall time of the compile is about the larger program's instead of the sum."""
  rep = replicated(mesh)
  batch_sh = batch_sharding(mesh, 1)
  if not split:
    return jax.jit(round_step, in_shardings=(state_shardings, teacher_shardings, batch_sh, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=0)
  critic_phase, generator_phase = round_step.phases
  critic = jax.jit(critic_phase, in_shardings=(state_shardings, batch_sh, rep),
                   out_shardings=(state_shardings, rep), donate_argnums=0)
  generator = jax.jit(generator_phase,
                      in_shardings=(state_shardings, teacher_shardings, batch_sh, rep, rep),
                      out_shardings=(state_shardings, rep), donate_argnums=0)
  return SplitRound(critic, generator)


class SplitRound:
  """The round as its critic program then its generator program (jit_round(split=True))."""

  def __init__(self, critic, generator):
    self.critic, self.generator = critic, generator

  def __call__(self, state, teacher, batches, key):
    state, critic_metrics = self.critic(state, batches, key)
    return self.generator(state, teacher, batches, key, critic_metrics)
