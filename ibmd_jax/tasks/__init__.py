"""Tasks: the toy couplings and the image tasks behind one protocol (`tasks.base.Task`).

`make_task(options)` (options.TaskOptions) picks the task class by `data['kind']` from `TASKS`; every image source
kind of `ibmd_jax.data` maps to the image task. A new task: a class with the protocol's methods,
registered here.
"""
from ibmd_jax import options as options_lib
from ibmd_jax.data import KINDS as IMAGE_KINDS
from ibmd_jax.tasks.base import EvalData, Scorer, Task
from ibmd_jax.tasks.images import ImageTask
from ibmd_jax.tasks.toy import ToyTask

TASKS = {"toy": ToyTask, **{kind: ImageTask for kind in IMAGE_KINDS}}


def make_task(options) -> Task:
  """The task of options.TaskOptions (a ConfigDict, from tools and tests, is read into them)."""
  if hasattr(options, "to_dict"):
      options = options_lib.task_options(options)
  kind = str(options.data["kind"])
  if kind not in TASKS:
    raise ValueError(f"data.kind={kind!r} is not a task; choose from {sorted(TASKS)}")
  return TASKS[kind](options)


__all__ = ["EvalData", "Scorer", "Task", "TASKS", "ImageTask", "ToyTask", "make_task"]
