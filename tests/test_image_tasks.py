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
from ibmd_jax import evaluate, steps, tasks
from ibmd_jax import teacher_io
from ibmd_jax.options import task_options
from ibmd_jax import run as runner
from ibmd_jax import sharding as shd

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
from ibmd_jax.teacher_io import COMPUTE_ONLY_MODEL_KEYS as COMPUTE_ONLY  # noqa: E402  (do not change the weights)


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
  assert c.distill.z_channels == (-1 if p["z"] else 0) and c.distill.z_init_scale == 0.0
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
    z = int(c.data.channels)  # z_channels -1: as many as the data
    extra = _count_params(frozen, cond_ch, z) - _count_params(frozen, cond_ch, 0)
    assert extra == 3 * 3 * z * c.model.model_channels


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


def test_teacher_mismatch_names_what_differs():
  """A saved or converted teacher is checked against the config: architecture (lists and tuples
  alike, compute-only options ignored), input width and the time input of a converted network."""

  c = load_config("ddbm_e2h64", "tiny")
  meta = {"model": json.loads(json.dumps(dict(c.model)))}  # a JSON round trip: tuples -> lists
  meta["model"].update(dtype="bfloat16", remat=True)
  assert teacher_io.teacher_mismatch(meta, task_options(c)) is None
  meta["model"]["channel_mult"] = [1, 2, 2]
  assert "model.channel_mult: teacher [1, 2, 2], config [1, 2]" in teacher_io.teacher_mismatch(meta, task_options(c))
  converted = {"model": dict(c.model), "family": "ddbm", "c_noise": "ddbm_250logt", "in_channels": 6}
  assert teacher_io.teacher_mismatch(converted, task_options(c)) is None
  why = teacher_io.teacher_mismatch(dict(converted, in_channels=3), task_options(c))
  assert "takes 3 input channels, but the config feeds 6" in why
  why = teacher_io.teacher_mismatch(dict(converted, c_noise="i2sb_noise_levels"), task_options(c))
  assert "i2sb_noise_levels" in why and "'log250'" in why
  i2sb = load_config("i2sb_sr4_bicubic", "tiny")
  why = teacher_io.teacher_mismatch(dict(converted, model=dict(i2sb.model)), task_options(i2sb))
  assert "takes 6 input channels, but the config feeds 3" in why


# ---------------------------------------------------------------------- end-to-end tiny runs
def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _finite(row, keys):
  for k in keys:
    assert k in row and np.isfinite(row[k]), (k, row)


def _check_distill_rows(rows, c):
  distill = [r for r in rows if r["mode"] == "distill"]
  assert [r["step"] for r in distill] == list(range(1, int(c.distill.rounds) + 1))
  for r in distill:
    _finite(r, ("gen_loss", "critic_loss", "teacher_term", "critic_term", "gen_grad_norm",
                "critic_grad_norm"))
    # L_θ = λ‖x̂0* − x0‖² − λ‖x̂0^φ − x0‖², logged as its two terms.
    assert r["gen_loss"] == pytest.approx(r["teacher_term"] - r["critic_term"], abs=1e-5)
    assert r["critic_grad_norm"] > 0 and r["gen_grad_norm"] > 0


def _check_eval(workdir, c):
  """eval/metrics.json: every sampler at every NFE with finite PSNR; the degraded input's PSNR
  equals scikit-image's on the same evaluation images; one readable grid per student."""
  from PIL import Image
  from skimage.metrics import peak_signal_noise_ratio


  with open(os.path.join(workdir, "eval", "metrics.json")) as f:
    ev = json.load(f)
  assert set(ev["teacher"]) == {str(n) for n in c.eval.teacher_nfes}
  assert set(ev["student"]) == {str(n) for n in c.eval.student_steps}
  for row in list(ev["teacher"].values()) + list(ev["student"].values()):
    assert 5.0 < row["psnr"] < 60.0 and row["s_per_sample"] > 0, row
  es = tasks.images.EvalSet(tasks.make_task(c), "test", int(c.eval.num_images), int(c.eval.batch_size), int(c.seed))
  ref = [peak_signal_noise_ratio(b["x0"][i], b["xT"][i], data_range=2.0)
         for j, b in es.batches() for i in range(es.valid(j))]
  assert len(ref) == c.eval.num_images
  assert ev["input"]["psnr"] == pytest.approx(float(np.mean(ref)), abs=1e-3)
  for steps in c.eval.student_steps:
    path = os.path.join(workdir, "eval", f"grid_student{steps}.png")
    grid = np.asarray(Image.open(path))
    with open(os.path.splitext(path)[0] + ".txt") as f:
      cols = f.read().split(":", 1)[1].split("|")
    assert len(cols) == 4 and f"student {steps}-step" in cols[1]
    rows = min(int(c.eval.grid_rows), int(c.eval.num_images))
    size = int(c.data.image_size)
    assert grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[0] >= rows * size and grid.shape[1] >= len(cols) * size
    assert grid.std() > 10  # images, not a blank canvas
  return ev


def _cli_env():
  from tests import envs
  return envs.one_device(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _launch(module, *args, timeout=1500):
  import subprocess
  import sys

  res = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_cli_env(),
                       capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
  return res


def _check_teacher_rows(rows, c):
  teacher = [r for r in rows if r["mode"] == "teacher"]
  assert [r["step"] for r in teacher] == list(range(1, int(c.teacher.steps) + 1))
  losses = np.array([r["loss"] for r in teacher])
  assert np.all(np.isfinite(losses))
  k = len(losses) // 3
  print(f"teacher loss: first third {losses[:k].mean():.4f}, last third {losses[-k:].mean():.4f}")
  assert losses[-k:].mean() < 0.9 * losses[:k].mean()  # bridge matching learns


def _eval_summary(ev):
  out = {"input": round(ev["input"]["psnr"], 2)}
  for g in ("teacher", "student"):
    out[g] = {k: round(v["psnr"], 2) for k, v in ev[g].items()}
  return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["i2sb_sr4_bicubic", "ddbm_e2h64"])
def test_tiny_pipeline_from_the_command_line(tmp_path, name):
  """The documented CPU command: teacher -> IBMD -> evaluation with grids, for an I2SB-style
  (unconditional, x̂0 = x_t − σ_t F) and a DDBM-style (VP bridge, EDM preconditioning, xT
  concatenated) setup."""
  workdir = str(tmp_path / name)
  _launch("launch.main", f"--config=configs/{name}.py:tiny", f"--workdir={workdir}")
  c = load_config(name, "tiny")
  assert c.conditional == (name == "ddbm_e2h64")
  rows = _rows(workdir)
  assert {r["mode"] for r in rows} == {"teacher", "distill", "eval"}
  _check_teacher_rows(rows, c)
  _check_distill_rows(rows, c)
  with open(os.path.join(workdir, "teacher", "teacher.json")) as f:
    assert json.load(f)["model"]["channel_mult"] == list(c.model.channel_mult)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(int(c.distill.rounds))))
  print(name, json.dumps(_eval_summary(_check_eval(workdir, c))))


# ---------------------------------------------------------------------- one round, every variant
def _micro(c):
  """A one-level UNet (a res-block at 16x16, no resampling, no attention but the middle block's)
  on one device: the compile-light network for checks of the data, masks, labels and the fused
  round (a UNet's compile time grows with its ops, not its channels)."""
  c.model.update(channel_mult=(1,), attention_resolutions=(), num_res_blocks=1)
  c.mesh.data = 1
  return c


def _one_device():
  return shd.make_mesh(1, 1, devices=jax.devices()[:1])


def _numpy_params(problem, seed=0):
  """Teacher-shaped params with O(1) activations, drawn in numpy (XLA:CPU compiles the UNet's
  threefry init slowly)."""
  ex = problem.example()
  shapes = jax.eval_shape(lambda: problem.net.init(
      jax.random.key(0), jnp.asarray(ex["x"]), label=ex.get("label")))
  rng = np.random.default_rng(seed)

  def leaf(path, a):
    name = path[-1].key
    n = rng.normal(size=a.shape).astype(np.float32)
    if name == "kernel":
      return n / math.sqrt(math.prod(a.shape[:-1]))
    return 1.0 + 0.1 * n if name == "scale" else (n if name == "embedding" else 0.1 * n)

  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.mark.parametrize("name", [
    "i2sb_inpaint",
    # slow (40 s): the default suite runs the DMD2 multi-step round in tests/test_method.py
    pytest.param("dbim_inpaint256", marks=pytest.mark.slow)])
def test_tiny_inpainting_runs_a_round(name):
  """Centre inpainting: masks (1 = the 8x8 hole of 16x16) reach the round, I2SB's variant has no
  noise input and a 4-step full-chain generator, DBIM's a class label (fixed: the photographs
  have none), 1:1 critic ratio and a 4-step DMD2 generator; one fused round runs."""
  from ibmd_jax import ibmd as ibmd_lib

  c = _micro(load_config(name, "tiny"))
  c.distill.batch_size = 2  # the round's run time (8 -> 2: 8.4 -> 2.5 s CPU); its compile is the same
  problem = tasks.make_task(c)
  n, bs = int(c.distill.critic_steps) + 1, int(c.distill.batch_size)
  assert n == (2 if name == "dbim_inpaint256" else 3)
  batches = next(iter(problem.train_data("distill", bs, n)))
  assert batches["xT"].shape == (n, bs, 16, 16, 3)
  mask = batches["mask"]
  hole = np.zeros((16, 16), bool)
  hole[4:12, 4:12] = True
  assert np.all(mask[..., 4:12, 4:12, :] == 1) and np.all(mask[:, :, ~hole] == 0)
  if name == "dbim_inpaint256":
    assert batches["label"].dtype == np.int32 and np.all(batches["label"] == 0)
    assert c.distill.z_channels == -1 and c.distill.multistep == "dmd2"
  else:
    assert "label" not in batches
    assert c.distill.z_channels == 0 and c.distill.multistep == "full_chain"
  assert c.distill.n_steps == 4

  teacher = _numpy_params(problem)
  state, gen_tx, critic_tx = runner.init_distill_state(c, problem, teacher, _one_device())
  ib = evaluate.make_ibmd(c, problem)
  # the critic steps as a loop: one UNet body to compile, not one per step (on CPU the default
  # unrolls them; tests/test_ibmd.py checks both give the same round)
  _, _, round_step = steps.make_ibmd_steps(ib, gen_tx, critic_tx, float(c.distill.ema),
                                           critic_unroll=False)
  batches = {k: jnp.asarray(v) for k, v in batches.items() if k != "x0"}
  new, m = jax.jit(round_step)(state, teacher, batches, jax.random.key(0))
  m = {k: float(v) for k, v in m.items()}
  _finite(m, ("gen_loss", "critic_loss", "teacher_term", "critic_term"))
  assert m["gen_loss"] == pytest.approx(m["teacher_term"] - m["critic_term"], abs=1e-5)
  assert int(new.step) == 1
  moved = lambda a, b: max(float(jnp.max(jnp.abs(x - y))) for x, y in
                           zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  assert moved(new.gen, state.gen) > 0 and moved(new.critic, state.critic) > 0


# ---------------------------------------------------------------------- converted teachers (issue 8)
FIXTURE_SETUPS = {"i2sb_adm_small": ("i2sb", "i2sb_sr4_bicubic"),
                  "ddbm_adm_small": ("ddbm", "ddbm_e2h64")}


def _fixture_file(name):
  path = os.path.join(FIXTURES, name)
  if not os.path.exists(path):
    pytest.skip(f"fixture {path} not found (set IBMD_FIXTURES)")
  return path


def _fixture_overrides(fixture: str, teacher_dir: str) -> dict:
  """Command-line overrides that point the setup's tiny config at a converted fixture teacher:
  its architecture (read off the fixture's constructor arguments), its image size and, for the
  class-conditional DDBM fixture, a fixed label for the unlabelled photographs."""
  from ibmd_jax import convert

  family, setup = FIXTURE_SETUPS[fixture]
  with open(_fixture_file(fixture + ".json")) as f:
    arch = convert.config_from_adm_kwargs(json.load(f)["kwargs"])
  base = load_config(setup, "tiny")
  out = {"teacher.source": "checkpoint", "teacher.checkpoint": teacher_dir,
         "data.image_size": arch["image_size"]}
  for k, v in arch.items():
    if base.model.get(k) != v:
      out[f"model.{k}"] = v
  if arch.get("num_classes"):
    out["data.fixed_label"] = 3
  return out


def _apply(c, overrides):
  c.update_from_flattened_dict(dict(overrides))  # dotted keys
  return c


def _flag(k, v):
  return f"--config.{k}=" + (str(tuple(v)).replace(" ", "") if isinstance(v, tuple) else str(v))


def _convert(tmp_path, fixture):
  family, _ = FIXTURE_SETUPS[fixture]
  workdir = str(tmp_path / "converted")
  res = _launch("launch.convert", f"--src={_fixture_file(fixture + '.npz')}", f"--family={family}",
                f"--adm_kwargs={_fixture_file(fixture + '.json')}", f"--workdir={workdir}",
                "--noprint_mapping", timeout=600)
  assert "every key used once and every param filled" in res.stdout
  return os.path.join(workdir, "teacher")


# DDBM's (slow, 32 s): its conversion is checked against the original network's output in the
# default suite (tests/test_convert.py, tests/test_parity.py)
@pytest.mark.parametrize("fixture", [
    "i2sb_adm_small", pytest.param("ddbm_adm_small", marks=pytest.mark.slow)])
def test_converted_teacher_initialises_generator_and_samples(tmp_path, fixture):
  """launch.convert -> a teacher the setup's config accepts; the distillation state starts from
  the converted weights (critic equal, generator equal but for zero z weights), so the round-0
  generator computes the teacher's one-step x̂0(xT, T) on real images; our sampler runs on it
  (one NFE: its x̂0 is that network call; samplers at more NFEs on a converted network: the slow
  test_converted_teacher_distills_from_the_command_line, and tests/test_parity.py on stand-ins)."""
  from ibmd_jax import convert, samplers

  family, setup = FIXTURE_SETUPS[fixture]
  teacher_dir = _convert(tmp_path, fixture)
  c = _apply(load_config(setup, "tiny"), _fixture_overrides(fixture, teacher_dir))
  c.mesh.data = 1
  problem = tasks.make_task(c)
  teacher = runner.get_teacher(c, str(tmp_path / "run"), problem, None, _one_device(), train=False)
  npz = np.load(_fixture_file(fixture + ".npz"))
  ref, _ = convert.convert({k[6:]: npz[k] for k in npz.files if k.startswith("param/")},
                           teacher_io.load_teacher(teacher_dir)[1]["model"], family)
  jax.tree.map(np.testing.assert_array_equal, teacher, ref)

  state, _, _ = runner.init_distill_state(c, problem, teacher, _one_device())
  jax.tree.map(np.testing.assert_array_equal, state.critic, teacher)
  in_ch = 6 if c.conditional else 3
  flat_t = dict(jax.tree_util.tree_leaves_with_path(teacher))
  for path, g in jax.tree_util.tree_leaves_with_path(state.gen):
    t = np.asarray(flat_t[path])
    if jax.tree_util.keystr(path) == "['input_blocks_0_0']['kernel']":
      assert g.shape == (3, 3, in_ch + 3, c.model.model_channels)
      np.testing.assert_array_equal(g[:, :, :in_ch], t)
      assert not np.any(np.asarray(g[:, :, in_ch:]))  # z weights start at zero
    else:
      np.testing.assert_array_equal(g, t)

  batch = next(iter(problem.train_data("teacher", 4)))  # real photographs, degraded
  xT = jnp.asarray(batch["xT"])
  assert xT.shape == (4, 32, 32, 3)
  label = jnp.full((4,), 3, jnp.int32) if c.model.num_classes else None
  ib = evaluate.make_ibmd(c, problem)
  t_T = jnp.full((4,), problem.bridge.time_grid(1)[0])

  # One program (this fixture's 3-level attention UNet compiles slowly): the generator, the teacher
  # network called directly, and our sampler at one NFE on the teacher, whose x̂0 is the same
  # network call (XLA may merge the two).
  @jax.jit
  def three(gen, teacher, xT, key):
    return (ib.generate(gen, xT, key, label=label, n_steps=1),
            problem.net(teacher, xT, t_T, xT, label=label),
            samplers.sample(problem.net, teacher, problem.bridge, xT, jax.random.fold_in(key, 1),
                            1, label=label, output="x0hat"))

  g, x0_hat, out = three(state.gen, teacher, xT, jax.random.key(5))
  assert float(jnp.std(x0_hat)) > 0.1  # a non-trivial prediction
  np.testing.assert_allclose(g, x0_hat, atol=2e-5, rtol=0)
  assert out.shape == xT.shape and bool(jnp.all(jnp.isfinite(out)))
  np.testing.assert_allclose(out, x0_hat, atol=2e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", sorted(FIXTURE_SETUPS))
def test_converted_teacher_distills_from_the_command_line(tmp_path, fixture):
  """launch.convert, then launch.main with the setup's tiny config naming the converted teacher:
  no teacher training, IBMD rounds from it, evaluation with our samplers and grids."""
  _, setup = FIXTURE_SETUPS[fixture]
  teacher_dir = _convert(tmp_path, fixture)
  overrides = _fixture_overrides(fixture, teacher_dir)
  workdir = str(tmp_path / "run")
  _launch("launch.main", f"--config=configs/{setup}.py:tiny", f"--workdir={workdir}",
          *[_flag(k, v) for k, v in overrides.items()])
  c = _apply(load_config(setup, "tiny"), overrides)
  rows = _rows(workdir)
  assert {r["mode"] for r in rows} == {"distill", "eval"}  # the teacher was loaded, not trained
  assert not os.path.exists(os.path.join(workdir, "teacher"))
  _check_distill_rows(rows, c)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["teacher"]["checkpoint"] == teacher_dir
  print(fixture, json.dumps(_eval_summary(_check_eval(workdir, c))))


def _docstring_command(name: str, module: str) -> list:
  """The `python -m <module> ...` command of a config file's docstring, as argv."""
  import re
  import shlex

  with open(os.path.join(REPO, "configs", name + ".py")) as f:
    doc = f.read().split('"""')[1].replace("\\\n", " ")
  m = re.search(rf"python -m {re.escape(module)} ([^\n]*)", doc)
  assert m, f"configs/{name}.py documents no `python -m {module}` command"
  return shlex.split(m.group(1))


@pytest.mark.parametrize("name", sorted(PAPER))
def test_docstring_commands_match_the_config(name):
  """Each config's docstring converts the right official checkpoint (family, preset) into the
  directory its teacher.checkpoint names, and runs this very config file."""
  from ibmd_jax.models.unet import PRESETS

  args = dict(a[2:].split("=", 1) for a in _docstring_command(name, "launch.convert"))
  assert set(args) == {"src", "family", "preset", "workdir"}
  c = load_config(name)
  assert args["family"] == PAPER[name]["family"]
  assert os.path.join(args["workdir"], "teacher") == c.teacher.checkpoint
  arch = {k: v for k, v in c.model.items() if k not in COMPUTE_ONLY + ("name",)}
  assert PRESETS[args["preset"]] == arch
  run = _docstring_command(name, "launch.main")
  assert run[0] == f"--config=configs/{name}.py"


# One process for the four documented commands: each in a process of its own paid 6 s of Python and
# JAX start-up for a conversion that fails in milliseconds (the `python -m launch.convert` entry
# itself runs in test_converted_teacher_initialises_generator_and_samples).
_CONVERT_EACH = """
import json, sys
from absl import flags
from launch import convert
out = []
for argv in json.loads(sys.argv[1]):
  flags.FLAGS.unparse_flags()
  rest = flags.FLAGS(["launch.convert"] + argv)  # as app.run parses the command line
  try:
    convert.main(rest)
    out.append(None)
  except SystemExit as e:  # sys.exit("error: ...") from main: exit status 1, the text on stderr
    out.append(str(e.code))
print(json.dumps(out))
"""


def test_docstring_convert_commands_run(tmp_path):
  """The documented conversion command of one config per distinct family and preset, its flags
  parsed as `python -m launch.convert` parses them and run for real on a small fixture in place of
  the official file: the flags parse, the preset exists, and the converter refuses the
  wrong-sized state dict with an error naming the first key that does not fit (the full-size key
  listings are matched in tests/test_convert.py)."""
  import subprocess
  import sys

  names = ["i2sb_sr4_bicubic", "ddbm_e2h64", "ddbm_diode256", "dbim_inpaint256"]
  argvs = []
  for name in names:
    fixture = "i2sb_adm_small" if name.startswith("i2sb") else "ddbm_adm_small"
    argvs.append([f"--src={_fixture_file(fixture + '.npz')}" if a.startswith("--src=") else
                  f"--workdir={tmp_path / name}" if a.startswith("--workdir=") else a
                  for a in _docstring_command(name, "launch.convert")])
  res = subprocess.run([sys.executable, "-c", _CONVERT_EACH, json.dumps(argvs)], cwd=REPO,
                       env=_cli_env(), capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  errors = json.loads(res.stdout.strip().splitlines()[-1])
  for name, err in zip(names, errors, strict=True):
    assert err and "error: cannot convert" in err and "source key 'time_embed.0.weight'" in err, (
        name, err)
    assert not os.path.exists(tmp_path / name / "teacher"), name
