"""PyTorch -> Flax conversion: full-size key listings (shapes only), numerical parity with the
PyTorch reference outputs of the small fixtures, .pt round trips, strict errors, the launcher."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ibmd_jax import convert
from ibmd_jax.models.unet import PRESETS, AttentionBlock, UNet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.environ.get("IBMD_FIXTURES", os.path.join(REPO, "..", "shared", "fixtures"))

# Official full-size state-dict listings -> (preset, family).
FULL_SIZE = {
    "i2sb_imagenet256_uncond": ("i2sb_imagenet256", "i2sb"),
    "ddbm_e2h64": ("ddbm_e2h64", "ddbm"),
    "ddbm_diode256": ("ddbm_diode256", "ddbm"),
    "dbim_imagenet256_inpaint": ("dbim_imagenet256_inpaint", "dbim"),
}
SMALL = {"i2sb_adm_small": "i2sb", "ddbm_adm_small": "ddbm"}


def _fixture(name):
  path = os.path.join(FIXTURES, name)
  if not os.path.exists(path):
    pytest.skip(f"fixture {name} not found in {os.path.abspath(FIXTURES)} (set IBMD_FIXTURES)")
  return path


def _small(name):
  """(ADM kwargs json, npz arrays, torch state dict) of a small fixture."""
  with open(_fixture(name + ".json")) as f:
    meta = json.load(f)
  npz = dict(np.load(_fixture(name + ".npz")))
  sd = {k[len("param/"):]: v for k, v in npz.items() if k.startswith("param/")}
  return meta, npz, sd


@functools.lru_cache(maxsize=None)
def _forward(**kw):
  model = UNet(**kw)
  return jax.jit(lambda p, x, t, cond, label: model.apply(
      {"params": p}, x, t, cond=cond, label=label))


def _run_fixture(cfg, params, npz):
  """Our output on the fixture inputs, NHWC -> compared in NCHW like 'output'."""
  nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
  cond = nhwc(npz["input/xT"]) if "input/xT" in npz else None
  label = jnp.asarray(npz["input/label"], jnp.int32) if "input/label" in npz else None
  hashable = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
  out = _forward(**hashable)(params, nhwc(npz["input/x"]), jnp.asarray(npz["input/timesteps"]),
                             cond, label)
  return np.asarray(out).transpose(0, 3, 1, 2)


def _rel(a, ref):
  return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_key_listing_matches_preset(name):
  """Every official key is used once and every Flax param is filled (shapes only)."""
  with open(_fixture(name + ".keys.json")) as f:
    listing = json.load(f)
  preset, family = FULL_SIZE[name]
  assert convert.config_from_adm_kwargs(listing["kwargs"]) == PRESETS[preset]
  report = convert.check_key_shapes(listing["keys"], PRESETS[preset], family)
  assert report["n_params"] == listing["n_params"]
  assert len(report["mapping"]) == len(listing["keys"])
  assert sorted(e["source"] for e in report["mapping"]) == sorted(listing["keys"])
  assert len({e["target"] for e in report["mapping"]}) == len(listing["keys"])
  # DBIM's inpainting teacher uses the I2SB schedule and its noise-level time input.
  assert report["c_noise"] == {"ddbm": "ddbm_250logt"}.get(family, "i2sb_noise_levels")
  assert report["in_channels"] == (3 if family == "i2sb" else 6)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_fixture_reproduces_pytorch_output(name):
  meta, npz, sd = _small(name)
  cfg = convert.config_from_adm_kwargs(meta["kwargs"])
  params, report = convert.convert(sd, cfg, SMALL[name])
  assert report["n_params"] == meta["n_params"] and not report["ignored_keys"]
  rel = _rel(_run_fixture(cfg, params, npz), npz["output"])
  print(f"{name}: relative error {rel:.2e}")
  assert rel <= 1e-4, rel


def test_wrong_qkv_layout_breaks_parity():
  """The fixtures pin each layout (I2SB legacy, DDBM qkv-first); reading DDBM weights as legacy
  must fail the comparison, or the parity test would not see the layout at all."""
  meta, npz, sd = _small("ddbm_adm_small")
  cfg = convert.config_from_adm_kwargs(meta["kwargs"])
  wrong, report = convert.convert(sd, cfg, "ddbm", source_layout="legacy")
  assert any(e["qkv_permute"] for e in report["mapping"])
  assert _rel(_run_fixture(cfg, wrong, npz), npz["output"]) > 1e-2


@pytest.mark.parametrize("src,dst", [("legacy", "qkv_first"), ("qkv_first", "legacy")])
def test_qkv_permutation_preserves_attention(src, dst):
  """A block whose torch qkv weights are permuted into the other layout computes the same."""
  c, heads = 32, 4
  rng = np.random.default_rng(0)
  torch_qkv_w = rng.normal(size=(3 * c, c, 1)).astype(np.float32) / np.sqrt(c)  # conv1d [3C, C, 1]
  torch_qkv_b = rng.normal(size=(3 * c,)).astype(np.float32)
  x = jnp.asarray(rng.normal(size=(2, 4, 4, c)), jnp.float32)

  def block_params(w, b):
    return {"norm": {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)},
            "qkv": {"kernel": w[:, :, 0].T, "bias": b},
            "proj_out": {"kernel": np.eye(c, dtype=np.float32), "bias": np.zeros(c, np.float32)}}

  entry = lambda: {"qkv_permute": {"from": src, "to": dst, "heads": heads}, "transform": "copy"}
  ref = AttentionBlock(heads, layout=src).apply(
      {"params": block_params(torch_qkv_w, torch_qkv_b)}, x)
  out = AttentionBlock(heads, layout=dst).apply(
      {"params": block_params(convert._transform(torch_qkv_w, entry()),
                              convert._transform(torch_qkv_b, entry()))}, x)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  assert float(jnp.abs(out - x).max()) > 1e-2  # attention did something


def test_mismatches_name_the_key_and_shapes():
  meta, _, sd = _small("i2sb_adm_small")
  cfg = convert.config_from_adm_kwargs(meta["kwargs"])
  shapes = {k: v.shape for k, v in sd.items()}
  bad = dict(shapes, **{"input_blocks.1.0.in_layers.2.weight": (32, 32, 5, 5)})
  with pytest.raises(ValueError, match=r"in_layers\.2\.weight'.*\[32, 32, 5, 5\]"):
    convert.plan(bad, cfg, "i2sb")
  missing = {k: v for k, v in shapes.items() if k != "out.2.bias"}
  with pytest.raises(ValueError, match="out_2/bias .*not filled"):
    convert.plan(missing, cfg, "i2sb")
  extra = dict(shapes, **{"input_blocks.99.0.in_layers.0.weight": (32,)})
  with pytest.raises(ValueError, match=r"input_blocks\.99\.0.*no Flax module"):
    convert.plan(extra, cfg, "i2sb")
  with pytest.raises(ValueError, match="time_embed.0.weight"):
    convert.plan(shapes, dict(cfg, model_channels=64), "i2sb")
  with pytest.raises(ValueError, match="unknown family"):
    convert.plan(shapes, cfg, "edm")


def test_pt_round_trip_and_i2sb_container(tmp_path):
  torch = pytest.importorskip("torch", reason="PyTorch not installed (optional extra 'torch')")
  meta, _, sd = _small("i2sb_adm_small")
  cfg = convert.config_from_adm_kwargs(meta["kwargs"])
  ref, _ = convert.convert(sd, cfg, "i2sb")

  path = str(tmp_path / "model.pt")
  torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path)
  loaded, where = convert.load_state_dict(path)
  params, _ = convert.convert(loaded, cfg, "i2sb")
  jax.tree.map(np.testing.assert_array_equal, params, ref)

  # I2SB's own checkpoint: {'net': Image256Net state dict, 'ema': torch_ema state}; the EMA
  # tensors follow net.parameters() order and are the weights to convert.
  net = {"noise_levels": torch.linspace(0, 1, 5)}
  net.update({"diffusion_model." + k: torch.from_numpy(v) for k, v in sd.items()})
  shadow = [torch.from_numpy(2 * v) for v in sd.values()]
  torch.save({"net": net, "ema": {"decay": 0.9999, "num_updates": 3, "shadow_params": shadow}},
             path)
  loaded, where = convert.load_state_dict(path)
  assert where == "ema.shadow_params"
  params, report = convert.convert(loaded, cfg, "i2sb")
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, 2 * b), params, ref)
  loaded, where = convert.load_state_dict(path, use_ema=False)
  params, report = convert.convert(loaded, cfg, "i2sb")
  assert where == "net" and report["ignored_keys"] == ["noise_levels"]
  jax.tree.map(np.testing.assert_array_equal, params, ref)


def test_launcher_writes_a_loadable_teacher(tmp_path):
  from ibmd_jax import teacher_io as checkpoint
  from ibmd_jax.models import build_model

  name = "ddbm_adm_small"
  src, kwargs_json = _fixture(name + ".npz"), _fixture(name + ".json")
  from tests import envs
  env = envs.one_device(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  cmd = [sys.executable, "-m", "launch.convert", f"--src={src}", "--family=ddbm",
         f"--adm_kwargs={kwargs_json}", f"--workdir={tmp_path}", "--noprint_mapping"]
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "every key used once and every param filled" in res.stdout

  params, meta = checkpoint.load_teacher(str(tmp_path / "teacher"))
  assert meta["family"] == "ddbm" and meta["c_noise"] == "ddbm_250logt"
  assert meta["model"]["attention_layout"] == "qkv_first"
  assert isinstance(build_model(meta["model"]), UNet)
  _, npz, sd = _small(name)
  ref, _ = convert.convert(sd, meta["model"], "ddbm")
  jax.tree.map(np.testing.assert_array_equal, params, ref)
  with open(tmp_path / "teacher" / "conversion.json") as f:
    report = json.load(f)
  assert len(report["mapping"]) == len(sd)

  bad = subprocess.run(cmd[:5] + ["--preset=ddbm_e2h64", f"--workdir={tmp_path}/x"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "shape mismatch at source key" in bad.stderr
