"""Tasks: the toy couplings and the image tasks behind one protocol (`tasks.base.Task`).

`make_task(config)` picks the task class by `config.data.kind` from `TASKS`; every image source
kind of `ibmd_jax.data` maps to the image task. A new task: a class with the protocol's methods,
registered here.
"""
from ibmd_jax.data import KINDS as IMAGE_KINDS
from ibmd_jax.tasks.base import EvalData, Scorer, Task
from ibmd_jax.tasks.images import ImageTask
from ibmd_jax.tasks.toy import ToyTask

TASKS = {"toy": ToyTask, **{kind: ImageTask for kind in IMAGE_KINDS}}


def make_task(config) -> Task:
  kind = str(config.data.kind)
  if kind not in TASKS:
    raise ValueError(f"data.kind={kind!r} is not a task; choose from {sorted(TASKS)}")
  return TASKS[kind](config)


__all__ = ["EvalData", "Scorer", "Task", "TASKS", "ImageTask", "ToyTask", "make_task"]
