"""Run modes: teacher training, IBMD distillation, evaluation, and the whole pipeline.

`run(config, workdir)` is what the launcher and Colab call. A run directory holds
  config.json            the resolved config
  metrics.jsonl          one JSON object per logged step ({"mode", "step", ...})
  teacher/               the teacher checkpoint (Orbax + teacher.json)
  teacher_checkpoints/   teacher training states (every teacher.save_every steps), for resume
  checkpoints/           distillation states (generator, critic, EMA, optimisers, data position)
  eval/                  metrics.json, report.md, quality_vs_nfe.png (and image grids)
Resume is automatic (the training loop's, `ibmd_jax.train`); a finished teacher in
<workdir>/teacher is reused.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
from absl import logging

from ibmd_jax import api, checks
from ibmd_jax import checkpointing as ckpt
from ibmd_jax import evaluate as evaluate_lib
from ibmd_jax import programs
from ibmd_jax import sharding as shd
from ibmd_jax import steps
from ibmd_jax.errors import ConfigError, TeacherMismatch
from ibmd_jax.models import resolve_model_config
from ibmd_jax.tasks import Task, make_task
from ibmd_jax.train import Loop, make_deadline, run_loop, safety_options
from ibmd_jax.writer import MetricWriter

MODES = checks.MODES


def save_config(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))


def teacher_meta(config, task: Task) -> dict:
  return {"model": resolve_model_config(config.model, task.bridge), "bridge": dict(config.bridge),
          "conditional": bool(config.conditional), "data": dict(config.data),
          "trained_steps": int(config.teacher.steps), "source": "ibmd_jax teacher mode"}


def train_teacher(config, workdir: str, task: Task, writer: MetricWriter, mesh, deadline=None):
  """Bridge matching on the task's pairs; saves and returns the EMA parameters."""
  tc = config.teacher
  key = jax.random.key(int(config.seed))
  bs = int(tc.batch_size)
  step_fn, planned = programs.teacher_program(config, task, mesh)
  loop = Loop(name="teacher", step_fn=step_fn, state=planned,
              data=task.train_data("teacher", bs), total=int(tc.steps),
              total_name="teacher.steps", fingerprint=ckpt.flat_config(config),
              **safety_options(config),
              directory=os.path.join(workdir, "teacher_checkpoints"), mesh=mesh,
              key=jax.random.fold_in(key, 1), batch_size=1, rate_name="steps_per_s",
              save_every=int(tc.save_every), keep=int(config.checkpoint.keep),
              log_every=int(config.log_every), deadline=deadline)
  state = run_loop(loop, writer)
  ckpt.save_teacher(os.path.join(workdir, "teacher"), state.ema, teacher_meta(config, task))
  return state.ema


def get_teacher(config, workdir: str, task: Task, writer: MetricWriter, mesh, train: bool,
                deadline=None):
  """The teacher's network parameters (sharded): teacher.checkpoint, <workdir>/teacher, or
  training one. A saved teacher must fit the config (network, bridge, data setup) and have been
  trained; in the training modes, one trained for fewer than teacher.steps is trained on."""
  path = config.teacher.checkpoint or os.path.join(workdir, "teacher")
  if config.teacher.source == "checkpoint" or os.path.exists(os.path.join(path, ckpt.TEACHER_META)):
    meta = ckpt.read_teacher_meta(path)
    why = ckpt.teacher_mismatch(meta, config)
    if why:
      raise TeacherMismatch(f"the teacher in {path} does not fit this config: {why}. Use a "
                            "teacher trained for this setup or make the config agree")
    trained = meta.get("trained_steps")
    if trained is not None and int(trained) < 1:
      raise TeacherMismatch(f"the teacher in {path} was trained for {trained} steps: train it "
                            "(--config.mode=teacher with teacher.steps >= 1)")
    steps_wanted = int(config.teacher.steps)
    if (train and config.teacher.source == "train" and not config.teacher.checkpoint
        and trained is not None and int(trained) != steps_wanted):
      if int(trained) > steps_wanted:
        raise ConfigError(f"the teacher in {path} was trained for {trained} steps but "
                          f"--config.teacher.steps={steps_wanted}: pass teacher.steps={trained} "
                          "to use it (or more to train it on), or use another workdir")
      print(f"[teacher] {path} was trained for {trained} steps; teacher.steps={steps_wanted}: "
            "training on", flush=True)
      return train_teacher(config, workdir, task, writer, mesh, deadline)
    params, _ = ckpt.load_teacher(path, programs.teacher_abstract(task, mesh))
    logging.info("loaded teacher from %s", path)
    return params
  if not train:
    raise FileNotFoundError(f"no teacher in {path}: run --config.mode=teacher (or pipeline) first")
  return train_teacher(config, workdir, task, writer, mesh, deadline)


def distill(config, workdir: str, task: Task, teacher_params, writer: Optional[MetricWriter],
            mesh, deadline=None, eval_fn=None, eval_every: int = 0) -> steps.IBMDState:
  """IBMD from the config (ibmd_jax.api.distill with the task's data and networks); eval_fn(step,
  state) every eval_every rounds (api.distill)."""
  opts = api.DistillOptions.from_config(config)
  teacher = evaluate_lib.distilled_teacher(config, task)
  data = task.train_data("distill", opts.batch_size, opts.critic_steps + 1)
  return api.distill(teacher=teacher, teacher_params=teacher_params, net=task.net,
                     init_params=teacher_params, bridge=task.bridge, batches=data,
                     workdir=workdir, example=task.example(), options=opts, mesh=mesh,
                     writer=writer, deadline=deadline, eval_fn=eval_fn, eval_every=eval_every,
                     profile_start=int(config.profile.start),
                     profile_steps=int(config.profile.steps), fingerprint=ckpt.flat_config(config))


def _plan_distill_state(config, task: Task, teacher_params, mesh):
  return api.plan_state(evaluate_lib.make_ibmd(config, task), task.net, teacher_params,
                        task.example(), api.DistillOptions.from_config(config), mesh)


def init_distill_state(config, task: Task, teacher_params, mesh=None):
  """(IBMDState, gen_tx, critic_tx) as distillation starts: generator and critic are the teacher,
  the generator's noise weights zero (or N(0, distill.z_init_scale²)); built in its shardings."""
  mesh = shd.mesh_from_config(config) if mesh is None else mesh
  planned, gen_tx, critic_tx = _plan_distill_state(config, task, teacher_params, mesh)
  return planned.build(), gen_tx, critic_tx


def saved_generator(config, workdir: str, task: Task, teacher_params, mesh):
  """The EMA generator of the newest distillation checkpoint in the workdir, or None."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  planned, _, _ = _plan_distill_state(config, task, teacher_params, mesh)
  manager = ckpt.RunCheckpointer(os.path.join(workdir, "checkpoints"))
  try:
    _, restored, _ = manager.restore_latest(planned.abstract)
  finally:
    manager.close()
  return None if restored is None else restored.gen_ema


def run(config, workdir: str, compile_fn=None) -> dict:
  """Runs config.mode in workdir; returns {'teacher', 'state', 'eval', 'grid'} as they apply.
  Compile mode runs `compile_fn(config, workdir, task)` (the launcher passes tools.aot.run: the
  compile tooling lives outside the package)."""
  deadline = make_deadline(config.stop_after_s)
  checks.check_config(config)
  workdir = checks.check_workdir(workdir)
  lock = checks.WorkdirLock(workdir, float(config.lock_stale_s))
  checks.acquire_on_process_0(lock)  # one run per workdir; the processes of one run share it
  writer = None
  try:
    save_config(config, workdir)
    writer = MetricWriter(workdir)
    task = make_task(config)
    if config.mode == "compile":  # no devices of its own: the slice's, from libtpu
      if compile_fn is None:
        raise ConfigError("mode='compile' runs from the launcher (python -m launch.main ... "
                          "--config.mode=compile) or tools.aot.run(config, workdir)")
      return {"aot": compile_fn(config, workdir, task)}
    mesh = shd.mesh_from_config(config)
    if config.mode in ("eval", "pipeline"):  # bad eval settings fail now, not after training
      evaluate_lib.check(config, task)
    out: dict[str, Any] = {}
    teacher = get_teacher(config, workdir, task, writer, mesh,
                          train=config.mode in ("teacher", "pipeline"), deadline=deadline)
    out["teacher"] = teacher
    if config.mode == "teacher":
      out["grid"] = task.preview(config, workdir, teacher)
    if config.mode in ("distill", "pipeline"):
      out["state"] = distill(config, workdir, task, teacher, writer, mesh, deadline)
    if config.mode in ("eval", "pipeline"):
      if config.eval.get("untrained_student", False):
        gen = init_distill_state(config, task, teacher, mesh)[0].gen_ema
      else:
        gen = (out["state"].gen_ema if "state" in out
               else saved_generator(config, workdir, task, teacher, mesh))
      out["eval"] = evaluate_lib.evaluate(config, workdir, task, teacher, gen, writer, mesh)
    return out
  finally:
    if writer is not None:
      writer.close()
    lock.release()
