"""The training loop: one for teacher training and distillation alike.

`run_loop(Loop(...), writer)` runs a jitted step over a grain data stream with everything a long
run needs written once:
- resume: the newest good checkpoint (state + data position) is the starting point; one written
  for another state tree stops the run (unless `start_over`, which moves them aside); a corrupt one
  is skipped for the previous; when the first step after a resume is not finite, the run tries the
  checkpoint before once: if that one steps on, the later one is set aside, else the config is the
  cause and the run stops; metrics logged after the restored step by the interrupted run are
  superseded, so metrics.jsonl reads like one run;
- checkpoints every `save_every` steps, at the end, on preemption (SIGTERM; on several hosts at
  the step of JAX's preemption sync point, through Orbax; exit 143) and after `stop_after_s`
  (exit 75: run the same command again to continue);
- no host sync per step: step t's metrics are read after step t + 1 has been dispatched (and at
  a save, before it), logged every `log_every` steps;
- the non-finite guard: every step computes a `finite` flag on the device; the run stops at the
  first non-finite step, naming it, before anything non-finite is saved (and every save checks the
  whole state); the divergence guard stops it the same way when a loss or gradient norm exceeds
  `divergence_factor` times its running median;
- a jax.profiler trace of steps (profile_start, profile_start + profile_steps];
- hooks(step, state) after chosen steps (e.g. an evaluation callback).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import signal
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ibmd_jax import data_log
from ibmd_jax import sharding as shd
from ibmd_jax.checkpointing import RunCheckpointer
from ibmd_jax.errors import (CheckpointMismatch, ConfigError, DivergenceError,
                             NoRestorableCheckpoint, NonFiniteError)
from ibmd_jax.state import Planned
from ibmd_jax.writer import MetricWriter

EXIT_SIGTERM = 143  # preempted (SIGTERM): the state is saved, run the same command again
EXIT_RESUME = 75  # stop_after_s reached (EX_TEMPFAIL): the state is saved, run it again
# Watched by the divergence guard: bridge-matching losses and gradient norms (not the generator's
# IBMD loss, a difference that crosses zero, nor its gradient norm, which starts at 0).
DIVERGENCE_METRICS = ("loss", "grad_norm", "critic_loss", "critic_grad_norm")
DIVERGENCE_MIN_STEPS = 5  # steps of history before the guard judges


@dataclasses.dataclass
class Loop:
  """What one training run is: a step function, its state, its data and its bookkeeping."""

  name: str  # the metrics' mode and the messages' tag ('teacher', 'distill')
  step_fn: Callable  # jitted step(state, *extra, batch, key) -> (state, metrics incl. 'finite')
  state: Planned  # the initial state, planned (built only when no checkpoint restores)
  data: Any  # a grain IterDataset of this process's rows (its position is checkpointed)
  total: int  # steps to run to
  directory: str  # checkpoints
  mesh: Mesh
  key: jax.Array  # step i uses fold_in(key, i)
  total_name: str = "steps"  # the config key of `total`, for messages
  save_at_end: bool = True  # save the final state (a longer run later continues from it)
  extra: tuple = ()  # constant arguments before the batch (the teacher's parameters)
  batch_axis: int = 0  # the batch dimension of the data's arrays (1 for stacked round batches)
  batch_size: int = 1  # global examples per step (throughput)
  rate_name: str = "samples_per_s"
  save_every: int = 1000  # 0: only at the end, on SIGTERM and at the deadline
  keep: int = 3
  best_metric: str = ""
  best_mode: str = "min"
  log_every: int = 100
  deadline: Optional[float] = None  # time.time() at which to save and exit with EXIT_RESUME
  profile_start: int = 0
  profile_steps: int = 5
  profile_dir: str = ""
  hooks: Sequence[tuple[int, Callable[[int, Any], None]]] = ()  # (every, fn(step, state))
  metric_modes: tuple = ()  # other metrics.jsonl modes logged at this loop's steps (by hooks)
  fingerprint: Optional[dict] = None  # the run's config, kept in every checkpoint
  start_over: bool = False  # checkpoints that do not fit or restore: move aside, start at 0
  divergence_factor: float = 0.0  # > 1: stop when a watched metric exceeds this × its median
  divergence_window: int = 50
  min_free_mb: float = 16.0  # a save that would leave less free space stops the run first

  @property
  def modes(self) -> tuple:
    """The metrics.jsonl modes this loop logs (its own and its hooks')."""
    return (self.name,) + tuple(self.metric_modes)


class StopSignal:
  """Turns SIGTERM (preemption) into a flag the loop checks between steps."""

  def __init__(self):
    self.received = False
    self._prev = None
    if jax.process_count() > 1:
      # Several processes: SIGTERM must reach JAX's preemption notifier (installed by
      # jax.distributed.initialize), which agrees on the step all processes save at
      # (`reached_preemption`); a Python handler here replaced it, and the processes ran on
      # through SIGTERM (issue 37).
      return
    try:
      self._prev = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. some notebook runners): no handler
      self._prev = None

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def restore(self):
    if self._prev is not None:
      signal.signal(signal.SIGTERM, self._prev)


class _Metrics:
  """Reads each step's metrics one step late, checks them and logs them."""

  def __init__(self, loop: Loop, writer: Optional[MetricWriter], start: int):
    self.loop, self.writer = loop, writer
    self.pending: Optional[tuple[int, dict]] = None
    self.t0, self.done0 = time.time(), start
    self.best_sum, self.best_n = 0.0, 0
    self.history = collections.defaultdict(
        lambda: collections.deque(maxlen=max(int(loop.divergence_window), 3)))

  def push(self, step: int, metrics: dict):
    self.flush()
    self.pending = (step, metrics)

  def flush(self, on_ok: Optional[Callable[[], None]] = None):
    """Reads, checks and logs the pending step; on_ok() runs after the checks, before logging."""
    if self.pending is None:
      return
    step, m = self.pending
    self.pending = None
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    loop = self.loop
    if m.pop("finite", 1.0) != 1.0:
      bad = sorted(k for k, v in m.items() if not np.isfinite(v))
      raise NonFiniteError(
          f"[{loop.name}] step {step} is not finite ({', '.join(bad) or 'the updated parameters'}"
          f"); nothing from this step was saved. Lower the learning rate or enable gradient "
          "clipping (optimizer.grad_clip)")
    self._diverging(step, m)
    if on_ok is not None:
      on_ok()
    if loop.best_metric:
      if loop.best_metric not in m:
        raise ValueError(f"checkpoint.best_metric={loop.best_metric!r} is not a {loop.name} "
                         f"metric; choose one of {sorted(m)}")
      self.best_sum, self.best_n = self.best_sum + m[loop.best_metric], self.best_n + 1
    if self.writer is not None and (step % loop.log_every == 0 or step == loop.total):
      elapsed = max(time.time() - self.t0, 1e-9)
      rate = (step - self.done0) / elapsed
      m.update({loop.rate_name: rate * loop.batch_size, "eta_s": (loop.total - step) / rate})
      self.writer.write(loop.name, step, m)

  def _diverging(self, step: int, m: dict):
    factor = float(self.loop.divergence_factor)
    if factor <= 0:
      return
    for k in DIVERGENCE_METRICS:
      if k not in m:
        continue
      hist, v = self.history[k], abs(m[k])
      if len(hist) >= DIVERGENCE_MIN_STEPS:
        med = float(np.median(hist))
        if med > 0 and v > factor * med:
          raise DivergenceError(
              f"[{self.loop.name}] step {step} diverges: {k}={v:.3g} is {v / med:.3g} times its "
              f"median over the previous {len(hist)} steps (guard.divergence_factor={factor:g}); "
              "nothing from this step was saved. Lower the learning rate or enable gradient "
              "clipping (optimizer.grad_clip); guard.divergence_factor=0 turns the guard off")
      hist.append(v)

  def guard_history(self) -> dict:
    """The divergence guard's recent values (kept in checkpoints, so a resumed run that diverges
    at once, e.g. after raising the learning rate, is compared with the run before it)."""
    return {k: list(v) for k, v in self.history.items()}

  def seed(self, history: Optional[dict]):
    for k, values in (history or {}).items():
      self.history[k].extend(float(v) for v in values)

  def take_best(self) -> Optional[dict]:
    if not self.best_n:
      return None
    out = {self.loop.best_metric: self.best_sum / self.best_n}
    self.best_sum, self.best_n = 0.0, 0
    return out


def _profile(loop: Loop, step: int):
  if loop.profile_start <= 0 or jax.process_index() != 0:
    return
  if step == loop.profile_start:
    jax.profiler.start_trace(loop.profile_dir)
  elif step == loop.profile_start + loop.profile_steps:
    jax.profiler.stop_trace()


def run_loop(loop: Loop, writer: Optional[MetricWriter] = None) -> Any:
  """Runs (or resumes) the loop to loop.total and returns the final state (see module doc)."""
  manager = RunCheckpointer(loop.directory, max_to_keep=loop.keep,
                            save_every=loop.save_every if loop.save_every > 0 else 2**62,
                            best_metric=loop.best_metric, best_mode=loop.best_mode,
                            fingerprint=loop.fingerprint, min_free_mb=loop.min_free_mb)
  it = iter(loop.data)
  stop = StopSignal()
  try:
    start, state, meta = _resume(loop, manager, it)
    check_first = start > 0  # a resumed state's first step is checked before going on
    suspect, first_error = None, None  # a checkpoint whose first step was not finite
    if writer is not None:
      writer.supersede(loop.modes, start)
    metrics = _Metrics(loop, writer, start)
    metrics.seed(meta.get("guard"))
    i = start
    while i < loop.total:
      local = next(it)
      data_log.record(loop.name, i + 1, local, loop.batch_axis)  # IBMD_JAX_DATA_LOG only
      batch = {k: shd.global_batch(loop.mesh, v, loop.batch_axis) for k, v in local.items()}
      state, m = loop.step_fn(state, *loop.extra, batch, jax.random.fold_in(loop.key, i))
      step = i + 1
      metrics.push(step, m)  # reads step - 1's metrics: step is in flight
      if check_first:
        check_first = False
        confirm = None
        if suspect is not None:  # the earlier checkpoint steps on: the later one was the cause
          confirm = functools.partial(_set_aside, loop, manager, writer, suspect, start,
                                      first_error)
        try:
          metrics.flush(on_ok=confirm)
        except NonFiniteError as e:
          if isinstance(e, DivergenceError) or suspect is not None:
            raise _not_the_checkpoint(first_error or e, suspect, start) from None
          suspect, first_error = start, e
          start, state, meta = _fall_back(loop, manager, it, start, e)
          metrics, i, check_first = _Metrics(loop, writer, start), start, True
          metrics.seed(meta.get("guard"))
          continue
        suspect = None
      i = step
      _profile(loop, step)
      code = _stop_code(stop, loop, manager, step) if step < loop.total else None
      at_end = step == loop.total and loop.save_at_end
      if code is not None or at_end or manager.should_save(step):
        metrics.flush()  # this step's flag is read before its state is saved
        manager.save(step, state, it, force=code is not None or at_end,
                     metrics=metrics.take_best(), extra={"guard": metrics.guard_history()})
      for every, hook in loop.hooks:
        if every > 0 and step % every == 0:
          hook(step, state)
      if code is not None:
        manager.close()
        why = "SIGTERM" if code == EXIT_SIGTERM else "stop_after_s reached"
        print(f"[{loop.name}] {why}: saved step {step} in {manager.directory}, exiting with "
              f"{code}; run the same command again to continue", flush=True)
        raise SystemExit(code)
    metrics.flush()
  finally:
    stop.restore()
    manager.close()
  return state


def _resume(loop: Loop, manager: RunCheckpointer, it) -> tuple[int, Any, dict]:
  """(step, state, meta) to start from: the newest good checkpoint, or step 0 and a new state."""
  try:
    start, state, meta = manager.restore_latest(loop.state.abstract, it)
  except (CheckpointMismatch, NoRestorableCheckpoint):
    if not loop.start_over:
      raise
    dest = manager.archive()
    print(f"[{loop.name}] checkpoint.start_over: the checkpoints that do not fit were moved to "
          f"{dest}; starting from step 0", flush=True)
    start, state = None, None
  if state is None:
    return 0, loop.state.build(), {}
  if start > loop.total:
    raise ConfigError(f"{manager.directory} holds step {start} but --config.{loop.total_name}="
                      f"{loop.total}: pass {loop.total_name} >= {start} to continue that run, or "
                      "use another workdir")
  print(f"[{loop.name}] resumed from step {start}", flush=True)
  return start, state, meta


def _fall_back(loop: Loop, manager: RunCheckpointer, it, start: int, error: Exception):
  """The first step after resuming from `start` was not finite: resume once from the checkpoint
  before it, to tell a bad checkpoint from a bad config."""
  step, state, meta = manager.restore_latest(loop.state.abstract, it, before=start)
  if state is None:
    raise NonFiniteError(f"{error} It is the first step after resuming from the checkpoint at "
                         f"step {start}, and there is no earlier one to fall back to") from None
  print(f"warning: [{loop.name}] the first step after resuming from step {start} is not finite; "
        f"trying the checkpoint at step {step}", flush=True)
  return step, state, meta


def _set_aside(loop: Loop, manager: RunCheckpointer, writer, suspect: int, start: int,
               error: Exception):
  aside = manager.set_aside(suspect)
  if writer is not None:
    writer.supersede(loop.modes, start)
  print(f"warning: [{loop.name}] the first step after resuming from step {suspect} is not "
        f"finite ({error}), the first step from step {start} is: the checkpoint at step "
        f"{suspect} is suspect and was moved to {aside}; going on from step {start}", flush=True)


def _not_the_checkpoint(error: Exception, suspect: Optional[int], start: int) -> NonFiniteError:
  if suspect is None:  # the divergence guard: the state is fine, the config is not
    return error
  return NonFiniteError(
      f"{error} The run fell back once, from the checkpoint at step {suspect} to the one at step "
      f"{start}, and its first step ({start + 1}) is not finite either: the checkpoints are not "
      "the cause (a changed config, e.g. the learning rate, is); they are all kept as they were")


def _stop_code(stop: StopSignal, loop: Loop, manager: RunCheckpointer, step: int) -> Optional[int]:
  """Several processes stop at the step JAX's preemption sync point agrees on (through Orbax), and
  at the deadline as process 0 reads its clock, so that all save the same step; one process at
  its own SIGTERM and clock. Process 0's clock is broadcast only at logging steps: a collective at
  every step would be a host sync per step."""
  multi = jax.process_count() > 1
  if manager.reached_preemption(step) if multi else stop.received:
    return EXIT_SIGTERM
  if loop.deadline is not None:
    late = time.time() >= loop.deadline
    if multi:
      if step % loop.log_every:
        return None
      late = bool(multihost_utils.broadcast_one_to_all(np.asarray(late)))
    if late:
      return EXIT_RESUME
  return None


def make_deadline(stop_after_s: float) -> Optional[float]:
  """time.time() + stop_after_s, or None for 0 (counted from here, compiles included)."""
  return time.time() + float(stop_after_s) if float(stop_after_s or 0) > 0 else None
