"""One IBMD round on 8 (fake CPU) devices, data- and FSDP-sharded, equals the 1-device round."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import ibmd as ibmd_lib
from ibmd_jax import sharding as shd
from ibmd_jax import api, evaluate, steps, tasks
from ibmd_jax import run as runner


@functools.lru_cache(maxsize=None)
def _round(data, fsdp, split=False):
  """Two rounds (L = 2) on the first data × fsdp devices; cached: the 1-device reference and the
  fused data 2 × fsdp 4 round are shared by the tests below (each costs a compile)."""
  cfg = toy_cond.get_config()
  cfg.model.width = 256  # big enough that FSDP really splits the dense kernels
  cfg.model.depth = 1  # one residual block: the same layers to split, a third of the program
  cfg.distill.critic_steps = 2
  problem = tasks.make_task(cfg)
  teacher = problem.net.init(jax.random.key(0), jnp.zeros((2, 2)))
  state, gtx, ctx = runner.init_distill_state(cfg, problem, teacher)
  ib = evaluate.make_ibmd(cfg, problem)
  # The critic steps as a loop: unrolling them (the CPU default) only multiplies the compile;
  # test_ibmd checks the unrolled round against the loop.
  _, _, round_step = steps.make_ibmd_steps(ib, gtx, ctx, 0.99, critic_unroll=False)
  mesh = shd.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
  state_sh, teacher_sh = shd.state_shardings(mesh, state), shd.state_shardings(mesh, teacher)
  fn = shd.jit_round(round_step, mesh, state_sh, teacher_sh, split=split)
  state = jax.device_put(state, state_sh)
  xT = next(iter(problem.train_data("distill", 64, 3)))["xT"]
  out, metrics = fn(state, jax.device_put(teacher, teacher_sh), {"xT": shd.global_batch(mesh, xT, 1)},
                    jax.random.key(2))
  out, metrics = fn(out, jax.device_put(teacher, teacher_sh), {"xT": shd.global_batch(mesh, xT, 1)},
                    jax.random.key(3))
  return out, metrics


# The mixed mesh shards the batch over both axes and splits the parameters 4 ways, so it checks
# both at once; the pure meshes (same code path) are slow tests, covered by the default (2, 4).
@pytest.mark.parametrize("data,fsdp", [
    (2, 4),
    pytest.param(8, 1, marks=pytest.mark.slow),  # covered by [2-4] (data axis) in the default suite
    pytest.param(1, 8, marks=pytest.mark.slow),  # covered by [2-4] (fsdp axis) in the default suite
    pytest.param(4, 2, marks=pytest.mark.slow),  # covered by [2-4] in the default suite
])
def test_sharded_round_matches_single_device(data, fsdp):
  assert len(jax.devices()) >= 8, "tests/conftest.py requests 8 CPU devices"
  ref_state, ref_m = _round(1, 1)
  state, m = _round(data, fsdp)
  if fsdp > 1:  # the big kernels really are split
    kern = state.gen["dense_0_a"]["kernel"]
    assert len({str(s.index) for s in kern.addressable_shards}) == fsdp
  for k in ("critic_loss", "gen_loss", "teacher_term", "critic_term"):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=2e-4, atol=1e-5)
  # Adam moves a parameter by ≈ ±lr whatever its gradient's size, so an entry whose gradient is at
  # float-rounding level can flip sign between reduction orders: allow that on a tiny fraction of
  # entries, bounded by Adam's step (2·lr per update), and require float agreement everywhere else.
  for tree, ref, lr, updates in ((state.gen, ref_state.gen, 1e-4, 2),
                                 (state.critic, ref_state.critic, 1e-3, 4)):
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(ref)])
    close = np.isclose(a, b, rtol=1e-3, atol=2e-5)
    assert close.mean() > 0.9995, close.mean()
    assert np.abs(a - b).max() <= 2 * lr * updates


def test_mesh_and_batch_errors_are_clear():
  with pytest.raises(ValueError, match="fsdp=3"):
    shd.make_mesh(-1, 3)
  with pytest.raises(ValueError, match="= 16 but 8 devices"):
    shd.make_mesh(16, 1)
  with pytest.raises(ValueError, match="divisible"):
    shd.check_batch(shd.make_mesh(), 30, "distill.batch_size")


def test_a_smaller_mesh_takes_the_first_devices():
  """mesh.data × mesh.fsdp below the device count (one process): the first devices, e.g. one."""
  assert list(shd.make_mesh(1, 1).devices.flat) == jax.devices()[:1]
  mesh = shd.make_mesh(2, 2)
  assert mesh.devices.shape == (2, 2) and set(mesh.devices.flat) == set(jax.devices()[:4])
  assert shd.make_mesh().devices.size == len(jax.devices())


def test_split_round_is_the_fused_round():
  """distill.split_round: the round as its critic program and its generator program gives the
  fused round's metrics and state (two rounds, data 2 × fsdp 4: the fused round is
  test_sharded_round_matches_single_device[2-4]'s)."""
  fused_state, fused_m = _round(2, 4)
  state, m = _round(2, 4, split=True)
  assert set(m) == set(fused_m)
  for k in fused_m:
    np.testing.assert_allclose(m[k], fused_m[k], rtol=1e-5, atol=1e-7, err_msg=k)
  for a, b in zip(jax.tree.leaves((state.gen, state.critic, state.gen_ema)),
                  jax.tree.leaves((fused_state.gen, fused_state.critic, fused_state.gen_ema))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
