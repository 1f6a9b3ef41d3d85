"""Training states built shape-first, straight into their shardings.

`jax.eval_shape` gives the state's shapes without computing anything, `sharding.state_shardings`
turns them into NamedShardings, and `jax.jit(init, out_shardings=...)` materialises every leaf
directly in its shard: the full state never sits on one device (a 552M-parameter IBMD state would
not fit one 16 GiB chip before it is sharded).
"""
from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from ibmd_jax import sharding as shd
from ibmd_jax import steps
from ibmd_jax.denoiser import NetDenoiser, widen_like


# Programs that run once or cost milliseconds (state initialisation, the toy's data samplers) are
# compiled at LLVM -O0 on the CPU: their cost there is XLA:CPU compiling their threefry draws, which
# -O0 cuts to a third (the digits tiny UNet's teacher-state init: 13.4 -> 4.9 CPU-s of compile, its
# one run 25 -> 56 ms; docs/benchmarks.md, "Run-once programs at -O0"). Other platforms: as usual.
CPU_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def run_once_options(platform: str) -> Optional[dict]:
  """jax.jit compiler_options for a program that runs once on `platform` (see above)."""
  return dict(CPU_FAST_COMPILE) if platform == "cpu" else None


def is_abstract(tree: Any) -> bool:
  """True for a tree of ShapeDtypeStructs (compile mode plans shapes; nothing to put anywhere)."""
  return all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree))


def abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying `shardings`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(lambda: tree), shardings)


class Planned:
  """A state known by its shapes and shardings before it exists: `abstract` (ShapeDtypeStructs
  with shardings, what a checkpoint restores into) and `build()` (computes it into them)."""

  def __init__(self, init, mesh: Mesh, *args, in_shardings=None):
    shapes = jax.eval_shape(init, *args)
    self.shardings = shd.state_shardings(mesh, shapes)
    self.abstract = abstract(shapes, self.shardings)
    kw = {} if in_shardings is None else {"in_shardings": in_shardings}
    self._fn = jax.jit(init, out_shardings=self.shardings,
                       compiler_options=run_once_options(mesh.devices.flat[0].platform), **kw)
    self._args = args

  def build(self):
    return self._fn(*self._args)


def teacher_state(net: NetDenoiser, example: dict, tx, key, mesh: Mesh) -> Planned:
  """A TeacherState of freshly initialised parameters, planned in its shardings."""
  x = jnp.asarray(example["x"])
  label = example.get("label")

  def init(k):
    return steps.teacher_state(net.init(k, x, label=label), tx)

  return Planned(init, mesh, key)


def ibmd_state(teacher_params: Any, gen_template: Optional[Any], gen_tx, critic_tx, key,
               mesh: Mesh, z_init_scale: float = 0.0) -> Planned:
  """An IBMDState whose generator and critic start as the teacher, planned in its shardings.

  teacher_params: the teacher's parameters (ideally already sharded, e.g. restored with
  shardings); gen_template: the generator's parameter shapes when it has extra noise input
  channels (widened from the teacher with zero weights, or N(0, z_init_scale²)), None when the
  generator has the teacher's shapes.
  """
  teacher_sh = shd.state_shardings(mesh, teacher_params)
  if not is_abstract(teacher_params):
    teacher_params = jax.device_put(teacher_params, teacher_sh)

  def init(teacher):
    gen = teacher if gen_template is None else widen_like(teacher, gen_template, key=key,
                                                           new_scale=z_init_scale)
    return steps.ibmd_state(gen, teacher, gen_tx, critic_tx)

  return Planned(init, mesh, teacher_params, in_shardings=(teacher_sh,))
