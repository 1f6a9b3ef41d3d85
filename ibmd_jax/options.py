"""The config read once: `from_config(config)` turns the launcher's ConfigDict into typed, frozen
options; every module below the launcher layer (`ibmd_jax.run`) takes these or plain arguments.

  RunOptions
    mode, seed, log_every, stop_after_s, lock_stale_s   the run's own settings
    task        TaskOptions: data, model, bridge (plain dicts), conditional, seed, sampler η, eval
    teacher     TeacherOptions: source, checkpoint, steps, batch size, optimiser, EMA, ...
    distill     DistillOptions: IBMD's settings (api.DistillOptions, what api.distill takes)
    mesh        MeshOptions: data x fsdp
    safety      SafetyOptions: checkpoint.start_over / min_free_mb, guard.*
    checkpoint  CheckpointOptions: every, keep, best metric
    profile     ProfileOptions: the distillation rounds to trace
    fingerprint the flat config kept in every checkpoint (`checkpointing.flat_config`)

Sections whose keys belong to another object (the network's options, the data pipeline's, the
bridge's, the optimisers', the evaluator's) stay plain read-only dicts: the code that builds that
object names and checks them (`models.build_model`, `data.make_dataset`, `Bridge.from_config`...).
"""
from __future__ import annotations

import dataclasses
import types
from typing import Any, Mapping

from ibmd_jax.checkpointing import flat_config
from ibmd_jax.errors import ConfigError


def _plain(section) -> Mapping[str, Any]:
  """A config section as a read-only plain dict (nested sections as dicts too)."""
  d = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  return types.MappingProxyType(d)


def _adam(lr: float) -> dict:
  return dict(name="adam", lr=lr, b1=0.9, b2=0.999)


@dataclasses.dataclass(frozen=True)
class DistillOptions:
  """IBMD's settings (the `distill` section of a config holds the same names)."""

  rounds: int = 1000  # generator updates
  batch_size: int = 256  # global
  critic_steps: int = 5  # L critic updates per generator update (paper: 5)
  microbatches: int = 1  # gradient accumulation: each step's batch in this many slices
  split_round: bool = False  # the round as two programs compiled at once (sharding.jit_round)
  # The L critic steps as straight-line code ('on'), as a loop ('off') or 'auto': unrolled where
  # the mesh's devices are CPUs (steps.critic_unroll_for; faster steps, slower compile).
  critic_unroll: str = "auto"
  z_channels: int = -1  # generator noise channels; -1 = as many as the data has, 0 = none
  z_init_scale: float = 0.0  # std of the noise weights at the start (paper: 0)
  n_steps: int = 1
  multistep: str = "full_chain"  # or 'dmd2'
  intermediate: str = "marginal"
  ema: float = 0.99
  teacher_dtype: str = "float32"  # the frozen teacher's copy in the generator loss (or bfloat16)
  eta: float = 1.0  # the multi-step generator's DBIM η between calls (not the teacher sampler's)
  weighting: str = ""  # λ(t) of the distillation losses; '' = the bridge's (the teacher's)
  critic_weight: float = 1.0  # the critic term's weight in L_θ (0: the ablation without it)
  gen_optimizer: dict = dataclasses.field(default_factory=lambda: _adam(1e-4))
  critic_optimizer: dict = dataclasses.field(default_factory=lambda: _adam(1e-4))
  seed: int = 0
  log_every: int = 100
  checkpoint_every: int = 500
  keep: int = 3
  best_metric: str = ""
  best_mode: str = "min"
  start_over: bool = False  # checkpoints that do not fit or restore: move aside, start at 0
  divergence_factor: float = 1000.0  # stop when a loss / grad norm exceeds this × its median
  divergence_window: int = 50
  min_free_mb: float = 16.0  # a save that would leave less free disk space stops the run first

  @classmethod
  def from_config(cls, config) -> "DistillOptions":
    """From a ConfigDict's distill, checkpoint, guard, sampler sections (`distill_options`)."""
    return distill_options(config)


@dataclasses.dataclass(frozen=True)
class TaskOptions:
  """What a task (ibmd_jax.tasks) is built from: the data, network and bridge settings."""

  data: Mapping[str, Any]
  model: Mapping[str, Any]
  bridge: Mapping[str, Any]
  conditional: bool
  seed: int
  sampler_eta: float  # the teacher's default sampler η (config.sampler.eta)
  eval: Mapping[str, Any]  # config.eval (the evaluator's and the task's scorer's settings)


@dataclasses.dataclass(frozen=True)
class TeacherOptions:
  source: str  # 'train' | 'checkpoint'
  checkpoint: str  # a teacher directory ('' = <workdir>/teacher)
  steps: int
  batch_size: int
  microbatches: int
  save_every: int
  ema: float
  optimizer: Mapping[str, Any]
  dropout: bool  # the network has dropout (model.dropout > 0): the step draws its keys


@dataclasses.dataclass(frozen=True)
class MeshOptions:
  data: int
  fsdp: int


@dataclasses.dataclass(frozen=True)
class SafetyOptions:
  """The training loop's checkpoint-safety settings (train.Loop, DistillOptions)."""

  start_over: bool
  min_free_mb: float
  divergence_factor: float
  divergence_window: int

  def as_kwargs(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class CheckpointOptions:
  every: int
  keep: int
  best_metric: str
  best_mode: str


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
  start: int
  steps: int


@dataclasses.dataclass(frozen=True)
class RunOptions:
  mode: str
  seed: int
  log_every: int
  stop_after_s: float
  lock_stale_s: float
  task: TaskOptions
  teacher: TeacherOptions
  distill: DistillOptions
  distill_teacher: str  # distill.teacher: the trained 'network' or the toy's 'exact' closed form
  mesh: MeshOptions
  safety: SafetyOptions
  checkpoint: CheckpointOptions
  profile: ProfileOptions
  fingerprint: Mapping[str, Any]


def task_options(config) -> TaskOptions:
  return TaskOptions(data=_plain(config.data), model=_plain(config.model),
                     bridge=_plain(config.bridge), conditional=bool(config.conditional),
                     seed=int(config.seed), sampler_eta=float(config.sampler.eta),
                     eval=_plain(config.eval))


def safety_options(config) -> SafetyOptions:
  return SafetyOptions(start_over=bool(config.checkpoint.start_over),
                       min_free_mb=float(config.checkpoint.min_free_mb),
                       divergence_factor=float(config.guard.divergence_factor),
                       divergence_window=int(config.guard.window))


def distill_options(config) -> DistillOptions:
  dc, cc = config.distill, config.checkpoint
  if str(dc.get("critic_unroll", "auto")) not in ("auto", "on", "off"):
    raise ConfigError(f"distill.critic_unroll must be 'auto', 'on' or 'off', got "
                      f"{dc.critic_unroll!r}")
  return DistillOptions(
      rounds=int(dc.rounds), batch_size=int(dc.batch_size),
      critic_steps=int(dc.critic_steps), microbatches=int(dc.get("microbatches", 1)),
      split_round=bool(dc.get("split_round", False)),
      critic_unroll=str(dc.get("critic_unroll", "auto")), z_channels=int(dc.z_channels),
      z_init_scale=float(dc.z_init_scale), n_steps=int(dc.n_steps),
      multistep=str(dc.multistep), intermediate=str(dc.intermediate),
      ema=float(dc.ema), teacher_dtype=str(dc.get("teacher_dtype", "float32")),
      # the student's η and λ: distill.eta / distill.weighting, unset = the teacher's
      eta=float(config.sampler.eta if dc.get("eta") is None else dc.eta),
      weighting=str(dc.get("weighting", "") or ""),
      critic_weight=float(dc.get("critic_weight", 1.0)),
      gen_optimizer=dict(dc.gen_optimizer), critic_optimizer=dict(dc.critic_optimizer),
      seed=int(config.seed), log_every=int(config.log_every), checkpoint_every=int(cc.every),
      keep=int(cc.keep), best_metric=str(cc.best_metric), best_mode=str(cc.best_mode),
      **safety_options(config).as_kwargs())


def from_config(config) -> RunOptions:
  """The typed options of a config (a ConfigDict, e.g. configs/base.py's)."""
  if isinstance(config, RunOptions):
    return config
  tc = config.teacher
  return RunOptions(
      mode=str(config.mode), seed=int(config.seed), log_every=int(config.log_every),
      stop_after_s=float(config.get("stop_after_s", 0.0) or 0.0),
      lock_stale_s=float(config.get("lock_stale_s", 300.0)),
      task=task_options(config),
      teacher=TeacherOptions(
          source=str(tc.source), checkpoint=str(tc.checkpoint or ""), steps=int(tc.steps),
          batch_size=int(tc.batch_size), microbatches=int(tc.get("microbatches", 1)),
          save_every=int(tc.save_every), ema=float(tc.ema), optimizer=_plain(tc.optimizer),
          dropout=float(config.model.get("dropout", 0.0)) > 0),
      distill=distill_options(config), distill_teacher=str(config.distill.teacher),
      mesh=MeshOptions(data=int(config.mesh.data), fsdp=int(config.mesh.fsdp)),
      safety=safety_options(config),
      checkpoint=CheckpointOptions(every=int(config.checkpoint.every),
                                   keep=int(config.checkpoint.keep),
                                   best_metric=str(config.checkpoint.best_metric),
                                   best_mode=str(config.checkpoint.best_mode)),
      profile=ProfileOptions(start=int(config.profile.start), steps=int(config.profile.steps)),
      fingerprint=flat_config(config.to_dict()))
