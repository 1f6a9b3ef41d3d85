"""Compile mode's handling of a split round (distill.split_round, sharding.jit_round(split=True)):
its critic program and generator program lowered, compiled together in threads, and read as one
compiled program (the larger one's memory, the sum of their costs)."""
from __future__ import annotations

import time
import types
from concurrent.futures import ThreadPoolExecutor

from ibmd_jax import sharding as shd


def lower(fn, *args):
  """fn.lower(*args), and for a split round (shd.SplitRound) its two programs' SplitLowered: the
  critic's lowered outputs give the generator program its metrics' shapes."""
  if not isinstance(fn, shd.SplitRound):
    return fn.lower(*args)
  state, teacher, batches, key = args
  critic = fn.critic.lower(state, batches, key)
  metrics = critic.out_info[1]
  return SplitLowered(critic, fn.generator.lower(state, teacher, batches, key, metrics))


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
