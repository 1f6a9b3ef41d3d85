"""Pure training steps and their states: bridge matching (the teacher) and the IBMD round.

Every step is `step(state, [teacher_params,] batch, key) -> (state, metrics)`, a pure function for
`jax.jit`. Its metrics carry `finite`: 1.0 when the loss, the gradient norm and the updated
parameters are all finite, computed inside the step on every step, so the training loop can stop at
the first bad step without reading anything else from the device.

IBMD (digest §2–3, Algorithm 1): the round is L critic steps, each on fresh xT, then one generator
step; only θ is differentiated in the generator step, through x0 and x_t (see ibmd.IBMD).
"""
from __future__ import annotations

from typing import Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import Predictor
from ibmd_jax.ibmd import IBMD
from ibmd_jax.losses import weighted_mse
from ibmd_jax.optim import ema_update


def _finite(*values) -> jax.Array:
  ok = jnp.asarray(True)
  for v in values:
    ok = ok & jnp.all(jnp.isfinite(v))
  return ok.astype(jnp.float32)


def microbatched(loss_fn: Callable, microbatches: int = 1, has_aux: bool = False) -> Callable:
  """value_and_grad of `loss_fn(params, *frozen, batch, key)` in the first argument, as the mean
  over `microbatches` slices of the batch computed one after another (gradient accumulation):
  activations are held for one slice at a time, so a step's activation memory falls by about that
  factor while the update stays that of the whole batch (the mean of the slices' losses and
  gradients). Slice i holds rows i, i + m, i + 2m, ... (a strided split, so every device keeps its
  share of each slice) and draws its randomness from fold_in(key, i). microbatches = 1 is plain
  jax.value_and_grad."""
  vg = jax.value_and_grad(loss_fn, has_aux=has_aux)
  m = int(microbatches)
  if m < 1:
    raise ValueError(f"microbatches must be >= 1, got {m}")
  if m == 1:
    return vg

  def split(x):
    if x.shape[0] % m:
      raise ValueError(f"a batch of {x.shape[0]} rows does not split into {m} microbatches")
    return jnp.swapaxes(x.reshape((x.shape[0] // m, m) + x.shape[1:]), 0, 1)

  def fn(params, *args):
    *frozen, batch, key = args
    parts = jax.tree.map(split, batch)

    def body(acc, inp):
      i, part = inp
      out = vg(params, *frozen, part, jax.random.fold_in(key, i))
      return jax.tree.map(jnp.add, acc, out), None

    zero = jax.eval_shape(vg, params, *frozen, jax.tree.map(lambda x: x[0], parts), key)
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
    total, _ = jax.lax.scan(body, zero, (jnp.arange(m), parts))
    return jax.tree.map(lambda x: x / m, total)

  return fn


# ---------------------------------------------------------------------- teacher (bridge matching)
@flax.struct.dataclass
class TeacherState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  ema: dict


def teacher_state(params, tx: optax.GradientTransformation) -> TeacherState:
  return TeacherState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params))


def bridge_matching_loss(params, predict: Predictor, bridge: Bridge, batch: dict, key,
                         dropout: bool = False):
  """E λ(t)‖x̂0(x_t, t[, xT]) − x0‖², x_t ~ q(x_t | x0, xT); hole-only with a 'mask'."""
  x0, xT = batch["x0"], batch["xT"]
  if x0.shape != xT.shape:
    raise ValueError(f"x0 and xT must have the same shape, got {x0.shape} and {xT.shape}")
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  t = bridge.sample_t(k_t, x0.shape[0])
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  x_t = bridge.sample_xt(x0, xT, t, eps)
  pred = predict(params, x_t, t, xT, label=batch.get("label"), rng=k_drop if dropout else None)
  return weighted_mse(pred, x0, bridge.loss_weight(t), batch.get("mask"))


def make_teacher_step(predict: Predictor, bridge: Bridge, tx: optax.GradientTransformation,
                      ema_decay: float = 0.99, dropout: bool = False,
                      microbatches: int = 1) -> Callable:
  """step(state, batch, key) -> (state, {loss, grad_norm, finite}); microbatches: gradient
  accumulation over that many slices of the batch (see `microbatched`)."""
  loss_grad = microbatched(
      lambda params, batch, key: bridge_matching_loss(params, predict, bridge, batch, key, dropout),
      microbatches)

  def step(state: TeacherState, batch: dict, key):
    loss, grads = loss_grad(state.params, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    gnorm = optax.global_norm(grads)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema=ema_update(state.ema, params, ema_decay))
    return new, {"loss": loss, "grad_norm": gnorm,
                 "finite": _finite(loss, gnorm, optax.global_norm(params))}

  return step


# ---------------------------------------------------------------------- IBMD
@flax.struct.dataclass
class IBMDState:
  step: jax.Array  # generator updates done
  gen: dict
  critic: dict
  gen_opt: optax.OptState
  critic_opt: optax.OptState
  gen_ema: dict


def ibmd_state(gen_params, critic_params, gen_tx, critic_tx) -> IBMDState:
  # Own copies: generator and critic often start from the very same teacher arrays, and the
  # round donates the state's buffers.
  gen_params = jax.tree.map(jnp.array, gen_params)
  critic_params = jax.tree.map(jnp.array, critic_params)
  return IBMDState(step=jnp.zeros((), jnp.int32), gen=gen_params, critic=critic_params,
                   gen_opt=gen_tx.init(gen_params), critic_opt=critic_tx.init(critic_params),
                   gen_ema=jax.tree.map(jnp.copy, gen_params))


def critic_unroll_for(backend: str) -> bool:
  """Whether the round's critic scan is unrolled on this backend (make_ibmd_steps' default).

  XLA:CPU hands convolutions to its fast YNNPACK kernels only outside loops: inside the scan's
  while body they run as generic Eigen convolutions (the weight gradient in its raw
  backward-filter form), which made the 16x16 test UNet's round 4-10x slower than its convolution
  FLOPs at the teacher step's rate (bench/cpu_unet.py, docs/benchmarks.md). GPUs and TPUs keep the
  scan: one body to compile."""
  return backend == "cpu"


def make_ibmd_steps(ibmd: IBMD, gen_tx, critic_tx, ema_decay: float = 0.99,
                    microbatches: int = 1, critic_unroll: Optional[bool] = None):
  """Pure critic_step, generator_step and the fused round (L critic steps, then one generator step).

  batches for a round carry a leading axis of L + 1: critic steps use batches[:L], the generator
  step the last one, so every step sees fresh xT as in Algorithm 1. microbatches: each step's
  gradient accumulated over that many slices of its batch (see `microbatched`). critic_unroll:
  the L critic steps as straight-line code instead of a loop (same arithmetic); None: on CPU only
  (critic_unroll_for).
  """
  critic_grad = microbatched(ibmd.critic_loss, microbatches)
  gen_grad = microbatched(ibmd.generator_loss, microbatches, has_aux=True)

  def critic_step(state: IBMDState, batch, key):
    loss, grads = critic_grad(state.critic, state.gen, batch, key)
    updates, opt = critic_tx.update(grads, state.critic_opt, state.critic)
    state = state.replace(critic=optax.apply_updates(state.critic, updates), critic_opt=opt)
    return state, {"critic_loss": loss, "critic_grad_norm": optax.global_norm(grads)}

  def generator_step(state: IBMDState, teacher_params, batch, key):
    (loss, aux), grads = gen_grad(state.gen, state.critic, teacher_params, batch, key)
    updates, opt = gen_tx.update(grads, state.gen_opt, state.gen)
    gen = optax.apply_updates(state.gen, updates)
    state = state.replace(step=state.step + 1, gen=gen, gen_opt=opt,
                          gen_ema=ema_update(state.gen_ema, gen, ema_decay))
    return state, {"gen_loss": loss, "gen_grad_norm": optax.global_norm(grads), **aux}

  def critic_phase(state: IBMDState, batches, key):
    """The round's L critic steps (a scan): (state, the critic metrics' means)."""
    n_critic = jax.tree.leaves(batches)[0].shape[0] - 1
    key = jax.random.fold_in(key, state.step)
    critic_batches = jax.tree.map(lambda b: b[:n_critic], batches)

    def body(st, inp):
      i, batch = inp
      return critic_step(st, batch, jax.random.fold_in(key, i))

    unroll = critic_unroll_for(jax.default_backend()) if critic_unroll is None else critic_unroll
    state, cm = jax.lax.scan(body, state, (jnp.arange(n_critic), critic_batches),
                             unroll=bool(unroll))
    return state, {k: jnp.mean(v) for k, v in cm.items()}

  def generator_phase(state: IBMDState, teacher_params, batches, key, critic_metrics):
    """The round's generator step on the last batch, and the round's metrics."""
    n_critic = jax.tree.leaves(batches)[0].shape[0] - 1
    key = jax.random.fold_in(key, state.step)
    gen_batch = jax.tree.map(lambda b: b[n_critic], batches)
    state, gm = generator_step(state, teacher_params, gen_batch, jax.random.fold_in(key, n_critic))
    metrics = dict(critic_metrics)
    metrics.update(gm)
    # The estimated objective gap E λ‖x̂0* − x0‖² − E λ‖x̂0^φ − x0‖² (≥ 0 at the critic's optimum).
    metrics["objective_gap"] = gm["gen_loss"]
    metrics["finite"] = _finite(critic_metrics["critic_loss"], critic_metrics["critic_grad_norm"],
                                gm["gen_loss"], gm["gen_grad_norm"], optax.global_norm(state.gen),
                                optax.global_norm(state.critic))
    return state, metrics

  def round_step(state: IBMDState, teacher_params, batches, key):
    state, cm = critic_phase(state, batches, key)
    return generator_phase(state, teacher_params, batches, key, cm)

  round_step.phases = (critic_phase, generator_phase)  # the round as two programs (jit_round)
  return critic_step, generator_step, round_step
