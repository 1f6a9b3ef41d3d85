"""Entry points for your own teacher and data: distil any predictor on any batch source.

    from ibmd_jax import api
    state = api.distill(teacher=my_predict, teacher_params=p, net=net, init_params=p,
                        bridge=bridge, batches=lambda step: {"xT": xT_rows(step)},
                        workdir="/tmp/run", rounds=2000, batch_size=256,
                        eval_fn=lambda step, state: {...}, eval_every=200)

`teacher` is any `ibmd_jax.denoiser.Predictor` (a network denoiser, a closed form, a wrapped
PyTorch-converted model); `net` the network that becomes critic and generator, started from
`init_params` (usually the teacher's own parameters) with noise input channels added and
zero-initialised. `batches` is a grain IterDataset, a function step -> batch (wrapped in a
checkpointable grain dataset), or any iterable; each batch holds this process's rows of
'xT' [L + 1, B, ...] (one round: L critic steps and one generator step; optional 'mask', 'label').
The run resumes from <workdir>/checkpoints, logs to <workdir>/metrics.jsonl and calls
eval_fn(step, state) every eval_every rounds with the IBMDState (state.gen_ema: the EMA generator);
the numbers it returns are logged as mode 'eval'.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import grain
import jax
import jax.numpy as jnp

from ibmd_jax import checkpointing as ckpt
from ibmd_jax import paths
from ibmd_jax.checks import TEACHER_DTYPES
from ibmd_jax import sharding as shd
from ibmd_jax import state as state_lib
from ibmd_jax import steps
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser, Predictor
from ibmd_jax.ibmd import IBMD
from ibmd_jax.optim import make_optimizer
from ibmd_jax.options import DistillOptions  # (api.DistillOptions: IBMD's settings)
from ibmd_jax.train import Loop, run_loop
from ibmd_jax.writer import MetricWriter


def frozen_teacher(params: Any, dtype: str) -> Any:
  """The teacher's parameters (arrays or ShapeDtypeStructs) as the generator loss holds them:
  floating leaves in `dtype` (distill.teacher_dtype), the rest as they are."""
  if dtype not in TEACHER_DTYPES:
    raise ValueError(f"distill.teacher_dtype={dtype!r}: choose one of {TEACHER_DTYPES}")
  want = jnp.dtype(dtype)

  def one(x):
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype == want:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, want, sharding=x.sharding)
    return x.astype(want)

  return jax.tree.map(one, params)


def json_options(opts: DistillOptions) -> dict:
  """The options as {'name': JSON value} (a checkpoint's fingerprint)."""
  return ckpt.flat_config(dataclasses.asdict(opts))


def as_dataset(batches: Any) -> Any:
  """A checkpointable grain dataset for a function step -> batch; other sources unchanged."""
  if callable(batches) and not hasattr(batches, "__iter__"):
    return grain.MapDataset.range(2**40).map(batches).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  return batches


def make_ibmd(teacher: Predictor, net: NetDenoiser, bridge: Bridge, opts: DistillOptions,
              data_channels: int) -> IBMD:
  """IBMD with `net` as critic and generator (they start as the teacher's network);
  z_channels -1 means as many noise channels as the data has."""
  return IBMD(bridge=bridge, teacher=teacher, critic=net, generator=net,
              z_channels=data_channels if opts.z_channels < 0 else opts.z_channels,
              n_steps=opts.n_steps, multistep=opts.multistep, intermediate=opts.intermediate,
              eta=opts.eta, weighting=opts.weighting or None, critic_weight=opts.critic_weight)


def plan_state(ib: IBMD, net: NetDenoiser, init_params: Any, example: dict, opts: DistillOptions,
               mesh) -> tuple[state_lib.Planned, Any, Any]:
  """(planned IBMDState, gen_tx, critic_tx): generator and critic start from init_params."""
  key = jax.random.key(opts.seed + 1)
  template = None
  if ib.z_channels:
    template = jax.eval_shape(lambda: net.init(key, jax.numpy.asarray(example["x"]),
                                               z_channels=ib.z_channels, label=example.get("label")))
  gen_tx = make_optimizer(opts.gen_optimizer, total_steps=opts.rounds)
  critic_tx = make_optimizer(opts.critic_optimizer, total_steps=opts.rounds * opts.critic_steps)
  planned = state_lib.ibmd_state(init_params, template, gen_tx, critic_tx, key, mesh,
                                 z_init_scale=opts.z_init_scale)
  return planned, gen_tx, critic_tx


def round_program(ib: IBMD, net: NetDenoiser, init_params: Any, teacher_params: Any,
                  example: dict, opts: DistillOptions, mesh) -> tuple[Any, Any, Any]:
  """(the jitted fused round with its shardings and donation, the planned IBMDState, the
  teacher's shardings): what distillation runs, and what compile mode (tools.aot) compiles.
  init_params / teacher_params may be ShapeDtypeStructs."""
  planned, gen_tx, critic_tx = plan_state(ib, net, init_params, example, opts, mesh)
  shd.check_batch(mesh, opts.batch_size // opts.microbatches, "distill.batch_size / microbatches")
  # The critic loop as the mesh's devices run it (unrolled on CPU only, steps.critic_unroll_for):
  # compile mode builds this on a CPU host for TPU chips, and must compile what the TPU runs.
  # distill.critic_unroll overrides it ('on' / 'off').
  unroll = (steps.critic_unroll_for(mesh.devices.flat[0].platform) if opts.critic_unroll == "auto"
            else opts.critic_unroll == "on")
  _, _, round_step = steps.make_ibmd_steps(ib, gen_tx, critic_tx, opts.ema, opts.microbatches,
                                           critic_unroll=unroll)
  teacher_sh = shd.state_shardings(mesh, teacher_params)
  fn = shd.jit_round(round_step, mesh, planned.shardings, teacher_sh, split=opts.split_round)
  return fn, planned, teacher_sh


def distill(*, teacher: Predictor, teacher_params: Any, net: NetDenoiser, init_params: Any,
            bridge: Bridge, batches: Any, workdir: str, example: Optional[dict] = None,
            options: Optional[DistillOptions] = None, mesh=None,
            eval_fn: Optional[Callable[[int, Any], dict]] = None, eval_every: int = 0,
            writer: Optional[MetricWriter] = None, deadline: Optional[float] = None,
            profile_start: int = 0, profile_steps: int = 5, fingerprint: Optional[dict] = None,
            **overrides) -> steps.IBMDState:
  """Runs (or resumes) IBMD and returns the final IBMDState (see the module docstring).

  example: {'x': an input shaped [2, ...], optional 'label'} for parameter shapes (default: read
  off the first batch). options / overrides: DistillOptions fields (overrides win). fingerprint:
  the settings kept in every checkpoint and named when a resume finds another state (default: the
  options).
  """
  opts = dataclasses.replace(options or DistillOptions(), **overrides)
  mesh = shd.make_mesh() if mesh is None else mesh
  shd.check_batch(mesh, opts.batch_size, "distill.batch_size")
  data = as_dataset(batches)
  if example is None:
    first = next(iter(data))
    example = {"x": first["xT"][0, :2]}
    if "label" in first:
      example["label"] = first["label"][0, :2]
  ib = make_ibmd(teacher, net, bridge, opts, int(example["x"].shape[-1]))
  round_fn, planned, teacher_sh = round_program(ib, net, init_params, teacher_params, example,
                                                opts, mesh)
  own_writer = writer is None
  writer = MetricWriter(workdir) if own_writer else writer
  hooks = ()
  if eval_fn is not None and eval_every > 0:
    hooks = ((eval_every, lambda step, st: writer.write("eval", step, eval_fn(step, st) or {})),)
  loop = Loop(name="distill", step_fn=round_fn, state=planned, data=data, total=opts.rounds,
              total_name="distill.rounds",
              directory=paths.join(workdir, "checkpoints"), mesh=mesh,
              key=jax.random.key(opts.seed + 2),
              extra=(jax.device_put(frozen_teacher(teacher_params, opts.teacher_dtype),
                                    teacher_sh),), batch_axis=1,
              batch_size=opts.batch_size, rate_name="gen_samples_per_s",
              save_every=opts.checkpoint_every, keep=opts.keep, best_metric=opts.best_metric,
              best_mode=opts.best_mode, log_every=opts.log_every, deadline=deadline,
              profile_start=profile_start, profile_steps=profile_steps,
              profile_dir=paths.join(workdir, "profile"), hooks=hooks,
              metric_modes=("eval",) if hooks else (),
              fingerprint=fingerprint or json_options(opts), start_over=opts.start_over,
              divergence_factor=opts.divergence_factor, divergence_window=opts.divergence_window,
              min_free_mb=opts.min_free_mb)
  try:
    return run_loop(loop, writer)
  finally:
    if own_writer:
      writer.close()
