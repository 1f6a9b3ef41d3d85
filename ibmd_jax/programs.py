"""The launcher's jitted programs, built the one way that training, evaluation and compile mode
(tools/aot.py) all use: the teacher step with its shardings and donation, and the teacher's
parameter shapes in their shardings. (The fused IBMD round is `api.round_program`.)"""
from __future__ import annotations

from typing import Any

import jax

from ibmd_jax import options as options_lib
from ibmd_jax import sharding as shd
from ibmd_jax import state as state_lib
from ibmd_jax import steps
from ibmd_jax.optim import make_optimizer
from ibmd_jax.tasks.base import Task


def teacher_abstract(task: Task, mesh) -> Any:
  """The teacher network's parameter shapes with their shardings (what a teacher restores into)."""
  ex = task.example()
  shapes = jax.eval_shape(lambda: task.net.init(jax.random.key(0), jax.numpy.asarray(ex["x"]),
                                                label=ex.get("label")))
  return state_lib.abstract(shapes, shd.state_shardings(mesh, shapes))


def teacher_program(opts, task: Task, mesh) -> tuple[Any, state_lib.Planned]:
  """(jitted teacher step with its shardings and donation, the planned TeacherState): what
  teacher training runs, and what compile mode (tools.aot) compiles. opts: options.RunOptions
  (a ConfigDict, from tools and tests, is read into them)."""
  opts = options_lib.from_config(opts)
  tc = opts.teacher
  key = jax.random.key(opts.seed)
  shd.check_batch(mesh, tc.batch_size, "teacher.batch_size")
  micro = tc.microbatches
  shd.check_batch(mesh, tc.batch_size // micro, "teacher.batch_size / teacher.microbatches")
  tx = make_optimizer(tc.optimizer, total_steps=tc.steps)
  planned = state_lib.teacher_state(task.net, task.example(), tx, jax.random.fold_in(key, 0), mesh)
  step_fn = jax.jit(
      steps.make_teacher_step(task.net, task.bridge, tx, tc.ema, dropout=tc.dropout,
                              microbatches=micro),
      in_shardings=(planned.shardings, shd.batch_sharding(mesh), shd.replicated(mesh)),
      out_shardings=(planned.shardings, shd.replicated(mesh)), donate_argnums=0)
  return step_fn, planned
