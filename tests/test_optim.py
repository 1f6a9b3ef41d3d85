"""Optimiser schedules: the learning rate actually applied, read back from plain SGD-like updates."""
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax.optim import make_optimizer


def _lrs(cfg, steps, total_steps=0):
  """Adam with b1 = b2 = 0 turns a gradient g into lr·g/(|g| + eps): the update magnitude is lr."""
  tx = make_optimizer(dict(cfg, name="adam", b1=0.0, b2=0.0), total_steps=total_steps)
  params = jnp.zeros(())
  state = tx.init(params)
  out = []
  for _ in range(steps):
    upd, state = tx.update(jnp.ones(()), state, params)
    out.append(-float(upd))
  return np.array(out)


def test_cosine_spans_the_run_by_default():
  lrs = _lrs(dict(lr=1e-2, decay="cosine", final_lr_frac=0.1), 101, total_steps=100)
  want = 1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * np.minimum(np.arange(101), 100) / 100)))
  np.testing.assert_allclose(lrs, want, rtol=1e-4)
  assert lrs[50] == pytest.approx(1e-2 * 0.55, rel=1e-4)


def test_cosine_explicit_steps_and_warmup():
  lrs = _lrs(dict(lr=1e-2, decay="cosine", decay_steps=30, warmup_steps=10), 31, total_steps=999)
  np.testing.assert_allclose(lrs[:10], 1e-2 * np.arange(10) / 10, rtol=1e-4, atol=1e-9)
  assert lrs[10] == pytest.approx(1e-2, rel=1e-4)
  assert lrs[20] == pytest.approx(0.5e-2, rel=1e-3)  # halfway through the 20 cosine steps
  assert lrs[30] == pytest.approx(0.0, abs=1e-7)


def test_step_decay_and_bad_names():
  lrs = _lrs(dict(lr=1.0, decay="step", decay_every=3, decay_rate=0.5), 7)
  np.testing.assert_allclose(lrs, [1, 1, 1, .5, .5, .5, .25], rtol=1e-5)
  with pytest.raises(ValueError, match="cosine"):
    make_optimizer(dict(lr=1e-3, decay="cosine"))  # no decay_steps and no run length
  with pytest.raises(ValueError, match="decay must be"):
    make_optimizer(dict(lr=1e-3, decay="linear"))
  with pytest.raises(ValueError, match="name must be"):
    make_optimizer(dict(lr=1e-3, name="sgd"))
