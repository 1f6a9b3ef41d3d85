"""Tests that fail when the method breaks: the generator gradient (through x0 AND x_t) against
finite differences of the full generator loss, the real initialisation (generator and critic start
as the teacher), the dmd2 multi-step generator's per-sample step, state and gradient, and a round
that compiles once per shape."""
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy_cond
from ibmd_jax import api, evaluate, steps, tasks
from ibmd_jax import run as runner
from ibmd_jax import sharding as shd
from ibmd_jax.bridges import Bridge
from ibmd_jax.ibmd import IBMD


def _linear(scale_x, scale_xT, bias):
  """A closed-form predictor x̂0 = A(t)·x_t + B·xT + c with a t-dependent A: its Jacobian in x_t is
  not the identity, so the x_t path of the generator gradient is not trivial."""

  def predict(params, x_t, t, xT=None, z=None, label=None, rng=None):
    del params, z, label, rng
    a = scale_x * (1.0 + 0.3 * jnp.sin(t))[:, None]
    return a * x_t + scale_xT * xT + bias

  return predict


def _generator(params, x_t, t, xT=None, z=None, label=None, rng=None):
  del t, label, rng
  return jnp.tanh(x_t @ params["w"] + z @ params["wz"] + params["b"]) * params["s"]


def test_generator_gradient_matches_finite_differences_of_the_full_loss():
  """jax.grad of L_θ (gradients through x0 in both terms and through x_t into both predictors)
  equals central finite differences of L_θ itself, in float64. Stopping the gradient through x_t
  (or through x0 in one term) changes the autodiff gradient but not the finite differences."""
  with jax.enable_x64(True):
    bridge = Bridge(kind="vp", precond="edm")
    ib = IBMD(bridge=bridge, teacher=_linear(0.7, 0.2, 0.1), critic=_linear(0.4, -0.3, -0.2),
              generator=_generator, z_channels=2)
    k = jax.random.key(0)
    params = {"w": jax.random.normal(k, (3, 3), jnp.float64) * 0.5,
              "wz": jax.random.normal(jax.random.fold_in(k, 1), (2, 3), jnp.float64) * 0.5,
              "b": jnp.asarray([0.1, -0.2, 0.3]), "s": jnp.asarray(1.5)}
    batch = {"xT": jax.random.normal(jax.random.fold_in(k, 2), (16, 3), jnp.float64)}
    key = jax.random.fold_in(k, 3)
    loss = lambda p: ib.generator_loss(p, None, None, batch, key)[0]  # noqa: E731
    grad = jax.jit(jax.grad(loss))(params)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    h = 1e-6
    # every ±h perturbation of every parameter in one compiled call (38 eager evaluations of the
    # loss were most of this test's time)
    deltas = np.concatenate([np.eye(flat.size), -np.eye(flat.size)]) * h
    losses = np.asarray(jax.jit(jax.vmap(lambda d: loss(unravel(flat + d))))(jnp.asarray(deltas)))
    fd = (losses[:flat.size] - losses[flat.size:]) / (2 * h)
    auto = np.asarray(jax.flatten_util.ravel_pytree(grad)[0])
    np.testing.assert_allclose(auto, fd, rtol=1e-6, atol=1e-9)
    # the x_t path matters here: without it the gradient is measurably different
    frozen = IBMD(bridge=_StopXt(bridge), teacher=_linear(0.7, 0.2, 0.1),
                  critic=_linear(0.4, -0.3, -0.2), generator=_generator, z_channels=2)
    no_xt = np.asarray(jax.flatten_util.ravel_pytree(
        jax.jit(jax.grad(lambda p: frozen.generator_loss(p, None, None, batch, key)[0]))(params))[0])
    assert np.abs(no_xt - fd).max() > 1e-3 * np.abs(fd).max()


class _StopXt:
  """A bridge whose x_t carries no gradient to x0 (the mutation the gradient test must catch)."""

  def __init__(self, bridge):
    self._b = bridge

  def __getattr__(self, name):
    return getattr(self._b, name)

  def sample_xt(self, x0, xT, t, eps):
    return self._b.sample_xt(jax.lax.stop_gradient(x0), xT, t, eps)


def _toy_config(width=32):
  c = toy_cond.get_config()
  c.model.width = width
  c.distill.z_init_scale = 0.0  # the paper's zero initialisation
  c.distill.critic_steps = 2
  c.distill.batch_size = 16
  c.mesh.data = 1  # one device of the suite's eight
  return c


def test_generator_and_critic_start_as_the_teacher_through_the_real_init():
  c = _toy_config()
  task = tasks.make_task(c)
  mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
  teacher = task.net.init(jax.random.key(5), jnp.zeros((2, 2)))
  state, _, _ = runner.init_distill_state(c, task, teacher, mesh)
  for a, b in zip(jax.tree.leaves(state.critic), jax.tree.leaves(teacher)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ib = evaluate.make_ibmd(c, task)
  assert ib.z_channels == 2  # from the data (dim 2), distill.z_channels = -1
  xT = jax.random.normal(jax.random.key(1), (64, 2))
  t1 = jnp.full((64,), task.bridge.time_grid(1)[0])
  one_step_teacher = task.net(teacher, xT, t1, xT)
  out = ib.generate(state.gen, xT, jax.random.key(2))  # z enters through zero weights
  np.testing.assert_allclose(np.asarray(out), np.asarray(one_step_teacher), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(jax.tree.leaves(state.gen_ema)[0]),
                                np.asarray(jax.tree.leaves(state.gen)[0]))


def _scalar_gen(params, x_t, t, xT=None, z=None, label=None, rng=None):
  del t, xT, z, label, rng
  return params["theta"] * x_t


@pytest.mark.parametrize("intermediate", ["posterior", "marginal"])
def test_dmd2_step_index_state_and_gradient(intermediate):
  """dmd2: each call draws one step k (for the whole batch); x0 = G(x_{t_k}) with x_{t_k} the
  chain's state ('posterior') or the bridge at the previous prediction ('marginal'), x_T for k = 0;
  the gradient flows only through that last call (d/dθ Σ θ·x_k = Σ x_k, x_k held constant)."""
  bridge = Bridge(kind="vp", precond="edm")
  n, b = 3, 64
  ib = IBMD(bridge=bridge, teacher=_scalar_gen, critic=_scalar_gen, generator=_scalar_gen,
            n_steps=n, multistep="dmd2", intermediate=intermediate, eta=0.0)
  params = {"theta": jnp.asarray(0.8)}
  xT = jax.random.normal(jax.random.key(0), (b, 4))
  grid = np.asarray(bridge.time_grid(n))
  seen = set()
  for seed in range(12):
    key = jax.random.key(seed)
    k_step, k_chain, k_marg, _ = jax.random.split(key, 4)
    k = int(jax.random.randint(k_step, (), 0, n))
    if k in seen:
      continue
    seen.add(k)
    out = ib.generate_for_training(params, xT, key)
    x_k = np.asarray(out) / 0.8
    # the chain with booting noise (eta = 0: DBIM's deterministic step), recomputed here
    x, states, preds = xT, [xT], []
    for i in range(n - 1):
      ki = jax.random.fold_in(k_chain, i)
      t_b, s_b = jnp.full((b,), grid[i]), jnp.full((b,), grid[i + 1])
      pred = 0.8 * x
      eps = jax.random.normal(jax.random.fold_in(ki, 1), x.shape)
      boot = jax.random.normal(jax.random.fold_in(ki, 2), x.shape)
      x = bridge.posterior(x, pred, t_b, s_b, eps, eta=0.0, xT=xT, first=i == 0, boot_eps=boot)
      states.append(x)
      preds.append(pred)
    assert np.isfinite(np.asarray(x)).all()  # booting noise: no division by c_T ≈ 0
    if k == 0:
      want = np.asarray(xT)
    elif intermediate == "posterior":
      want = np.asarray(states[k])
    else:
      eps = jax.random.normal(k_marg, xT.shape)
      want = np.asarray(bridge.sample_xt(preds[k - 1], xT, jnp.full((b,), grid[k]), eps))
    np.testing.assert_allclose(x_k, want, rtol=1e-5, atol=1e-5)
    g = jax.grad(lambda p: jnp.sum(ib.generate_for_training(p, xT, key)))(params)["theta"]
    np.testing.assert_allclose(float(g), float(x_k.sum()), rtol=1e-4)
  assert seen == {0, 1, 2}  # every step index was drawn and checked


def test_round_compiles_once_per_shape():
  c = _toy_config()
  task = tasks.make_task(c)
  mesh = shd.make_mesh(1, 1, devices=jax.devices()[:1])
  teacher = task.net.init(jax.random.key(0), jnp.zeros((2, 2)))
  ib = evaluate.make_ibmd(c, task)
  opts = api.DistillOptions.from_config(c)
  planned, gtx, ctx = api.plan_state(ib, task.net, teacher, task.example(), opts, mesh)
  _, _, round_step = steps.make_ibmd_steps(ib, gtx, ctx)
  traces = []

  def counted(*args):
    traces.append(1)
    return round_step(*args)

  fn = shd.jit_round(counted, mesh, planned.shardings, shd.state_shardings(mesh, teacher))
  state = planned.build()
  data = iter(task.train_data("distill", 16, 3))
  for r in range(3):
    batch = {k: shd.global_batch(mesh, v, 1) for k, v in next(data).items()}
    state, m = fn(state, teacher, batch, jax.random.key(r))
  assert float(m["finite"]) == 1.0
  assert len(traces) == 1
  assert int(state.step) == 3
