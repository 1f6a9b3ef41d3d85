"""Teacher training by (conditional) bridge matching: E λ(t)‖x̂0(x_t, t[, xT]) − x0‖²."""
from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ibmd_jax.bridges import Bridge
from ibmd_jax.losses import weighted_mse
from ibmd_jax.optim import ema_update


@flax.struct.dataclass
class TeacherState:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  ema: dict


def init_state(params, tx: optax.GradientTransformation) -> TeacherState:
  return TeacherState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params))


def bridge_matching_loss(params, predict: Callable, bridge: Bridge, batch: dict, key,
                         dropout: bool = False):
  """Samples t and x_t ~ q(x_t | x0, xT); masked (hole-only) loss when batch has a 'mask'."""
  x0, xT = batch["x0"], batch["xT"]
  if x0.shape != xT.shape:
    raise ValueError(f"x0 and xT must have the same shape, got {x0.shape} and {xT.shape}")
  k_t, k_eps, k_drop = jax.random.split(key, 3)
  t = bridge.sample_t(k_t, x0.shape[0])
  eps = jax.random.normal(k_eps, x0.shape, x0.dtype)
  mask = batch.get("mask")
  x_t = bridge.sample_xt(x0, xT, t, eps)
  pred = predict(params, x_t, t, xT, label=batch.get("label"), rng=k_drop if dropout else None)
  return weighted_mse(pred, x0, bridge.loss_weight(t), mask)


def make_train_step(predict: Callable, bridge: Bridge, tx: optax.GradientTransformation,
                    ema_decay: float = 0.99, dropout: bool = False):
  """A pure step(state, batch, key) -> (state, metrics) for jax.jit."""

  def step(state: TeacherState, batch: dict, key):
    loss, grads = jax.value_and_grad(bridge_matching_loss)(state.params, predict, bridge, batch,
                                                           key, dropout)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                        ema=ema_update(state.ema, params, ema_decay))
    return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  return step
