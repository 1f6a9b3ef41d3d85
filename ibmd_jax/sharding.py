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
  takes all remaining devices. `devices` defaults to jax.devices() (e.g. a TPU topology's)."""
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
  and the two compile at once in two threads (`SplitRound.lower(...).compile()`), so the wall
  time of the compile is about the larger program's instead of the sum."""
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

  def lower(self, state, teacher, batches, key) -> "SplitLowered":
    lowered = self.critic.lower(state, batches, key)
    metrics = lowered.out_info[1]
    return SplitLowered(lowered, self.generator.lower(state, teacher, batches, key, metrics))


class SplitLowered:
  """A split round's two lowered programs (critic steps; generator step), compiled together."""

  def __init__(self, critic, generator):
    self.parts = (critic, generator)

  def as_text(self) -> str:
    return "\n".join(p.as_text() for p in self.parts)

  def compile(self, compiler_options=None, threads: int = 0,
              on_done=None) -> "SplitCompiled":
    """Both programs compiled: at once, one thread each (XLA's compile releases the GIL), or one
    after the other with threads=1, which halves the host memory the compile needs (a 256² round
    needs ~24 GiB per program). threads=0: two where the host has 64 GiB or more available.
    `on_done(name, seconds)` is called as each program ('critic', 'generator') is compiled: a
    full-size program takes tens of minutes. (A compile cut short keeps the finished program only
    where the persistent cache can be read back: on a real device, not in compile mode.)"""
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=g-import-not-at-top
    import time  # pylint: disable=g-import-not-at-top
    threads = min(int(threads), 2) or (2 if host_available_bytes() >= 64 * 2**30 else 1)

    def one(named):
      name, p = named
      t0 = time.time()
      c = p.compile(compiler_options=compiler_options)
      dt = time.time() - t0
      if on_done is not None:
        on_done(name, dt)
      return c, dt

    with ThreadPoolExecutor(threads) as pool:
      done = list(pool.map(one, zip(("critic", "generator"), self.parts)))
    return SplitCompiled(*[c for c, _ in done], seconds=[dt for _, dt in done], threads=threads)


def host_available_bytes() -> int:
  """MemAvailable of this host (Linux), or 0 where it cannot be read."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def chip_bytes(mem) -> int:
  """A compiled program's bytes on one chip from its memory_analysis(), code aside: arguments +
  outputs not aliased to them + temporaries."""
  return (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes)


class SplitCompiled:
  """What compile mode reads off a compiled round made of two programs: the memory of the larger
  one (they run one after the other, the state donated from one to the next), the sum of their
  costs and collectives."""

  def __init__(self, critic, generator, seconds=(), threads: int = 2):
    self.parts = (critic, generator)
    self.seconds = tuple(float(x) for x in seconds)  # each program's compile time
    self.threads = threads

  def memory_analysis(self):
    """The larger program's argument / output / alias / temporary bytes, and both programs' code
    (both executables stay loaded)."""
    import types  # pylint: disable=g-import-not-at-top
    mems = [p.memory_analysis() for p in self.parts]
    big = max(mems, key=chip_bytes)
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes")
    return types.SimpleNamespace(
        **{f: getattr(big, f) for f in fields},
        generated_code_size_in_bytes=sum(int(getattr(m, "generated_code_size_in_bytes", 0) or 0)
                                         for m in mems))

  def cost_analysis(self) -> dict:
    out = {}
    for p in self.parts:
      cost = p.cost_analysis() or {}
      if isinstance(cost, list):
        cost = cost[0] if cost else {}
      for k, v in cost.items():
        if isinstance(v, (int, float)):
          out[k] = out.get(k, 0.0) + v
    return out

  def as_text(self) -> str:
    return "\n".join(p.as_text() or "" for p in self.parts)
