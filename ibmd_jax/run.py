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

This is the layer that reads the config: `run` turns it into typed options (`ibmd_jax.options`)
once, and everything below takes those. (The functions here also take a ConfigDict, for tools and
tests that start from one.)
"""
from __future__ import annotations

from typing import Any, Optional

import jax
from absl import logging

from ibmd_jax import api, checks
from ibmd_jax import checkpointing as ckpt
from ibmd_jax import evaluate as evaluate_lib
from ibmd_jax import options as options_lib
from ibmd_jax import paths
from ibmd_jax import programs
from ibmd_jax import sharding as shd
from ibmd_jax import steps
from ibmd_jax import teacher_io
from ibmd_jax.errors import ConfigError, MissingPath, TeacherMismatch
from ibmd_jax.models import resolve_model_config
from ibmd_jax.options import RunOptions
from ibmd_jax.tasks import Task, make_task
from ibmd_jax.train import Loop, make_deadline, run_loop
from ibmd_jax.writer import MetricWriter

MODES = checks.MODES


def save_config(config, workdir: str):
  paths.makedirs(workdir)
  if jax.process_index() == 0:
    paths.write_text(paths.join(workdir, "config.json"), config.to_json_best_effort(indent=2))


def teacher_meta(opts: RunOptions, task: Task) -> dict:
  t = opts.task
  return {"model": resolve_model_config(t.model, task.bridge), "bridge": dict(t.bridge),
          "conditional": t.conditional, "data": dict(t.data),
          "trained_steps": opts.teacher.steps, "source": "ibmd_jax teacher mode"}


def train_teacher(opts: RunOptions, workdir: str, task: Task, writer: MetricWriter, mesh,
                  deadline=None):
  """Bridge matching on the task's pairs; saves and returns the EMA parameters."""
  opts = options_lib.from_config(opts)
  tc = opts.teacher
  key = jax.random.key(opts.seed)
  step_fn, planned = programs.teacher_program(opts, task, mesh)
  loop = Loop(name="teacher", step_fn=step_fn, state=planned,
              data=task.train_data("teacher", tc.batch_size), total=tc.steps,
              total_name="teacher.steps", fingerprint=opts.fingerprint,
              **opts.safety.as_kwargs(),
              directory=paths.join(workdir, "teacher_checkpoints"), mesh=mesh,
              key=jax.random.fold_in(key, 1), batch_size=1, rate_name="steps_per_s",
              save_every=tc.save_every, keep=opts.checkpoint.keep,
              log_every=opts.log_every, deadline=deadline)
  state = run_loop(loop, writer)
  teacher_io.save_teacher(paths.join(workdir, "teacher"), state.ema, teacher_meta(opts, task))
  return state.ema


def get_teacher(opts: RunOptions, workdir: str, task: Task, writer: MetricWriter, mesh,
                train: bool, deadline=None):
  """The teacher's network parameters (sharded): teacher.checkpoint, <workdir>/teacher, or
  training one. A saved teacher must fit the config (network, bridge, data setup) and have been
  trained; in the training modes, one trained for fewer than teacher.steps is trained on."""
  opts = options_lib.from_config(opts)
  tc = opts.teacher
  path = tc.checkpoint or paths.join(workdir, "teacher")
  if tc.source == "checkpoint" or paths.exists(paths.join(path, teacher_io.TEACHER_META)):
    meta = teacher_io.read_teacher_meta(path)
    why = teacher_io.teacher_mismatch(meta, opts.task)
    if why:
      raise TeacherMismatch(f"the teacher in {path} does not fit this config: {why}. Use a "
                            "teacher trained for this setup or make the config agree")
    trained = meta.get("trained_steps")
    if trained is not None and int(trained) < 1:
      raise TeacherMismatch(f"the teacher in {path} was trained for {trained} steps: train it "
                            "(--config.mode=teacher with teacher.steps >= 1)")
    steps_wanted = tc.steps
    if (train and tc.source == "train" and not tc.checkpoint
        and trained is not None and int(trained) != steps_wanted):
      if int(trained) > steps_wanted:
        raise ConfigError(f"the teacher in {path} was trained for {trained} steps but "
                          f"--config.teacher.steps={steps_wanted}: pass teacher.steps={trained} "
                          "to use it (or more to train it on), or use another workdir")
      print(f"[teacher] {path} was trained for {trained} steps; teacher.steps={steps_wanted}: "
            "training on", flush=True)
      return train_teacher(opts, workdir, task, writer, mesh, deadline)
    params, _ = teacher_io.load_teacher(path, programs.teacher_abstract(task, mesh))
    logging.info("loaded teacher from %s", path)
    return params
  if not train:
    raise MissingPath(f"no teacher in {path}: run --config.mode=teacher (or pipeline) first, or "
                      "convert one with `python -m launch.convert` and pass "
                      "--config.teacher.checkpoint")
  return train_teacher(opts, workdir, task, writer, mesh, deadline)


def distill(opts: RunOptions, workdir: str, task: Task, teacher_params,
            writer: Optional[MetricWriter], mesh, deadline=None, eval_fn=None,
            eval_every: int = 0) -> steps.IBMDState:
  """IBMD from the options (ibmd_jax.api.distill with the task's data and networks);
  eval_fn(step, state) every eval_every rounds (api.distill)."""
  opts = options_lib.from_config(opts)
  teacher = evaluate_lib.distilled_teacher(opts.distill_teacher, task)
  data = task.train_data("distill", opts.distill.batch_size, opts.distill.critic_steps + 1)
  return api.distill(teacher=teacher, teacher_params=teacher_params, net=task.net,
                     init_params=teacher_params, bridge=task.bridge, batches=data,
                     workdir=workdir, example=task.example(), options=opts.distill, mesh=mesh,
                     writer=writer, deadline=deadline, eval_fn=eval_fn, eval_every=eval_every,
                     profile_start=opts.profile.start, profile_steps=opts.profile.steps,
                     fingerprint=opts.fingerprint)


def _plan_distill_state(opts: RunOptions, task: Task, teacher_params, mesh):
  opts = options_lib.from_config(opts)
  return api.plan_state(evaluate_lib.make_ibmd(opts, task), task.net, teacher_params,
                        task.example(), opts.distill, mesh)


def make_mesh(opts: RunOptions):
  return shd.make_mesh(opts.mesh.data, opts.mesh.fsdp)


def init_distill_state(opts: RunOptions, task: Task, teacher_params, mesh=None):
  """(IBMDState, gen_tx, critic_tx) as distillation starts: generator and critic are the teacher,
  the generator's noise weights zero (or N(0, distill.z_init_scale²)); built in its shardings."""
  opts = options_lib.from_config(opts)
  mesh = make_mesh(opts) if mesh is None else mesh
  planned, gen_tx, critic_tx = _plan_distill_state(opts, task, teacher_params, mesh)
  return planned.build(), gen_tx, critic_tx


def saved_generator(opts: RunOptions, workdir: str, task: Task, teacher_params, mesh,
                    step: Optional[int] = None):
  """The EMA generator of the newest distillation checkpoint in the workdir (with `step`: of the
  checkpoint of that round, e.g. for a curve against rounds), or None when there is none."""
  if not paths.isdir(paths.join(workdir, "checkpoints")):
    return None
  planned, _, _ = _plan_distill_state(opts, task, teacher_params, mesh)
  # read-only: the run may still be writing there (its unfinished checkpoint stays untouched)
  manager = ckpt.RunCheckpointer(paths.join(workdir, "checkpoints"), read_only=True)
  try:
    got, restored, _ = manager.restore_latest(planned.abstract,
                                              before=None if step is None else step + 1)
  finally:
    manager.close()
  if step is not None and got != step:
    raise FileNotFoundError(f"no restorable checkpoint of round {step} in {workdir}/checkpoints "
                            f"(the newest before it: {got})")
  return None if restored is None else restored.gen_ema


def run(config, workdir: str, compile_fn=None) -> dict:
  """Runs config.mode in workdir; returns {'teacher', 'state', 'eval', 'grid'} as they apply.
  Compile mode runs `compile_fn(config, workdir, task)` (the launcher passes tools.aot.run: the
  compile tooling lives outside the package)."""
  checks.check_config(config)
  opts = options_lib.from_config(config)  # the one place the config is read
  deadline = make_deadline(opts.stop_after_s)
  workdir = checks.check_workdir(workdir)
  lock = checks.WorkdirLock(workdir, opts.lock_stale_s)
  checks.acquire_on_process_0(lock)  # one run per workdir; the processes of one run share it
  writer = None
  try:
    save_config(config, workdir)
    writer = MetricWriter(workdir)
    task = make_task(opts.task)
    mode = opts.mode
    if mode == "compile":  # no devices of its own: the slice's, from libtpu
      if compile_fn is None:
        raise ConfigError("mode='compile' runs from the launcher (python -m launch.main ... "
                          "--config.mode=compile) or tools.aot.run(config, workdir)")
      return {"aot": compile_fn(config, workdir, task)}
    mesh = make_mesh(opts)
    if mode in ("eval", "pipeline"):  # bad eval settings fail now, not after training
      evaluate_lib.check(opts, task)
    out: dict[str, Any] = {}
    teacher = get_teacher(opts, workdir, task, writer, mesh,
                          train=mode in ("teacher", "pipeline"), deadline=deadline)
    out["teacher"] = teacher
    if mode == "teacher":
      out["grid"] = task.preview(opts.task.eval, workdir, teacher)
    if mode in ("distill", "pipeline"):
      out["state"] = distill(opts, workdir, task, teacher, writer, mesh, deadline)
    if mode in ("eval", "pipeline"):
      if opts.task.eval.get("untrained_student", False):
        gen = init_distill_state(opts, task, teacher, mesh)[0].gen_ema
      else:
        gen = (out["state"].gen_ema if "state" in out
               else saved_generator(opts, workdir, task, teacher, mesh))
      out["eval"] = evaluate_lib.evaluate(opts, workdir, task, teacher, gen, writer, mesh)
    return out
  finally:
    if writer is not None:
      writer.close()
    lock.release()
