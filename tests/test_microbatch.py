"""Gradient accumulation (steps.microbatched, teacher./distill.microbatches): the accumulated
loss and gradient are the mean of the slices' own, the slices are the strided rows, and a sharded
IBMD round with microbatches runs on 8 devices and moves the state as the same round computed by
hand from its slices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import evaluate, steps, tasks
from ibmd_jax import run as runner
from ibmd_jax import sharding as shd


def _loss(w, c, batch, key):
  noise = jax.random.normal(key, batch["y"].shape)
  r = jnp.tanh(batch["x"] @ w) * c - batch["y"] + 0.1 * noise
  return jnp.mean(r ** 2), {"r": jnp.mean(r)}


def test_accumulated_gradient_is_the_mean_over_strided_slices():
  k = jax.random.split(jax.random.key(0), 4)
  w = jax.random.normal(k[0], (3, 2))
  batch = {"x": jax.random.normal(k[1], (12, 3)), "y": jax.random.normal(k[2], (12, 2))}
  key = k[3]
  (loss, aux), g = steps.microbatched(_loss, 3, has_aux=True)(w, 2.0, batch, key)
  vg = jax.value_and_grad(_loss, has_aux=True)
  parts = [vg(w, 2.0, {n: v[i::3] for n, v in batch.items()}, jax.random.fold_in(key, i))
           for i in range(3)]
  np.testing.assert_allclose(loss, np.mean([p[0][0] for p in parts]), rtol=1e-6)
  np.testing.assert_allclose(aux["r"], np.mean([p[0][1]["r"] for p in parts]), rtol=1e-5)
  np.testing.assert_allclose(g, np.mean([p[1] for p in parts], axis=0), rtol=1e-5, atol=1e-7)
  # Not the plain gradient of the first slice or of contiguous slices: the split is strided.
  contiguous = vg(w, 2.0, {n: v[:4] for n, v in batch.items()}, jax.random.fold_in(key, 0))
  assert not np.allclose(contiguous[1], parts[0][1])
  # microbatches=1 is jax.value_and_grad itself.
  (l1, _), g1 = steps.microbatched(_loss, 1, has_aux=True)(w, 2.0, batch, key)
  (l0, _), g0 = vg(w, 2.0, batch, key)
  np.testing.assert_allclose(l1, l0)
  np.testing.assert_allclose(g1, g0)
  with pytest.raises(ValueError, match="does not split into 5"):
    steps.microbatched(_loss, 5, has_aux=True)(w, 2.0, batch, key)


def test_sharded_round_with_microbatches_matches_its_slices():
  """A round on 8 devices (data 4 × fsdp 2) with microbatches=2: its critic loss equals the mean of
  the critic losses the 1-microbatch steps give on the two slices (same keys), so the
  accumulation is the one the round really runs, under the launcher's shardings."""
  cfg = toy_cond.get_config()
  cfg.model.depth = 1  # one residual block: its 128x128 kernels are still FSDP-split
  cfg.distill.critic_steps = 1
  problem = tasks.make_task(cfg)
  teacher = problem.net.init(jax.random.key(0), jnp.zeros((2, 2)))
  state, gtx, ctx = runner.init_distill_state(cfg, problem, teacher)
  ib = evaluate.make_ibmd(cfg, problem)
  mesh = shd.make_mesh(4, 2, devices=jax.devices()[:8])
  state_sh, teacher_sh = shd.state_shardings(mesh, state), shd.state_shardings(mesh, teacher)
  xT = next(iter(problem.train_data("distill", 32, 2)))["xT"]  # [L + 1 = 2, 32, 2]
  _, _, round2 = steps.make_ibmd_steps(ib, gtx, ctx, 0.99, microbatches=2, critic_unroll=False)
  fn = shd.jit_round(round2, mesh, state_sh, teacher_sh)
  key = jax.random.key(5)
  out, m = fn(jax.device_put(jax.tree.map(jnp.copy, state), state_sh), jax.device_put(teacher, teacher_sh),
              {"xT": shd.global_batch(mesh, xT, 1)}, key)
  assert m["finite"] == 1.0
  # By hand: the round's critic step 0 uses fold_in(fold_in(key, step 0), 0); slice i of it
  # fold_in(that, i).
  k_critic = jax.random.fold_in(jax.random.fold_in(key, 0), 0)
  critic_loss = jax.jit(ib.critic_loss)  # one program instead of op-by-op dispatch
  losses = [critic_loss(state.critic, state.gen, {"xT": xT[0][i::2]},
                        jax.random.fold_in(k_critic, i)) for i in range(2)]
  np.testing.assert_allclose(m["critic_loss"], np.mean(losses), rtol=2e-4)
  whole = critic_loss(state.critic, state.gen, {"xT": xT[0]}, k_critic)
  assert not np.isclose(m["critic_loss"], whole, rtol=1e-3)  # really accumulated over slices
