"""ADM UNet: calling convention, full-size parameter counts (shapes only), precision, remat.

XLA:CPU compiles jax.random (threefry) very slowly, so parameters come from numpy over
eval_shape'd shapes, and each config's forward is jitted once and shared between tests.
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax.models import build_model
from ibmd_jax.models.unet import PRESET_IN_CHANNELS, PRESETS, UNet

# Two levels, one res-block each, attention at ds 2 with 2 heads of 16: every block kind at 8x8.
TINY = dict(model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(2,),
            channel_mult=(1, 2), num_heads=4, num_head_channels=16, image_size=8, dropout=0.3,
            num_classes=10)

# One level (no resampling), a res-block at 4x4 and the middle block's attention (no level
# attention: fewer ops, a quicker compile): for the compile-heavy checks.
MICRO = dict(model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(),
             channel_mult=(1,), num_head_channels=16, image_size=4, dropout=0.3,
             num_classes=10)

# The paper's teachers, counted from the official state dicts (fixtures/*.keys.json).
EXPECTED_PARAMS = {
    "i2sb_imagenet256": 552_807_171,
    "ddbm_e2h64": 295_136_451,
    "ddbm_diode256": 552_814_083,
    "dbim_imagenet256_inpaint": 553_838_083,
}


def _inputs(b=2, s=8, c=3, seed=0):
  rng = np.random.default_rng(seed)
  x, cond, z = (jnp.asarray(rng.normal(size=(b, s, s, c)), jnp.float32) for _ in range(3))
  t = jnp.linspace(0.0, 900.0, b)  # [B] raw c_noise
  label = jnp.arange(b, dtype=jnp.int32) % 10
  return x, cond, z, t, label


def _random_params(model, *args, seed=0, **kwargs):
  """Params of the right shapes with O(1) activations (none of guided-diffusion's zero init)."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    n = rng.normal(size=a.shape).astype(np.float32)
    if name == "kernel":
      return n / math.sqrt(math.prod(a.shape[:-1]))
    if name == "scale":
      return 1.0 + 0.1 * n
    return n if name == "embedding" else 0.1 * n

  return jax.tree_util.tree_map_with_path(leaf, shapes)


@functools.lru_cache(maxsize=None)
def _forward(**kw):
  """One jitted apply per config (kw hashable), reused across tests to compile once."""
  model = UNet(**kw)
  return jax.jit(lambda p, x, t, cond, label, rng: model.apply(
      {"params": p}, x, t, cond=cond, label=label, train=rng is not None,
      rngs=None if rng is None else {"dropout": rng}))


@pytest.mark.parametrize("variant", ["uncond", "cond", "cond_z", "label"])
def test_output_shape_and_input_width(variant):
  """Shapes only: the first conv takes [x, cond, z] channels and the output has out_channels."""
  x, cond, z, t, label = _inputs()
  model = UNet(**dict(TINY, num_classes=10 if variant == "label" else None, out_channels=5))
  args = {"cond": cond if variant in ("cond", "cond_z") else None,
          "z": z if variant == "cond_z" else None,
          "label": label if variant == "label" else None}
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **args))["params"]
  out = jax.eval_shape(lambda p: model.apply({"params": p}, x, t, **args), params)
  assert out.shape == x.shape[:3] + (5,) and out.dtype == jnp.float32
  n_in = 3 * (1 + (args["cond"] is not None) + (args["z"] is not None))
  assert params["input_blocks_0_0"]["kernel"].shape == (3, 3, n_in, 32)
  assert ("label_emb" in params) == (variant == "label")


@pytest.mark.parametrize("updown", [True, False])
def test_resampling_and_modulation_variants(updown):
  """resblock_updown=False uses guided-diffusion's conv Downsample ('op') / Upsample ('conv');
  use_scale_shift_norm=False adds the embedding instead of a (scale, shift) pair."""
  x, _, _, t, label = _inputs()
  model = UNet(**dict(TINY, resblock_updown=updown, use_scale_shift_norm=updown))
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, label=label))["params"]
  out = jax.eval_shape(lambda p: model.apply({"params": p}, x, t, label=label), params)
  assert out.shape == x.shape
  # TINY: input_blocks 0 conv, 1 res, 2 down, 3 res+attn; output_blocks 1 = res, attn, up.
  down, up = params["input_blocks_2_0"], params["output_blocks_1_2"]
  if updown:
    assert "in_layers_2" in down and "in_layers_2" in up
  else:
    assert down["op"]["kernel"].shape == (3, 3, 32, 32)
    assert up["conv"]["kernel"].shape == (3, 3, 64, 64)
  emb_out = params["input_blocks_1_0"]["emb_layers_1"]["kernel"].shape
  assert emb_out == (128, 64 if updown else 32)


def test_init_is_float32_and_outputs_zero():
  """guided-diffusion's zero_module: residual branches and the head start at zero."""
  x, cond, _, t, label = _inputs(s=4)
  model = UNet(**dict(MICRO, dtype=jnp.bfloat16))
  # rbg keys compile far faster than threefry on XLA:CPU; the init values do not matter here.
  out, variables = jax.jit(lambda k: model.init_with_output(k, x, t, cond=cond, label=label))(
      jax.random.key(0, impl="rbg"))
  params = variables["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))
  for zero in (params["out_2"], params["middle_block_1"]["proj_out"],
               params["input_blocks_1_0"]["out_layers_3"]):
    assert not np.any(zero["kernel"])
  assert np.any(params["input_blocks_1_0"]["in_layers_2"]["kernel"])
  np.testing.assert_array_equal(out, 0.0)


def test_label_required_when_class_conditional():
  x, _, _, t, _ = _inputs()
  with pytest.raises(ValueError, match="pass label"):
    jax.eval_shape(lambda: UNet(**TINY).init(jax.random.PRNGKey(0), x, t))


def test_bad_inputs_are_clear_errors():
  x, _, _, t, label = _inputs(s=7)
  with pytest.raises(ValueError, match="divisible by 2"):
    jax.eval_shape(lambda: UNet(**TINY).init(jax.random.PRNGKey(0), x, t, label=label))
  x, cond, _, t, label = _inputs()
  with pytest.raises(ValueError, match="cond shape"):
    jax.eval_shape(lambda: UNet(**TINY).init(jax.random.PRNGKey(0), x, t, cond=cond[:1],
                                             label=label))
  with pytest.raises(ValueError, match="attention_layout"):
    jax.eval_shape(lambda: UNet(**dict(TINY, attention_layout="bad")).init(
        jax.random.PRNGKey(0), x, t, label=label))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_param_counts(preset):
  """Counts from shapes only (eval_shape): nothing of the 550M parameters is allocated."""
  model = build_model({"name": "unet", **PRESETS[preset]})
  s = PRESETS[preset]["image_size"]
  x = jax.ShapeDtypeStruct((1, s, s, PRESET_IN_CHANNELS[preset]), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  label = jax.ShapeDtypeStruct((1,), jnp.int32)
  shapes = jax.eval_shape(lambda x, t, l: model.init(jax.random.PRNGKey(0), x, t, label=l),
                          x, t, label)
  n = sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))
  assert n == EXPECTED_PARAMS[preset]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))


def test_bf16_forward_close_to_float32():
  x, cond, _, t, label = _inputs()
  params = _random_params(UNet(**TINY), x, t, cond=cond, label=label)
  out32 = _forward(**TINY)(params, x, t, cond, label, None)
  out16 = _forward(**dict(TINY, dtype=jnp.bfloat16))(params, x, t, cond, label, None)
  assert out16.dtype == jnp.float32  # the head runs in float32 whatever the body dtype
  assert bool(jnp.all(jnp.isfinite(out32))) and float(jnp.std(out32)) > 0.1
  rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
  print(f"bf16 vs float32 relative error {rel:.2e}")
  assert rel < 3e-2, rel


def test_remat_matches_and_dropout_only_in_train():
  x, cond, _, t, label = _inputs(s=4)
  params = _random_params(UNet(**MICRO), x, t, cond=cond, label=label)
  plain = _forward(**MICRO)(params, x, t, cond, label, None)
  remat = _forward(**dict(MICRO, remat=True))
  np.testing.assert_allclose(remat(params, x, t, cond, label, None), plain, rtol=1e-5, atol=1e-5)
  train = remat(params, x, t, cond, label, jax.random.key(9, impl="rbg"))
  assert float(jnp.abs(train - plain).max()) > 1e-3


@pytest.mark.slow
def test_remat_gradients_match():
  x, cond, _, t, label = _inputs()
  params = _random_params(UNet(**TINY), x, t, cond=cond, label=label)

  def grads(remat):
    model = UNet(**dict(TINY, dropout=0.0, remat=remat))
    loss = lambda p: jnp.mean(model.apply({"params": p}, x, t, cond=cond, label=label) ** 2)
    return jax.jit(jax.grad(loss))(params)

  for a, b in zip(jax.tree.leaves(grads(False)), jax.tree.leaves(grads(True))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("updown", [True, False])
def test_matmul_conv_grad_matches_xla(updown):
  """conv_grad='matmul' (the CPU weight gradient, models/conv.py) gives XLA's gradients and the
  same forward pass; strided convolutions (Downsample) fall through to XLA's own."""
  x, cond, _, t, label = _inputs(s=4)
  cfg = dict(MICRO, resblock_updown=updown)
  params = _random_params(UNet(**cfg), x, t, cond=cond, label=label)

  def grads(conv_grad):
    model = UNet(**dict(cfg, conv_grad=conv_grad))
    loss = lambda p, x: jnp.mean(jnp.sin(model.apply({"params": p}, x, t, cond=cond,
                                                       label=label)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)

  (la, (ga, gxa)), (lb, (gb, gxb)) = grads("xla"), grads("matmul")
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  np.testing.assert_allclose(gxa, gxb, rtol=1e-4, atol=1e-7)
  flat_a, flat_b = jax.tree.leaves_with_path(ga), jax.tree.leaves(gb)
  for (path, a), b in zip(flat_a, flat_b):
    scale = float(jnp.abs(a).max()) + 1e-12
    assert float(jnp.abs(a - b).max()) <= 1e-4 * scale, jax.tree_util.keystr(path)
  assert sum(float(jnp.abs(a).sum()) for a in jax.tree.leaves(ga)) > 0
  with pytest.raises(ValueError, match="conv_grad must be one of"):  # raised while tracing
    jax.eval_shape(lambda: UNet(**dict(cfg, conv_grad="fast")).init(jax.random.key(0), x, t,
                                                                     cond=cond, label=label))
