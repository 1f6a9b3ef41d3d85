"""Image evaluation (ibmd_jax.image_task.evaluate) on tiny 16x16 configs: files, metric values
checked against independent computations, sharded == single device, clear errors for missing
weight files, teacher-mode grids, and eval mode from a finished run's checkpoints."""
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import images
from ibmd_jax import data, evaluate, report, samplers, tasks
from ibmd_jax import run as runner
from ibmd_jax.writer import MetricWriter
from ibmd_jax.denoiser import widen_like
from ibmd_jax import sharding as shd
from ibmd_jax.eval import inception
from ibmd_jax.eval import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_IMAGES = 12  # two batches of 8: the second padded with 4 repeats that must not be counted
ROWS = ("input", "reference")


def _config(**eval_kw):
  cfg = images.paper("i2sb_sr4_bicubic", "tiny")
  # one resolution level, no attention: the samplers compile in a few seconds on 2 CPUs
  cfg.model.channel_mult, cfg.model.attention_resolutions = (1,), ()
  cfg.eval.num_images = N_IMAGES
  cfg.eval.batch_size = 8
  for k, v in eval_kw.items():
    setattr(cfg.eval, k, v)
  return cfg


@functools.lru_cache(maxsize=None)
def _params():
  """A teacher with non-zero outputs (ADM zero-initialises its last conv, which would make every
  sampler return its input) and its generator (z weights zero, train.init_distill_state's rule),
  drawn with numpy from the parameter shapes: compiling Flax's init costs a minute on 2 CPUs.
  Built once: every test here has the same model."""
  cfg = _config()
  problem = tasks.make_task(cfg)
  x = jnp.asarray(problem.example()["x"])
  rng = np.random.default_rng(0)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name:
      return (1.0 + 0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)
    if "bias" in name:
      return (0.05 * rng.standard_normal(leaf.shape)).astype(np.float32)
    fan_in = int(np.prod(leaf.shape[:-1])) or 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)

  shapes = jax.eval_shape(lambda: problem.net.init(jax.random.key(0), x))
  teacher = jax.tree_util.tree_map_with_path(draw, shapes)
  z = evaluate.make_ibmd(cfg, problem).z_channels
  gen_shapes = jax.eval_shape(lambda: problem.net.init(jax.random.key(0), x, z_channels=z))
  gen = jax.tree.map(np.asarray, widen_like(teacher, gen_shapes))
  return problem, teacher, gen


def _eval(cfg, workdir, mesh=None):
  problem, teacher, gen = _params()
  os.makedirs(workdir, exist_ok=True)
  writer = MetricWriter(workdir)
  try:
    return evaluate.evaluate(cfg, workdir, problem, teacher, gen, writer, mesh=mesh)
  finally:
    writer.close()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
  """Evaluation on 8 CPU devices, batch over data x fsdp = 4 x 2, parameters FSDP-split."""
  assert len(jax.devices()) >= 8, "tests/conftest.py requests 8 CPU devices"
  workdir = str(tmp_path_factory.mktemp("eval8"))
  cfg = _config()
  return cfg, workdir, _eval(cfg, workdir, mesh=shd.make_mesh(4, 2))


def _samplers(res):
  return [("teacher", k) for k in res["teacher"]] + [("student", k) for k in res["student"]]


def test_metrics_file_has_every_metric_for_every_sampler(sharded_run):
  cfg, workdir, res = sharded_run
  on_disk = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  assert set(on_disk["teacher"]) == {"1", "2"} and set(on_disk["student"]) == {"1", "2"}
  assert on_disk["num_images"] == N_IMAGES and on_disk["devices"] == 8
  for g, k in _samplers(on_disk):
    row = on_disk[g][k]
    for m in cfg.eval.metrics:
      assert np.isfinite(row[m]), (g, k, m)
    assert 0 < row["s_per_sample"] < 10
  for name in ROWS:
    assert set(cfg.eval.metrics) <= set(on_disk[name]) and "s_per_sample" not in on_disk[name]
  # the metric log has the same numbers (finite ones)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  ev = [r for r in rows if r["mode"] == "eval"][-1]
  assert ev["student_2step_swd"] == pytest.approx(on_disk["student"]["2"]["swd"])
  assert ev["teacher_nfe1_psnr"] == pytest.approx(on_disk["teacher"]["1"]["psnr"])
  assert "reference_psnr" not in ev  # +inf stays out of the log


def test_metric_values_against_independent_computation(sharded_run):
  """The input row recomputed from data.load_eval_set with scikit-image and the metric functions;
  the reference row is the reference against itself."""
  from skimage.metrics import peak_signal_noise_ratio, structural_similarity

  cfg, _, res = sharded_run
  ev = data.load_eval_set(dict(cfg.data), N_IMAGES, int(cfg.seed))
  x0, xT = ev["x0"], ev["xT"]
  ps = [peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=2.0)
        for a, b in zip(x0, xT)]
  ss = [structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=2.0,
                              channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False) for a, b in zip(x0, xT)]
  assert res["input"]["psnr"] == pytest.approx(np.mean(ps), rel=1e-5)
  assert res["input"]["ssim"] == pytest.approx(np.mean(ss), abs=1e-5)
  q = lambda x: report.to_uint8(x).astype(np.float32) / 127.5 - 1.0  # noqa: E731
  assert res["input"]["swd"] == pytest.approx(M.swd(q(xT), q(x0))["mean"], rel=1e-6)
  scales = tasks.images.pixel_scales(16)
  f_in = np.asarray(M.pixel_features(xT, scales=scales), np.float64)
  f_ref = np.asarray(M.pixel_features(x0, scales=scales), np.float64)
  assert res["input"]["fd_pixel"] == pytest.approx(
      M.frechet_distance(*M.feature_stats(f_in), *M.feature_stats(f_ref)), rel=1e-4)
  assert res["input"]["kid_pixel"] == pytest.approx(M.kid(f_in, f_ref)[0], rel=1e-4, abs=1e-7)
  # the reference against itself
  ref = res["reference"]
  assert ref["psnr"] == np.inf
  assert ref["ssim"] == pytest.approx(1.0, abs=1e-5)
  assert abs(ref["fd_pixel"]) < 1e-4 * res["input"]["fd_pixel"]
  # SWD of a set against itself is only its patch-sampling noise: well below a real difference
  assert ref["swd"] < 0.6 * res["input"]["swd"]
  # a random network's 2-NFE samples are far from the reference on every metric
  t2 = res["teacher"]["2"]
  assert t2["psnr"] < res["input"]["psnr"] - 3 and t2["ssim"] < res["input"]["ssim"]
  assert t2["swd"] > res["input"]["swd"] and t2["fd_pixel"] > res["input"]["fd_pixel"]


def test_grids_report_and_plot(sharded_run):
  cfg, workdir, res = sharded_run
  out = os.path.join(workdir, "eval")
  ev = data.load_eval_set(dict(cfg.data), N_IMAGES, int(cfg.seed))
  cell, pad, head = 64, 2, 26  # 16x16 images are shown 4x enlarged
  for k in ("1", "2"):
    path = os.path.join(out, f"grid_student{k}.png")
    g = np.asarray(Image.open(path).convert("RGB"))
    assert g.shape == (head + 8 * (cell + pad) + pad, 4 * (cell + pad) + pad, 3)
    names = open(os.path.join(out, f"grid_student{k}.txt")).read()
    best = res["best_teacher_nfe"]
    assert names.strip() == f"columns: input | student {k}-step | teacher NFE {best} | reference"
    for i in (0, 7):  # the first and last rows: input (column 0) and reference (column 3)
      y = head + pad + i * (cell + pad)
      for col, img in ((0, ev["xT"][i]), (3, ev["x0"][i])):
        x = pad + col * (cell + pad)
        want = report.to_uint8(img).repeat(4, 0).repeat(4, 1)
        np.testing.assert_array_equal(g[y:y + cell, x:x + cell], want)
  report_md = open(os.path.join(out, "report.md")).read()
  assert "| sampler | NFE | PSNR ↑ | SSIM ↑ | SWD ↓ | FD pix ↓ | KID pix ↓ | s / sample |" in report_md
  for label in ("| degraded input |", "| teacher (DDPM) | 1 |", "| teacher (DDPM) | 2 |",
                "| IBMD student (trained for 1 step) | 1 |", "| IBMD student (trained for 1 step) | 2 |", "| reference (itself) |", "quality_vs_nfe.png",
                "grid_student1.png", "grid_student2.png"):
    assert label in report_md, label
  assert f"| teacher (DDPM) | 2 | {res['teacher']['2']['psnr']:.2f} |" in report_md
  plot = Image.open(os.path.join(out, "quality_vs_nfe.png"))
  assert plot.size[0] >= 900 and plot.size[1] >= 900  # three rows of panels (PSNR, SWD, FD)
  assert os.path.getsize(os.path.join(out, "quality_vs_nfe.png")) > 30_000
  # the reference statistics were cached
  assert any(f.endswith(".npz") for f in os.listdir(os.path.join(out, "ref_stats")))


def test_sharded_eval_equals_single_device(sharded_run, tmp_path):
  """Every metric of the input and reference rows, and of one teacher sampler and one student
  (2 steps each: the 1-step programs run the same code once), equal on 1 and 8 devices: half the
  sampler programs of the 8-device run to compile again (each sampler draws its own key, so a
  sampler's numbers do not depend on which others run)."""
  cfg, _, res8 = sharded_run
  res1 = _eval(_config(teacher_nfes=(2,), student_steps=(2,)), str(tmp_path),
               mesh=shd.make_mesh(1, 1, devices=jax.devices()[:1]))
  assert res1["devices"] == 1 and res8["devices"] == 8
  for g in ROWS + ("teacher", "student"):
    rows1 = {"": res1[g]} if g in ROWS else res1[g]
    rows8 = {"": res8[g]} if g in ROWS else res8[g]
    assert rows1.keys() == ({""} if g in ROWS else {"2"}) and rows1.keys() <= rows8.keys()
    for k in rows1:
      for m in cfg.eval.metrics:
        a, b = rows1[k][m], rows8[k][m]
        if np.isinf(a):
          assert a == b
        else:
          assert a == pytest.approx(b, rel=2e-4, abs=1e-6), (g, k, m, a, b)


def test_missing_inception_file_fails_before_sampling(tmp_path, monkeypatch):
  def no_sampling(*a, **k):
    raise AssertionError("sampled before checking the weight files")

  monkeypatch.setattr(samplers, "sample", no_sampling)
  problem = tasks.make_task(_config())
  missing = str(tmp_path / "pt_inception.pth")
  cfg = _config(metrics=("psnr", "fid"), inception_path=missing)
  with pytest.raises(FileNotFoundError) as e:
    evaluate.evaluate(cfg, str(tmp_path), problem, {}, None, None)
  assert missing in str(e.value) and "pytorch-fid" in str(e.value)
  with pytest.raises(ValueError, match="eval.inception_path"):
    evaluate.evaluate(_config(metrics=("kid",)), str(tmp_path), problem, {}, None, None)
  with pytest.raises(ValueError, match="eval.resnet_path"):
    evaluate.evaluate(_config(metrics=("ca",)), str(tmp_path), problem, {}, None, None)
  with pytest.raises(ValueError, match="unknown.*'lpips'"):
    evaluate.evaluate(_config(metrics=("psnr", "lpips")), str(tmp_path), problem, {}, None, None)
  with pytest.raises(ValueError, match="eval.split"):
    evaluate.evaluate(_config(split="val"), str(tmp_path), problem, {}, None, None)
  with pytest.raises(ValueError, match="test split has"):
    evaluate.evaluate(_config(num_images=10**6), str(tmp_path), problem, {}, None, None)
  assert not os.path.exists(tmp_path / "eval")
  # a pipeline stops before training the teacher, not after distilling
  cfg.mode = "pipeline"
  with pytest.raises(FileNotFoundError, match="eval.inception_path"):
    runner.run(cfg, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "teacher")


@pytest.mark.slow  # the Inception at 299x299 on CPU: minutes
def test_teacher_only_fid_kid_is_with_local_inception_weights(tmp_path, monkeypatch):
  """gen_params None: teacher rows only, one grid; FID/KID/IS from an Inception with random
  weights (loading the real file format is tested in test_eval_nets)."""
  variables = inception.InceptionV3().init(jax.random.key(0), jnp.zeros((1, 75, 75, 3)))
  weights = tmp_path / "inception.npz"
  weights.write_bytes(b"stand-in")
  seen = []
  monkeypatch.setattr(inception, "load_inception", lambda p: seen.append(p) or variables)
  cfg = _config(metrics=("psnr", "fid", "kid", "is"), inception_path=str(weights),
                teacher_nfes=(1,), num_images=8)
  problem, teacher, _ = _params()
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  res = evaluate.evaluate(cfg, workdir, problem, teacher, None, MetricWriter(workdir))
  assert seen == [str(weights)]
  assert res["student"] == {} and set(res["teacher"]) == {"1"}
  cached = os.listdir(os.path.join(workdir, "eval", "ref_stats"))
  assert len(cached) == 1 and cached[0].endswith(".inception_pool.npz"), cached
  assert os.path.exists(os.path.join(workdir, "eval", "grid_teacher.png"))
  assert abs(res["reference"]["fid"]) < 1e-6 * max(res["input"]["fid"], 1e-12) + 1e-9
  assert res["input"]["fid"] > 0 and res["teacher"]["1"]["fid"] > 0
  for name in ("input", "reference"):
    assert 1.0 <= res[name]["is"] <= 1008 and np.isfinite(res[name]["kid"])
  # independent FID of the input from the network's pool features
  ev = data.load_eval_set(dict(cfg.data), 8, int(cfg.seed))
  f = lambda x: np.asarray(inception.InceptionV3().apply(  # noqa: E731
      variables, inception.preprocess(x))["pool"], np.float64)
  want = M.frechet_distance(*M.feature_stats(f(ev["xT"])), *M.feature_stats(f(ev["x0"])))
  assert res["input"]["fid"] == pytest.approx(want, rel=1e-3, abs=1e-6)


def test_teacher_mode_writes_sample_grid(tmp_path, monkeypatch):
  """mode=teacher on an image config ends with a grid of the teacher's samples at eval.grid_nfes
  (the training itself is replaced by our fixed parameters: it is tested elsewhere)."""
  problem, teacher, _ = _params()
  monkeypatch.setattr(runner, "train_teacher", lambda *a, **k: teacher)
  cfg = _config()
  cfg.mode = "teacher"
  cfg.eval.grid_rows = 4
  workdir = str(tmp_path)
  out = runner.run(cfg, workdir)
  path = os.path.join(workdir, "eval", "teacher_grid.png")
  assert out["grid"] == path
  g = np.asarray(Image.open(path).convert("RGB"))
  assert g.shape == (26 + 4 * 66 + 2, 4 * 66 + 2, 3)  # input | NFE 1 | NFE 2 | reference
  assert open(os.path.join(workdir, "eval", "teacher_grid.txt")).read().strip() == (
      "columns: input | teacher NFE 1 | teacher NFE 2 | reference")
  ev = data.load_eval_set(dict(cfg.data), int(cfg.eval.num_images), int(cfg.seed))
  cell = lambda i, j: g[28 + i * 66:28 + i * 66 + 64, 2 + j * 66:2 + j * 66 + 64]  # noqa: E731
  big = lambda x: report.to_uint8(x).repeat(4, 0).repeat(4, 1)  # noqa: E731
  for i in range(4):
    np.testing.assert_array_equal(cell(i, 0), big(ev["xT"][i]))
    np.testing.assert_array_equal(cell(i, 3), big(ev["x0"][i]))
  # the NFE-2 column is the sampler's output for those inputs
  want = samplers.make_sampler(problem.net, problem.bridge, 2)(
      teacher, ev["xT"][:4], jax.random.fold_in(jax.random.key(int(cfg.seed) + 4), 2))
  for i in range(4):
    np.testing.assert_array_equal(cell(i, 2), big(np.asarray(want)[i]))


@pytest.mark.slow
def test_cli_eval_mode_from_checkpoints_matches_pipeline(tmp_path):
  """A tiny pipeline run, then --config.mode=eval on its workdir: the restored student and
  teacher give the pipeline's own numbers."""
  workdir = str(tmp_path / "run")
  cmd = [sys.executable, "-m", "launch.main", "--config=configs/i2sb_sr4_bicubic.py:tiny",
         f"--workdir={workdir}", "--config.teacher.steps=10", "--config.distill.rounds=2"]
  env = dict(os.environ, PYTHONPATH=REPO)
  subprocess.run(cmd, check=True, cwd=REPO, env=env, timeout=900)
  first = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  subprocess.run(cmd + ["--config.mode=eval"], check=True, cwd=REPO, env=env, timeout=900)
  again = json.load(open(os.path.join(workdir, "eval", "metrics.json")))
  for g in ("teacher", "student"):
    assert first[g].keys() == again[g].keys() == {"1", "2"}
    for k in first[g]:
      for m in ("psnr", "ssim", "swd", "fd_pixel", "kid_pixel"):
        assert again[g][k][m] == pytest.approx(first[g][k][m], rel=1e-5), (g, k, m)
