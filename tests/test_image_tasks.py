"""Image task configs (one per paper setup) and end-to-end tiny image runs on CPU.

The paper's settings are restated here from the digest (Table 7, §1.5, §3.4), independently of
configs/images.py, so that a drifting config fails a test.
"""
import functools
import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import images
from ibmd_jax.bridges import Bridge
from ibmd_jax.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("IBMD_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))

# Table 7: teacher family, generator steps N, critic:generator ratio L, learning rate, student
# gradient updates per N, noise input z, and the setup's data.
PAPER = {
    "i2sb_sr4_bicubic": dict(family="i2sb", n=1, ratio=5, lr=5e-5, rounds={1: 3000}, z=True,
                             degradation="sr4_bicubic", size=256, keys="i2sb_imagenet256_uncond"),
    "i2sb_sr4_pool": dict(family="i2sb", n=1, ratio=5, lr=5e-5, rounds={1: 3000}, z=True,
                          degradation="sr4_pool", size=256, keys="i2sb_imagenet256_uncond"),
    "i2sb_jpeg5": dict(family="i2sb", n=1, ratio=5, lr=5e-5, rounds={1: 2000}, z=True,
                       degradation="jpeg5", size=256, keys="i2sb_imagenet256_uncond"),
    "i2sb_jpeg10": dict(family="i2sb", n=1, ratio=5, lr=5e-5, rounds={1: 3000}, z=True,
                        degradation="jpeg10", size=256, keys="i2sb_imagenet256_uncond"),
    "i2sb_inpaint": dict(family="i2sb", n=4, ratio=5, lr=5e-5, rounds={4: 2000}, z=False,
                         degradation="inpaint_center", size=256, keys="i2sb_imagenet256_uncond"),
    "ddbm_e2h64": dict(family="ddbm", n=1, ratio=5, lr=1e-5, rounds={1: 14000, 2: 300}, z=True,
                       data_kind="ab_folder", size=64, keys="ddbm_e2h64"),
    "ddbm_diode256": dict(family="ddbm", n=1, ratio=5, lr=1e-5, rounds={1: 3700, 2: 500}, z=True,
                          data_kind="diode", size=256, keys="ddbm_diode256"),
    "dbim_inpaint256": dict(family="dbim", n=4, ratio=1, lr=3e-6, rounds={4: 3000}, z=True,
                            degradation="inpaint_center", size=256,
                            keys="dbim_imagenet256_inpaint"),
}
# Parameter counts of the official networks (issue 7/8; also in the fixtures' key listings).
PARAMS = {"i2sb_imagenet256_uncond": 552_807_171, "ddbm_e2h64": 295_136_451,
          "ddbm_diode256": 552_814_083, "dbim_imagenet256_inpaint": 553_838_083}
# §1.5: the teachers' bridges.
BRIDGES = {
    "i2sb": dict(kind="i2sb", beta_max=0.3, ot_ode=False, precond="eps"),
    "ddbm": dict(kind="vp", vp_beta_min=0.1, vp_beta_d=2.0, sigma_data=0.5, precond="edm"),
    "dbim": dict(kind="i2sb", beta_max=1.0, ot_ode=False, precond="eps"),
}
COMPUTE_ONLY = ("dtype", "remat", "attention_impl")  # model keys that do not change the weights


def load_config(name: str, arg: str = ""):
  """configs/<name>.py:<arg>, loaded from its file as the launcher does."""
  spec = importlib.util.spec_from_file_location(f"_cfg_{name}",
                                                os.path.join(REPO, "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def _listing(name):
  path = os.path.join(FIXTURES, name + ".keys.json")
  if not os.path.exists(path):
    pytest.skip(f"fixture {path} not found (set IBMD_FIXTURES)")
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", sorted(PAPER) + ["bench64"])
@pytest.mark.parametrize("arg", ["", "tiny", "2step", "tiny,2step"])
def test_every_config_loads(name, arg):
  if name == "bench64":
    arg = ",".join(["sr4"] + [a for a in arg.split(",") if a])
  c = load_config(name, arg)
  assert c.mode == "pipeline"
  Bridge.from_config(c.bridge)  # every bridge option known
  build_model(c.model)  # every model option known
  assert c.model.image_size == c.data.image_size
  assert c.distill.n_steps == (2 if "2step" in arg else c.distill.n_steps)
  if "tiny" in arg:
    assert c.data.kind == "skimage" and c.data.image_size == 16 and c.model.model_channels == 32
    assert c.teacher.source == "train" and c.model.dtype == "float32"
  json.loads(c.to_json_best_effort())  # the launcher writes it to config.json


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(name):
  p = PAPER[name]
  c = load_config(name)
  fam = p["family"]
  assert c.distill.n_steps == p["n"]
  assert c.distill.critic_steps == p["ratio"]
  assert c.distill.gen_optimizer.lr == p["lr"] == c.distill.critic_optimizer.lr
  assert c.distill.rounds == p["rounds"][p["n"]]
  assert c.distill.batch_size == 256 and c.distill.ema == 0.99
  assert c.distill.z_channels == (3 if p["z"] else 0) and c.distill.z_init_scale == 0.0
  assert c.distill.teacher == "network"
  # §3.3: the I2SB teachers' multistep generator runs its whole chain, the DDBM ones follow DMD2.
  assert c.distill.multistep == ("full_chain" if fam == "i2sb" else "dmd2")
  assert c.conditional == (fam != "i2sb")  # DDBM / DBIM concatenate xT to the network input
  want = dict(BRIDGES[fam])
  if name == "i2sb_inpaint":  # beta_max 1.0 with --ot-ode (I2SB scripts/train.sh)
    want.update(beta_max=1.0, ot_ode=True)
  for k, v in want.items():
    assert c.bridge[k] == v, (k, c.bridge[k], v)
  assert c.teacher.source == "checkpoint"
  assert c.teacher.checkpoint == f"./teachers/{name}/teacher"
  assert c.data.image_size == p["size"] and c.model.image_size == p["size"]
  if "degradation" in p:
    assert c.data.kind == "tfds" and c.data.tfds_name == "imagenet2012"
    assert c.data.degradation == p["degradation"]
    if p["degradation"] == "inpaint_center":
      assert c.data.hole == 128  # the 128x128 centre of 256x256
  else:
    assert c.data.kind == p["data_kind"]
  assert (c.model.num_classes == 1000) == (name == "dbim_inpaint256")
  assert c.data.class_conditional == (name == "dbim_inpaint256")
  if name in ("i2sb_inpaint", "dbim_inpaint256"):  # trained at 4 NFE, tested at 1, 2 and 4
    assert tuple(c.eval.student_steps) == (1, 2, 4)
  for n, rounds in p["rounds"].items():  # ':2step' gives the paper's 2-step count (E2H, DIODE)
    assert load_config(name, f"{n}step").distill.rounds == rounds


@pytest.mark.parametrize("name", sorted(PAPER))
def test_tiny_variant_keeps_the_setup(name):
  full, tiny = load_config(name), load_config(name, "tiny")
  for k in ("conditional",):
    assert tiny[k] == full[k]
  for k in ("n_steps", "multistep", "z_channels", "z_init_scale", "ema", "teacher"):
    assert tiny.distill[k] == full.distill[k], k
  assert tiny.distill.critic_steps == min(full.distill.critic_steps, 2)
  assert dict(tiny.bridge) == dict(full.bridge)
  assert (tiny.model.num_classes is None) == (full.model.num_classes is None)
  if full.data.kind == "tfds":
    assert tiny.data.degradation == full.data.degradation
  else:  # paired photographs -> edge maps of the skimage photos (sketch -> image)
    assert tiny.data.degradation == "edges"
  if full.data.degradation == "inpaint_center":
    assert tiny.data.hole == 8  # half of 16, as 128 is half of 256


@pytest.mark.parametrize("name", sorted(PAPER))
def test_full_size_model_has_the_official_parameter_count(name):
  """The config's network (eval_shape only) has the official network's parameter count and the
  architecture read off its key listing; with z channels the generator adds only 3*C first-conv
  weights."""
  c = load_config(name)
  listing = _listing(PAPER[name]["keys"])
  assert listing["n_params"] == PARAMS[PAPER[name]["keys"]]
  from ibmd_jax import convert

  arch = {k: v for k, v in c.model.items() if k not in COMPUTE_ONLY + ("name",)}
  assert arch == convert.config_from_adm_kwargs(listing["kwargs"])

  cond_ch = 3 if c.conditional else 0
  frozen = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                        for k, v in c.model.items()))
  assert _count_params(frozen, cond_ch, 0) == PARAMS[PAPER[name]["keys"]]
  if c.distill.z_channels:
    extra = _count_params(frozen, cond_ch, c.distill.z_channels) - _count_params(frozen, cond_ch, 0)
    assert extra == 3 * 3 * c.distill.z_channels * c.model.model_channels


@functools.lru_cache(maxsize=None)
def _count_params(frozen_model: tuple, cond_channels: int, z_channels: int) -> int:
  """Parameters of a model config (eval_shape: nothing allocated). The count does not depend on
  the spatial size, so the smallest size every level can halve keeps tracing short; the five
  I2SB setups share one network and one count."""
  cfg = dict(frozen_model)
  model = build_model(cfg)
  s = 2 ** (len(cfg["channel_mult"]) - 1)
  spec = lambda ch: jax.ShapeDtypeStruct((1, s, s, ch), jnp.float32) if ch else None
  x, cond, z = spec(3), spec(cond_channels), spec(z_channels)
  t = jax.ShapeDtypeStruct((1,), jnp.float32)
  label = jax.ShapeDtypeStruct((1,), jnp.int32) if cfg.get("num_classes") else None
  shapes = jax.eval_shape(lambda x, t, cond, z, label: model.init(
      jax.random.PRNGKey(0), x, t, cond=cond, z=z, label=label), x, t, cond, z, label)
  return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))


@pytest.mark.parametrize("name", ["i2sb_jpeg5", "bench64"])
def test_unknown_option_is_a_clear_error(name):
  with pytest.raises(ValueError, match=r"unknown config option 'tinny'.*'tiny'"):
    load_config(name, "sr4,tinny" if name == "bench64" else "tinny")
  with pytest.raises(ValueError, match=r"unknown config option '0step'"):
    load_config(name, "sr4,0step" if name == "bench64" else "0step")
  if name == "bench64":
    with pytest.raises(ValueError, match=r"unknown bench64 task 'sr8'.*'sr4'"):
      load_config(name, "sr8")
