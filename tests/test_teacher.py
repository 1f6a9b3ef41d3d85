"""Teacher bridge matching on a toy coupling approaches the exact teacher."""
import jax
import jax.numpy as jnp
import numpy as np

from ibmd_jax import steps
from ibmd_jax import toy
from ibmd_jax.bridges import Bridge
from ibmd_jax.denoiser import NetDenoiser
from ibmd_jax.losses import per_sample_sq
from ibmd_jax.models.mlp import MLP
from ibmd_jax.optim import make_optimizer
from ibmd_jax.samplers import make_sampler


def test_trained_mlp_teacher_matches_exact_teacher():
  g = toy.make_coupling("cond_modes")
  b = Bridge(kind="vp", precond="edm")
  net = NetDenoiser(b, MLP(width=128, depth=3, time_scale=1 / 250), conditional=True)
  tx = make_optimizer(dict(name="adam", lr=2e-3))
  state = steps.teacher_state(net.init(jax.random.key(0), jnp.zeros((2, 2))), tx)
  step = steps.make_teacher_step(net, b, tx, ema_decay=0.99)

  @jax.jit
  def train_100(state, start):  # 100 steps in one compiled loop (800 dispatches cost ~20 s)
    def body(st, i):
      k = jax.random.key(i)
      x0, xT, _ = g.sample(jax.random.fold_in(k, 7), 256)
      return step(st, {"x0": x0, "xT": xT}, k)[0], None
    return jax.lax.scan(body, state, start + jnp.arange(100))[0]

  for start in range(0, 800, 100):
    state = train_100(state, start)
  exact = toy.exact_predictor(g, b, True)
  x0, xT, _ = g.sample(jax.random.key(99), 4096)
  t = b.sample_t(jax.random.key(5), 4096)
  xt = b.sample_xt(x0, xT, t, jax.random.normal(jax.random.key(6), x0.shape))
  lam = b.loss_weight(t)
  gap = float(jnp.mean(lam * per_sample_sq(net(state.ema, xt, t, xT), exact(None, xt, t, xT))))
  bm_floor = float(jnp.mean(lam * per_sample_sq(exact(None, xt, t, xT), x0)))
  # The exact teacher's own loss is the irreducible ≈ 2.2; the trained net is within 0.06 of it
  # in the same weighted metric (measured 2026-12-07: 0.057 / 0.045 / 0.032 / 0.028 / 0.019 after
  # 500 / 600 / 800 / 1000 / 1500 steps; its 100-NFE ED 0.0087 / 0.0075 / 0.0028 / 0.0012 / 0.0037).
  assert gap < 0.06, (gap, bm_floor)
  assert 1.5 < bm_floor < 3.0
  C, N = 8, 400
  xTh = g.sample_xT(jax.random.key(1), C)
  truth, _ = g.sample_x0_given_xT(jax.random.key(2), xTh, N)
  rep = jnp.broadcast_to(xTh, (N,) + xTh.shape).reshape(N * C, 2)
  out = make_sampler(net, b, 100)(state.ema, rep, jax.random.key(3))
  ed = float(toy.conditional_energy_distance(out.reshape(N, C, 2), truth))
  assert ed < 0.04, ed  # exact teacher at 100 NFE: ≈ 0.002; 1 NFE: ≈ 1.6


def test_masked_loss_counts_only_the_hole():
  b = Bridge(kind="i2sb")
  pred = lambda p, x_t, t, xT=None, label=None, rng=None: x_t * 0 + p
  x0 = jnp.zeros((4, 6))
  xT = jnp.ones((4, 6))
  mask = jnp.broadcast_to(jnp.array([1.0, 1, 0, 0, 0, 0]), (4, 6))
  wrong_outside = jnp.array([0.0, 0, 5, 5, 5, 5])  # errors only on known pixels
  loss = steps.bridge_matching_loss(wrong_outside, pred, b, {"x0": x0, "xT": xT, "mask": mask},
                                          jax.random.key(0))
  assert float(loss) == 0.0
  wrong_inside = jnp.array([1.0, 0, 0, 0, 0, 0])
  loss = steps.bridge_matching_loss(wrong_inside, pred, b, {"x0": x0, "xT": xT, "mask": mask},
                                          jax.random.key(0))
  assert float(loss) > 0.0
