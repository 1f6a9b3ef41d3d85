"""Run modes: teacher training, IBMD distillation, evaluation, and the whole pipeline.

`run(config, workdir)` is what the launcher and Colab call. A run directory holds
  config.json            the resolved config
  metrics.jsonl          one JSON object per logged step ({"mode", "step", ...})
  teacher/               the teacher checkpoint (Orbax + teacher.json)
  checkpoints/           distillation states (generator, critic, EMA, optimisers, step)
  eval/metrics.json      evaluation numbers, eval/report.md the table
  teacher_checkpoints/   teacher training states (every teacher.save_every steps), for resume
Resume is automatic: a teacher training or distillation restarted on the same workdir continues
from its last checkpoint; a finished teacher in <workdir>/teacher is reused. SIGTERM (preemption)
saves and exits with 143; `stop_after_s` > 0 saves and exits with 75 (EXIT_RESUME) once that
many seconds have passed since the start: run the same command again to continue.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ibmd_jax import checkpoint as ckpt
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import sharding as shd
from ibmd_jax import teacher as teacher_lib
from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser, widen_like
from ibmd_jax.models import build_model
from ibmd_jax.optim import make_optimizer
from ibmd_jax.samplers import make_sampler

MODES = ("teacher", "distill", "eval", "pipeline")
EXIT_SIGTERM = 143  # preempted (SIGTERM): the state is saved, run the same command again
EXIT_RESUME = 75  # stop_after_s reached (EX_TEMPFAIL): the state is saved, run it again


# ---------------------------------------------------------------------- run bookkeeping
class MetricWriter:
  """Appends JSON lines to <workdir>/metrics.jsonl (process 0 only) and logs a progress line."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.active = jax.process_index() == 0
    self.tb = None
    if self.active:
      try:
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=10)
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to metrics.jsonl only")

  def close(self):
    if self.tb is not None:
      self.tb.close()

  def write(self, mode: str, step: int, metrics: dict, echo: bool = True):
    row = {"mode": mode, "step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    for k, v in row.items():
      if isinstance(v, float) and not np.isfinite(v):
        raise FloatingPointError(f"{mode} step {step}: {k} is {v}; lower the learning rate or "
                                 "enable gradient clipping (optimizer.grad_clip)")
    if self.active:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
      if self.tb is not None:
        for k, v in row.items():
          if k not in ("mode", "step"):
            self.tb.add_scalar(f"{mode}/{k}", v, int(step))
    if echo and self.active:
      print(f"[{mode}] step {step}: " + " ".join(
          f"{k}={v:.4g}" for k, v in row.items() if k not in ("mode", "step")), flush=True)


def save_config(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
              else json.dumps(dict(config), indent=2, default=str))


# ---------------------------------------------------------------------- problems
class Problem:
  """What the run loops need from a task (toy coupling or image task).

  Batches are dicts of host (numpy) arrays: 'x0' and 'xT' (teacher training; distillation reads only
  'xT'), optional 'mask' (1 = unknown pixels) and 'label'. They are global batches, built
  deterministically from the step so that a resumed run sees the batches an uninterrupted one
  would (``data_state``/``set_data_state`` carry iterator state for stateful pipelines).
  """

  bridge: Bridge
  net: NetDenoiser
  conditional: bool
  exact: Optional[Callable] = None

  def example(self) -> np.ndarray:  # a [2, ...] input for parameter shapes
    raise NotImplementedError

  def example_label(self):
    return None

  def teacher_batch(self, step: int, batch_size: int) -> dict:
    raise NotImplementedError

  def distill_batches(self, round_: int, n: int, batch_size: int) -> dict:
    """n batches stacked on a leading axis (L critic steps + 1 generator step)."""
    raise NotImplementedError

  def data_state(self) -> dict:
    return {}

  def set_data_state(self, state: dict) -> None:
    del state


@dataclasses.dataclass(frozen=True, eq=False)
class ToyProblem(Problem):
  """A toy coupling with its bridge, network denoiser and exact teacher; batches from the step."""

  gmm: toy.JointGMM
  bridge: Bridge
  conditional: bool
  net: NetDenoiser
  exact: Callable
  seed: int = 0

  def example(self):
    return np.zeros((2, self.gmm.dim), np.float32)

  def teacher_batch(self, step, batch_size):
    x0, xT = _toy_teacher_batch(self.gmm, self.seed, step, batch_size)
    return {"x0": np.asarray(x0), "xT": np.asarray(xT)}

  def distill_batches(self, round_, n, batch_size):
    return {"xT": np.asarray(_toy_distill_xT(self.gmm, self.seed, round_, n, batch_size))}


# One compiled program per batch shape (eagerly, each of the sampler's dozen ops would be compiled
# and dispatched on its own at every step).
@functools.partial(jax.jit, static_argnums=(1, 3))
def _toy_teacher_batch(gmm: toy.JointGMM, seed: int, step, batch_size: int):
  key = jax.random.fold_in(jax.random.key(seed + 11), step)
  x0, xT, _ = gmm.sample(key, batch_size)
  return x0, xT


@functools.partial(jax.jit, static_argnums=(1, 3, 4))
def _toy_distill_xT(gmm: toy.JointGMM, seed: int, round_, n: int, batch_size: int):
  key = jax.random.fold_in(jax.random.key(seed + 12), round_)
  return gmm.sample_xT(key, n * batch_size).reshape(n, batch_size, -1)


def make_problem(config) -> Problem:
  if config.data.kind != "toy":
    from ibmd_jax import image_task  # images: UNet, degradations, grain pipelines

    return image_task.make_problem(config)
  gmm = toy.make_coupling(config.data.coupling, int(config.data.dim))
  bridge = Bridge.from_config(config.bridge)
  module = build_model(config.model)
  net = NetDenoiser(bridge, module, conditional=bool(config.conditional))
  return ToyProblem(gmm, bridge, bool(config.conditional), net,
                    toy.exact_predictor(gmm, bridge, bool(config.conditional)), int(config.seed))


# ---------------------------------------------------------------------- teacher
def teacher_meta(config) -> dict:
  return {"model": dict(config.model), "bridge": dict(config.bridge),
          "conditional": bool(config.conditional), "data": dict(config.data),
          "source": "ibmd_jax teacher mode"}


def train_teacher(config, workdir: str, problem: ToyProblem, writer: MetricWriter,
                  deadline: Optional[float] = None):
  """Bridge matching on pairs from the coupling; returns the EMA parameters.

  The training state (parameters, optimiser, EMA, data position) is saved to
  <workdir>/teacher_checkpoints every teacher.save_every steps (0: only on SIGTERM or at the
  deadline) and a restart continues from the newest one; the finished teacher goes to
  <workdir>/teacher.
  """
  tc = config.teacher
  key = jax.random.key(config.seed)
  mesh = make_mesh(config)
  shd.check_batch(mesh, int(tc.batch_size), "teacher.batch_size")
  params = problem.net.init(jax.random.fold_in(key, 0), jnp.asarray(problem.example()),
                            label=problem.example_label())
  tx = make_optimizer(tc.optimizer, total_steps=int(tc.steps))
  state = teacher_lib.init_state(params, tx)
  state_sh = shd.state_shardings(mesh, state)
  step_fn = jax.jit(
      teacher_lib.make_train_step(problem.net, problem.bridge, tx, float(tc.ema),
                                  dropout=float(config.model.get("dropout", 0.0)) > 0),
      in_shardings=(state_sh, shd.batch_sharding(mesh), shd.replicated(mesh)),
      out_shardings=(state_sh, shd.replicated(mesh)), donate_argnums=0)
  save_every = int(tc.get("save_every", 0))
  keep = int(config.checkpoint.keep) if "checkpoint" in config else 2
  manager = ckpt.RunCheckpointer(os.path.join(workdir, "teacher_checkpoints"), max_to_keep=keep,
                                 save_every=save_every if save_every > 0 else 2**62)
  start, restored, meta = manager.restore_latest(abstract_with(state, state_sh))
  if restored is not None:
    if int(restored.step) > int(tc.steps):
      manager.close()
      raise ValueError(f"{manager.directory} holds step {int(restored.step)} but "
                       f"teacher.steps={int(tc.steps)}: raise teacher.steps or use a new workdir")
    state = restored
    problem.set_data_state(meta.get("data", {}))
    print(f"[teacher] resumed from step {start}", flush=True)
  state = jax.device_put(state, state_sh)
  pi, pc = jax.process_index(), jax.process_count()
  bs = int(tc.batch_size)
  stop = StopSignal()
  t0, done0 = time.time(), int(state.step)
  try:
    for i in range(int(state.step), int(tc.steps)):
      k = jax.random.fold_in(jax.random.fold_in(key, 1), i)
      batch = problem.teacher_batch(i, bs)
      batch = {n: shd.global_batch(mesh, v[pi * bs // pc:(pi + 1) * bs // pc])
               for n, v in batch.items()}
      state, m = step_fn(state, batch, k)
      step = i + 1
      if step % config.log_every == 0 or step == tc.steps:
        writer.write("teacher", step,
                     {**m, "steps_per_s": (step - done0) / (time.time() - t0)})
      meta = functools.partial(_run_meta, problem, step)  # read only when saving
      manager.save(step, state, meta)
      _stop_if_asked("teacher", stop, deadline, manager, step, int(tc.steps), state, meta)
  finally:
    stop.restore()
    manager.close()
  ckpt.save_teacher(os.path.join(workdir, "teacher"), state.ema, teacher_meta(config))
  return jax.device_get(state.ema)


def get_teacher(config, workdir: str, problem: Problem, writer: MetricWriter, train: bool,
                deadline: Optional[float] = None):
  """The teacher's network parameters: from teacher.checkpoint, <workdir>/teacher, or training."""
  path = config.teacher.checkpoint or os.path.join(workdir, "teacher")
  if config.teacher.source == "checkpoint" or os.path.exists(os.path.join(path, ckpt.TEACHER_META)):
    params, meta = ckpt.load_teacher(path)
    why = ckpt.teacher_mismatch(meta, config)
    if why:
      raise ValueError(f"the teacher in {path} does not fit this config: {why}; make them agree")
    logging.info("loaded teacher from %s", path)
    return params
  if not train:
    raise FileNotFoundError(f"no teacher in {path}: run --config.mode=teacher (or pipeline) first")
  return train_teacher(config, workdir, problem, writer, deadline)


# ---------------------------------------------------------------------- distillation
def make_ibmd(config, problem: Problem, n_steps: Optional[int] = None) -> ibmd_lib.IBMD:
  dc = config.distill
  if dc.teacher not in ("exact", "network"):
    raise ValueError(f"distill.teacher must be 'exact' or 'network', got {dc.teacher!r}")
  if dc.teacher == "exact" and problem.exact is None:
    raise ValueError("distill.teacher='exact' needs a toy problem with a closed-form teacher; "
                     "use 'network' for image tasks")
  return ibmd_lib.IBMD(
      bridge=problem.bridge, teacher=problem.exact if dc.teacher == "exact" else problem.net,
      critic=problem.net, generator=problem.net, z_channels=int(dc.z_channels),
      n_steps=int(n_steps or dc.n_steps), multistep=dc.multistep, intermediate=dc.intermediate)


def init_distill_state(config, problem: Problem, teacher_params):
  """Generator and critic start from the teacher; the generator's z weights start at zero."""
  dc = config.distill
  key = jax.random.key(config.seed + 1)
  gen = teacher_params
  if dc.z_channels:
    template = jax.eval_shape(lambda: problem.net.init(
        key, jnp.asarray(problem.example()), z_channels=int(dc.z_channels),
        label=problem.example_label()))
    gen = widen_like(teacher_params, template, key=key, new_scale=float(dc.z_init_scale))
  rounds = int(dc.rounds)  # a cosine decay without decay_steps spans the whole run
  gen_tx = make_optimizer(dc.gen_optimizer, total_steps=rounds)
  critic_tx = make_optimizer(dc.critic_optimizer, total_steps=rounds * int(dc.critic_steps))
  return ibmd_lib.init_state(gen, teacher_params, gen_tx, critic_tx), gen_tx, critic_tx


def make_mesh(config):
  mc = config.get("mesh", None)
  return shd.make_mesh(int(mc.data), int(mc.fsdp)) if mc is not None else shd.make_mesh()


def sharded_round(round_step, mesh, state, teacher_params):
  """jit of the fused round with explicit in/out shardings and the state donated."""
  state_sh = shd.state_shardings(mesh, state)
  teacher_sh = shd.state_shardings(mesh, teacher_params)
  rep = shd.replicated(mesh)
  fn = jax.jit(round_step, in_shardings=(state_sh, teacher_sh, shd.batch_sharding(mesh, 1), rep),
               out_shardings=(state_sh, rep), donate_argnums=0)
  return fn, state_sh, teacher_sh


def abstract_with(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(lambda: tree), shardings)


def profile(config, workdir: str, step: int):
  """A jax.profiler trace of rounds (profile.start, profile.start + profile.steps], if asked."""
  pc = config.get("profile", None)
  if pc is None or int(pc.start) <= 0 or jax.process_index() != 0:
    return
  if step == int(pc.start):
    jax.profiler.start_trace(os.path.join(workdir, "profile"))
  elif step == int(pc.start) + int(pc.steps):
    jax.profiler.stop_trace()


class StopSignal:
  """Turns SIGTERM (preemption) into a flag the training loop checks between rounds."""

  def __init__(self):
    import signal

    self.received = False
    try:
      self._prev = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook runners): no handler
      self._prev = None

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def restore(self):
    import signal

    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)


def _run_meta(problem: Problem, step: int) -> dict:
  """What a checkpoint stores beside the state: the step and the data pipelines' positions."""
  return {"step": step, "data": problem.data_state()}


def _stop_if_asked(role: str, stop: StopSignal, deadline: Optional[float], manager, step: int,
                   total: int, state, meta: Callable[[], dict]) -> None:
  """After a step before the last: on SIGTERM or past the deadline, save now and exit (143 / 75)."""
  if step >= total:  # finishing is as quick as stopping
    return
  if stop.received:
    code, why = EXIT_SIGTERM, "SIGTERM"
  elif deadline is not None and time.time() >= deadline:
    code, why = EXIT_RESUME, "stop_after_s reached"
  else:
    return
  manager.save(step, state, meta, force=True)
  manager.close()
  print(f"[{role}] {why}: saved step {step} in {manager.directory}, exiting with {code}; "
        "run the same command again to continue", flush=True)
  raise SystemExit(code)


def distill(config, workdir: str, problem: Problem, teacher_params, writer: MetricWriter,
            deadline: Optional[float] = None):
  dc = config.distill
  ib = make_ibmd(config, problem)
  mesh = make_mesh(config)
  shd.check_batch(mesh, int(dc.batch_size), "distill.batch_size")
  state, gen_tx, critic_tx = init_distill_state(config, problem, teacher_params)
  _, _, round_step = ibmd_lib.make_steps(ib, gen_tx, critic_tx, float(dc.ema))
  round_fn, state_sh, teacher_sh = sharded_round(round_step, mesh, state, teacher_params)
  cc = config.checkpoint
  best_metric = str(cc.get("best_metric", ""))
  manager = ckpt.RunCheckpointer(os.path.join(workdir, "checkpoints"), max_to_keep=int(cc.keep),
                                 save_every=int(cc.every), best_metric=best_metric,
                                 best_mode=str(cc.get("best_mode", "min")))
  start, restored, meta = manager.restore_latest(abstract_with(state, state_sh))
  if restored is not None:
    state = restored
    problem.set_data_state(meta.get("data", {}))
    print(f"[distill] resumed from step {start}", flush=True)
  state = jax.device_put(state, state_sh)
  teacher_params = jax.device_put(teacher_params, teacher_sh)
  key = jax.random.key(config.seed + 2)
  n_batch, bs = int(dc.critic_steps) + 1, int(dc.batch_size)
  pi, pc = jax.process_index(), jax.process_count()
  stop = StopSignal()
  t0, done0 = time.time(), int(state.step)
  acc, n_acc = 0.0, 0  # the keep-best metric, averaged on device over each checkpoint interval
  try:
    for r in range(int(state.step), int(dc.rounds)):
      k = jax.random.fold_in(key, r)
      batches = problem.distill_batches(r, n_batch, bs)
      batches = {n: shd.global_batch(mesh, v[:, pi * bs // pc:(pi + 1) * bs // pc], 1)
                 for n, v in batches.items() if n != "x0"}  # distillation never sees clean x0
      state, m = round_fn(state, teacher_params, batches, k)
      step = r + 1
      profile(config, workdir, step)
      if step % config.log_every == 0 or step == dc.rounds:
        elapsed = time.time() - t0
        rate = (step - done0) * bs / elapsed
        eta = elapsed / (step - done0) * (int(dc.rounds) - step)
        writer.write("distill", step, {**m, "gen_samples_per_s": rate, "eta_s": eta})
      if best_metric:
        if best_metric not in m:
          raise ValueError(f"checkpoint.best_metric={best_metric!r} is not a round metric; "
                           f"choose one of {sorted(m)}")
        acc, n_acc = acc + m[best_metric], n_acc + 1
      meta = functools.partial(_run_meta, problem, step)  # read only when saving
      if manager.save(step, state, meta,
                      metrics={best_metric: float(acc) / n_acc} if n_acc else None):
        acc, n_acc = 0.0, 0
      _stop_if_asked("distill", stop, deadline, manager, step, int(dc.rounds), state, meta)
    manager.save(int(dc.rounds), state, _run_meta(problem, int(dc.rounds)), force=True)
  finally:
    stop.restore()
    manager.close()
  return state


# ---------------------------------------------------------------------- evaluation
def _timed(fn, *args):
  out = jax.block_until_ready(fn(*args))  # compile + warm-up
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return out, time.perf_counter() - t0


def evaluate(config, workdir: str, problem: Problem, teacher_params, gen_params,
             writer: MetricWriter) -> dict:
  if not isinstance(problem, ToyProblem):
    from ibmd_jax import image_task

    return image_task.evaluate(config, workdir, problem, teacher_params, gen_params, writer)
  return evaluate_toy(config, workdir, problem, teacher_params, gen_params, writer)


def toy_eval_set(config, gmm: toy.JointGMM):
  """The conditional toy's held-out evaluation set: xT [c, D], true samples of p(x0 | xT)
  [n, c, D] and xT repeated to [n * c, D], drawn from key seed + 3 (evaluate_toy; the student's
  samples use fold_in(key, 100 + steps))."""
  key = jax.random.key(config.seed + 3)
  n, c = int(config.eval.samples_per_condition), int(config.eval.num_conditions)
  xT = jax.jit(gmm.sample_xT, static_argnums=1)(jax.random.fold_in(key, 0), c)
  truth, _ = jax.jit(gmm.sample_x0_given_xT, static_argnums=2)(jax.random.fold_in(key, 1), xT, n)
  return xT, truth, jnp.broadcast_to(xT, (n,) + xT.shape).reshape(n * c, -1)


def evaluate_toy(config, workdir: str, problem: ToyProblem, teacher_params, gen_params,
                 writer: MetricWriter) -> dict:
  """Energy distances to the true conditional (or marginal) for teacher NFEs and student steps."""
  ec = config.eval
  key = jax.random.key(config.seed + 3)
  n, c = int(ec.samples_per_condition), int(ec.num_conditions)
  gmm = problem.gmm
  if problem.conditional:
    xT, truth, xT_rep = toy_eval_set(config, gmm)
    sample_truth = jax.jit(gmm.sample_x0_given_xT, static_argnums=2)
    truth2, _ = sample_truth(jax.random.fold_in(key, 2), xT, n)
    dist = lambda s: float(toy.conditional_energy_distance(s.reshape(n, c, -1), truth))
    floor = float(toy.conditional_energy_distance(truth2, truth))
    k_modes = gmm.w.shape[0]

    @jax.jit
    def _freqs(s):  # per condition: the fraction of samples nearest to each component's mean
      modes = gmm.mode_of(s.reshape(n, c, -1), xT[None])  # [n, c]
      return jax.nn.one_hot(modes, k_modes).mean(0)  # [c, K]

    freqs = lambda s: np.asarray(_freqs(s))

    truth_freq = freqs(truth)

    def coverage(s):  # total variation to the truth's frequencies, averaged over conditions
      f = freqs(s)
      return {"mode_tv": float(0.5 * np.abs(f - truth_freq).sum(-1).mean()),
              "mode_freq": [round(float(v), 4) for v in f.mean(0)]}
  else:  # unconditional: outputs over p(xT) against the data marginal p(x0)
    m = n * c // 4
    sample = jax.jit(gmm.sample, static_argnums=1)
    x0, xT_rep, _ = sample(jax.random.fold_in(key, 0), m)
    ref = sample(jax.random.fold_in(key, 1), m)[0]
    dist = lambda s: float(toy.energy_distance(s, ref))
    floor = float(toy.energy_distance(x0, ref))
    coverage = lambda s: {}
  results = {"noise_floor": floor, "teacher": {}, "student": {}}
  if problem.conditional:
    results["mode_tv_floor"] = coverage(truth2)["mode_tv"]
    results["true_mode_freq"] = [round(float(v), 4) for v in truth_freq.mean(0)]
  for kind in ec.teachers:
    if kind not in ("exact", "network"):
      raise ValueError(f"eval.teachers entries must be 'exact' or 'network', got {kind!r}")
    entry = "teacher" if kind == "network" else "exact_teacher"
    results[entry] = {}
    teacher_fn = problem.exact if kind == "exact" else problem.net
    for nfe in ec.teacher_nfes:
      sampler = make_sampler(teacher_fn, problem.bridge, int(nfe))
      out, sec = _timed(sampler, teacher_params, xT_rep, jax.random.fold_in(key, 10 + nfe))
      results[entry][str(nfe)] = {"energy_distance": dist(out), **coverage(out),
                                  "us_per_sample": 1e6 * sec / len(out)}
  if gen_params is not None:
    ib = make_ibmd(config, problem)
    for steps in ec.student_steps:
      if steps > int(config.distill.n_steps) * 4:
        continue
      gen = jax.jit(lambda p, x, k, s=int(steps): ib.generate(p, x, k, n_steps=s))
      out, sec = _timed(gen, gen_params, xT_rep, jax.random.fold_in(key, 100 + steps))
      results["student"][str(steps)] = {"energy_distance": dist(out), **coverage(out),
                                        "us_per_sample": 1e6 * sec / len(out)}
  flat = {f"teacher_nfe{k}_ed": v["energy_distance"] for k, v in results["teacher"].items()}
  flat.update({f"exact_teacher_nfe{k}_ed": v["energy_distance"]
               for k, v in results.get("exact_teacher", {}).items()})
  flat.update({f"student_{k}step_ed": v["energy_distance"] for k, v in results["student"].items()})
  flat.update({f"student_{k}step_mode_tv": v["mode_tv"] for k, v in results["student"].items()
               if "mode_tv" in v})
  writer.write("eval", int(config.distill.rounds), {"noise_floor": floor, **flat})
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  with open(os.path.join(workdir, "eval", "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  table = format_table(results, problem.conditional)
  plot = plot_quality(results, os.path.join(workdir, "eval", "quality_vs_nfe.png"),
                      "energy distance to the true law")
  with open(os.path.join(workdir, "eval", "report.md"), "w") as f:
    f.write("# Evaluation\n\n" + table + "\n")
    if plot:
      f.write(f"\n![quality against NFE and time]({os.path.basename(plot)})\n")
  print(table, flush=True)
  return results


def plot_quality(results: dict, path: str, ylabel: str = "energy distance", *,
                 panels: Optional[list] = None, time_key: str = "us_per_sample",
                 time_label: str = "µs per sample", baselines: Optional[dict] = None,
                 title: str = "") -> Optional[str]:
  """Quality against NFE and against time per sample: teacher curves, student points.

  results: {"teacher": {nfe: row}, "student": {steps: row}, optional "exact_teacher"}, each row a
  dict of metric values and `time_key`. panels: one figure row per (metric key, axis label, log
  y-axis); default [("energy_distance", ylabel, True)] (the toys). baselines: {label: {metric:
  value}} drawn as horizontal lines (default: the toys' Monte-Carlo noise floor). Missing or
  non-finite values are left out. Returns the path, or None without matplotlib.
  """
  try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
  except ImportError:
    logging.warning("matplotlib is not installed: no plot in the report")
    return None
  if panels is None:
    panels = [("energy_distance", ylabel, True)]
  if baselines is None:
    baselines = ({"MC noise floor": {"energy_distance": abs(results["noise_floor"])}}
                 if "noise_floor" in results else {})
  floor_styles = (":", "--", "-.")
  fig, axes = plt.subplots(len(panels), 2, figsize=(9, 3.4 * len(panels)), squeeze=False)
  for row, (metric, mlabel, log) in zip(axes, panels):
    vals = [v[metric] for who in ("exact_teacher", "teacher", "student")
            for v in results.get(who, {}).values() if np.isfinite(v.get(metric, np.nan))]
    vals += [abs(b[metric]) for b in baselines.values() if np.isfinite(b.get(metric, np.nan))]
    if log and vals and max(vals) < 10 * max(min(vals), 1e-5):
      log = False  # less than a decade: a linear axis reads better
    for ax, xkey, xlabel in ((row[0], "nfe", "network evaluations (NFE)"),
                             (row[1], time_key, time_label)):
      for who, style, label in (("exact_teacher", "^--", "exact teacher"),
                                ("teacher", "o-", "teacher"), ("student", "s", "IBMD student")):
        pts = sorted((int(k), v) for k, v in results.get(who, {}).items()
                     if np.isfinite(v.get(metric, np.nan)) and (xkey == "nfe" or xkey in v))
        if not pts:
          continue
        xs = [k if xkey == "nfe" else v[xkey] for k, v in pts]
        ys = [max(v[metric], 1e-5) if log else v[metric] for _, v in pts]
        ax.plot(xs, ys, style, label=label, ms=6)
        for (k, _), x, y in zip(pts, xs, ys):
          ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
      for (blabel, vals), ls in zip(baselines.items(), floor_styles):
        v = vals.get(metric)
        if v is not None and np.isfinite(v):
          ax.axhline(max(abs(v), 1e-5) if log else v, color="gray", ls=ls, label=blabel)
      ax.set_xscale("log")
      if xkey == "nfe":  # plain NFE numbers as ticks
        nfes = sorted({int(k) for who in ("exact_teacher", "teacher", "student")
                       for k in results.get(who, {})})
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
      if log:
        ax.set_yscale("log")
      ax.set_xlabel(xlabel)
      ax.set_ylabel(mlabel)
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def format_table(results: dict, conditional: bool) -> str:
  what = "E_xT ED(samples, p(x0|xT))" if conditional else "ED(samples over p(xT), p(x0))"
  cov = conditional and "mode_tv_floor" in results
  head = f"| sampler | NFE | {what} |" + (" mode TV ↓ | mode frequencies |" if cov else "")
  lines = [head + " µs / sample |", "|---|---|---|" + ("---|---|" if cov else "") + "---|"]

  def row(label, k, v):
    extra = (f" {v['mode_tv']:.3f} | {' '.join(f'{f:.2f}' for f in v['mode_freq'])} |"
             if cov else "")
    return f"| {label} | {k} | {v['energy_distance']:.4f} |{extra} {v['us_per_sample']:.2f} |"

  for entry, label in (("exact_teacher", "exact teacher (closed form)"), ("teacher", "teacher (network)")):
    lines += [row(label, k, v) for k, v in results.get(entry, {}).items()]
  lines += [row("IBMD student", k, v) for k, v in results["student"].items()]
  floor = (f" {results['mode_tv_floor']:.3f} | {' '.join(f'{f:.2f}' for f in results['true_mode_freq'])} |"
           if cov else "")
  lines.append(f"| (two true sample sets: noise floor) | – | {results['noise_floor']:.4f} |{floor} – |")
  return "\n".join(lines)


# ---------------------------------------------------------------------- entry point
def run(config, workdir: str) -> dict:
  stop_after = float(config.get("stop_after_s", 0) or 0)  # counted from here, compiles included
  deadline = time.time() + stop_after if stop_after > 0 else None
  if config.mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
  save_config(config, workdir)
  writer = MetricWriter(workdir)
  try:
    return _run(config, workdir, writer, deadline)
  finally:
    writer.close()


def _run(config, workdir: str, writer: MetricWriter, deadline: Optional[float]) -> dict:
  problem = make_problem(config)
  out: dict[str, Any] = {}
  if config.mode in ("eval", "pipeline") and not isinstance(problem, ToyProblem):
    from ibmd_jax import image_task  # bad eval settings fail now, not after the training

    image_task.eval_options(config)
  teacher_params = get_teacher(config, workdir, problem, writer,
                               train=config.mode in ("teacher", "pipeline"), deadline=deadline)
  out["teacher"] = teacher_params
  if config.mode == "teacher" and not isinstance(problem, ToyProblem):
    from ibmd_jax import image_task  # samples of the new teacher at eval.grid_nfes

    out["grid"] = image_task.teacher_grid(config, workdir, problem, teacher_params)
  if config.mode in ("distill", "pipeline"):
    out["state"] = distill(config, workdir, problem, teacher_params, writer, deadline)
  if config.mode in ("eval", "pipeline"):
    gen = None
    if "state" in out:
      gen = out["state"].gen_ema
    elif os.path.isdir(os.path.join(workdir, "checkpoints")):
      state, _, _ = init_distill_state(config, problem, teacher_params)
      manager = ckpt.RunCheckpointer(os.path.join(workdir, "checkpoints"))
      step, restored, _ = manager.restore_latest(jax.eval_shape(lambda: state))
      manager.close()
      gen = None if restored is None else restored.gen_ema
    out["eval"] = evaluate(config, workdir, problem, teacher_params, gen, writer)
  return out
