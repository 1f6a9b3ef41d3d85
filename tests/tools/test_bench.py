"""Benchmark suite (bench/) and the performance knobs it drives: analytic FLOPs against XLA's cost
analysis on CPU, smoke runs of every bench script with their JSON checked for sane values,
per-block remat policies of the UNet, and the persistent compilation cache."""
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import common, flops, ibmd_round, matmul_peak, sampling
from ibmd_jax import compile_cache
from ibmd_jax import run as runner
from ibmd_jax.models.unet import PRESET_IN_CHANNELS, PRESETS, UNet, remat_policy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


# ---------------------------------------------------------------------- analytic FLOPs vs XLA
@pytest.mark.parametrize("name", ["tiny", "ddbm_e2h64",
                                  pytest.param("i2sb_imagenet256", marks=pytest.mark.slow)])
def test_forward_flops_match_xla_cost_analysis(name):
  """XLA on CPU counts convolutions (2 FLOPs per multiply-add, padding taps left out) and every
  elementwise op; the analytic walk of the UNet with the padding taps left out must agree with it,
  and the model count (all taps) must sit above it by the padding share only."""
  if name == "tiny":
    cfg, size, cin = flops.TINY_CHECK, 16, 6
  else:
    cfg, size, cin = PRESETS[name], PRESETS[name]["image_size"], PRESET_IN_CHANNELS[name]
  chk = flops.check_against_xla(cfg, size, cin, batch=1)
  assert abs(chk["xla_over_total_exact_padding"] - 1) < 0.01, chk
  assert abs(chk["xla_over_model_exact_padding"] - 1) < 0.03, chk
  # Padding taps: 4 of 9 taps on each border ring are zero padding; at 64² and above < 5%.
  if size >= 64:
    assert 0.95 < chk["xla_over_model"] < 1.0, chk


def test_i2sb256_forward_is_the_issues_2_22_tflop():
  fwd = flops.unet_forward_flops(PRESETS["i2sb_imagenet256"], 256, 3)
  assert abs(fwd["model"] / 2.22e12 - 1) < 0.02
  rnd = flops.ibmd_round_flops(PRESETS["i2sb_imagenet256"], 256, 3, 6, critic_steps=5)
  assert round(rnd["forward_equivalents"]) == 27  # "about 27 forward-equivalents"


def test_round_flops_structure():
  """Per generator image: L critic steps of 4 forwards, a generator step of 7, plus 2 extra
  attention cores (input-only backward of teacher and critic): (4L+7)·W + (4L+9)·A when the
  generator has the teacher's input width. Remat recomputes in L + 3 backwards."""
  cfg = dict(flops.TINY_CHECK)
  f = flops.unet_forward_flops(cfg, 16, 6)
  w, a = f["weights"], f["attention"]
  for L in (1, 5):
    r = flops.ibmd_round_flops(cfg, 16, 6, 6, critic_steps=L, batch=3)
    assert r["model_flops_per_gen_image"] == pytest.approx((4 * L + 7) * w + (4 * L + 9) * a)
    assert r["model_flops_per_round"] == pytest.approx(3 * r["model_flops_per_gen_image"])
    assert r["hardware_flops_per_round"] == r["model_flops_per_round"]
    full = flops.ibmd_round_flops(cfg, 16, 6, 6, critic_steps=L, remat="full")
    assert full["hardware_flops_per_gen_image"] - full["model_flops_per_gen_image"] == \
        pytest.approx((L + 3) * f["remat_full"])
    net = flops.ibmd_round_flops(cfg, 16, 6, 6, critic_steps=L, remat="net:nothing_saveable")
    assert net["hardware_flops_per_gen_image"] - net["model_flops_per_gen_image"] == \
        pytest.approx((L + 3) * (w + a))
    dots = flops.ibmd_round_flops(cfg, 16, 6, 6, critic_steps=L, remat="dots_saveable")
    assert dots["hardware_flops_per_gen_image"] == dots["model_flops_per_gen_image"]
  assert flops.ibmd_round_flops(cfg, 16, 6, 6, 5)["forward_equivalents_simple"] == 27
  with pytest.raises(ValueError, match="no FLOP model"):
    flops.ibmd_round_flops(cfg, 16, 6, 6, remat="bogus")


# ---------------------------------------------------------------------- bench scripts, CPU smoke
def _load(path):
  with open(path) as f:
    return json.load(f)


@pytest.mark.slow  # a benchmark script end to end (~30-60 s on 2 cores)
def test_round_bench_separate_mid_agrees_with_xla(tmp_path):
  """One IBMD round of the 'mid' UNet (ADM widths): timings sane, and XLA's count of the very
  critic_step and generator_step programs equals the analytic round count within 3%."""
  out = str(tmp_path / "round.json")
  ibmd_round.main(["--preset", "mid", "--separate", "--batch", "2", "--critic_steps", "1",
                   "--steps", "2", "--warmup", "1", "--dtype", "f32", "--xla_cost", "on",
                   "--peak_tflops", "0.5", "--out", out])
  d = _load(out)
  r = d["results"][0]
  assert r["status"] == "ok" and r["finite"]
  assert r["lower_s"] > 0 and r["compile_s"] > 0 and r["round_s"] > 0
  assert r["round"]["count"] == 2 and r["round"]["min_s"] <= r["round_s"] <= r["round"]["max_s"]
  assert r["gen_images_per_s"] == pytest.approx(2 / r["round_s"])
  assert r["critic_images_per_s"] == pytest.approx(1 * 2 / r["round_s"])
  assert r["mfu"] == pytest.approx(r["model_flops_per_round"] / r["round_s"] / 0.5e12)
  assert r["model_flops_per_round"] == pytest.approx(
      2 * d["flops_per_gen_image"]["model_flops_per_gen_image"])
  assert r["peak_bytes"] > d["params_teacher"] * 4  # at least the float32 teacher
  assert abs(r["xla_over_hardware_flops_exact_padding"] - 1) < 0.03, r
  assert d["params_generator"] > d["params_teacher"]  # z input channels
  md = open(str(tmp_path / "round.md")).read()
  assert "| mid | 2 | f32 | none |" in md


@pytest.mark.slow
def test_round_bench_fused_sweep_remat(tmp_path):
  """Fused round (one jit, lax.scan over the critic steps) at two batch sizes, per-block remat:
  one row per batch, ascending, hardware FLOPs above model FLOPs by the recomputed forwards."""
  out = str(tmp_path / "sweep.json")
  ibmd_round.main(["--preset", "micro", "--sweep_batch", "2,1", "--critic_steps", "2",
                   "--steps", "2", "--warmup", "1", "--dtype", "f32", "--remat", "full",
                   "--xla_cost", "off", "--out", out])
  d = _load(out)
  assert [r["batch"] for r in d["results"]] == [1, 2]
  fl = d["flops_per_gen_image"]
  cfg = {k: v for k, v in common.MICRO_UNET.items() if k != "image_size"}
  t_in, g_in = 6, 9  # x and xT; + 3 z channels
  recompute = (2 + 2) * flops.unet_forward_flops(cfg, 8, t_in)["remat_full"] + \
      flops.unet_forward_flops(cfg, 8, g_in)["remat_full"]
  assert fl["hardware_flops_per_gen_image"] == pytest.approx(
      fl["model_flops_per_gen_image"] + recompute, rel=1e-9)
  for r in d["results"]:
    assert r["status"] == "ok" and r["finite"]
    assert r["gen_images_per_s"] == pytest.approx(r["batch"] / r["round_s"])
    assert r["critic_images_per_s"] == pytest.approx(2 * r["batch"] / r["round_s"])
    assert r["hfu"] > r["mfu"] > 0
    assert r["memory_analysis"]["alias_size_in_bytes"] > 0  # the state is donated
  assert d["peak"]["source"] == "measured" and d["peak"]["tflops"] > 0


def test_round_bench_rejects_bad_remat():
  with pytest.raises(ValueError, match="--remat must be one of"):
    ibmd_round.main(["--preset", "micro", "--remat", "dots", "--peak_tflops", "1"])


@pytest.mark.slow  # a benchmark script end to end (~30-60 s on 2 cores)
def test_sampling_bench(tmp_path):
  out = str(tmp_path / "sampling.json")
  sampling.main(["--preset", "micro", "--batch", "2", "--teacher_nfe", "3,1",
                 "--student_steps", "1,2", "--repeats", "2", "--dtype", "f32", "--out", out])
  d = _load(out)
  assert set(d["teacher"]) == {"1", "3"} and set(d["student"]) == {"1", "2"}
  for r in list(d["teacher"].values()) + list(d["student"].values()):
    assert r["status"] == "ok" and r["finite"] and r["out_shape"] == [2, 8, 8, 3]
    assert r["s_per_call"] > 0 and r["device_s_per_call"] > 0 and r["compile_s"] > 0
    assert r["images_per_s"] == pytest.approx(2 / r["s_per_call"])
    assert r["ms_per_image"] == pytest.approx(1e3 * r["s_per_call"] / 2)
  t1, t3 = d["teacher"]["1"]["s_per_call"], d["teacher"]["3"]["s_per_call"]
  # Two points: the linear fit goes through both; NFE 1000 is extrapolated from them.
  assert d["reference"]["source"] == "extrapolated"
  assert d["reference"]["s_per_call"] == pytest.approx(t1 + (t3 - t1) / 2 * 999, rel=1e-6)
  for r in d["student"].values():
    assert r["speedup_vs_teacher_ref"] == pytest.approx(d["reference"]["s_per_call"]
                                                        / r["s_per_call"])
  assert d["teacher_forward_images_per_s"] == pytest.approx(2 / t1)
  assert "| IBMD student | 1 |" in open(str(tmp_path / "sampling.md")).read()


def test_matmul_peak_and_copy_bandwidth(tmp_path):
  r = common.measure_matmul_peak(128, "f32", chain=2, repeats=3)
  assert r["flops_per_run"] == 2 * 128 ** 3 * 2
  assert r["tflops"] == pytest.approx(r["flops_per_run"] / r["median_s"] / 1e12)
  assert r["best_tflops"] >= r["tflops"] > 0
  c = matmul_peak.measure_copy_bandwidth(2 ** 20, repeats=3)
  assert c["GBps"] == pytest.approx(2 * 2 ** 20 / c["median_s"] / 1e9)
  out = str(tmp_path / "mm.json")
  res = matmul_peak.main(["--sizes", "64,128", "--chain", "2", "--repeats", "2", "--out", out])
  assert [m["n"] for m in _load(out)["matmul"]] == [64, 128]
  assert res["peak_tflops"] == max(m["tflops"] for m in res["matmul"])


@pytest.mark.slow
def test_sharded_round_bench_agrees_with_one_device(tmp_path):
  from bench import sharded_round

  out = str(tmp_path / "sharded.json")
  r = sharded_round.main(["--preset", "micro", "--batch", "8", "--mesh", "4x2",
                          "--critic_steps", "1", "--out", out])
  assert r["agree"] and r["finite"], r["rel_err"]
  assert r["max_rel_err"] < 1e-4 and r["max_rel_err_update"] < 1e-3
  assert r["gen_leaves_sharded_over_mesh"] > 0  # FSDP really split some leaves
  assert _load(out)["mesh"] == {"data": 4, "fsdp": 2}


def test_sharded_round_bench_needs_devices():
  from bench import sharded_round

  with pytest.raises(SystemExit, match="needs 16 devices"):
    sharded_round.main(["--mesh", "8x2"])


# ---------------------------------------------------------------------- UNet remat policies
def _micro_unet(remat):
  cfg = {k: v for k, v in common.MICRO_UNET.items() if k != "image_size"}
  cfg["attention_resolutions"] = ()  # only the middle attention block: a quick compile
  return UNet(**cfg, remat=remat)


# 'full' (recomputes convolutions) in the default suite; 'dots_saveable' (recomputes none) is the
# same check against a third compile of the gradient (slow; the default suite: its 'full' case)
@pytest.mark.parametrize("policy", ["full", pytest.param("dots_saveable", marks=pytest.mark.slow)])
def test_unet_remat_policies_same_gradients_and_recompute(policy):
  """Every policy computes the same function and gradient as no remat. 'full' recomputes in each
  block's backward what it needs: XLA's compiled program holds more convolutions and more FLOPs,
  by the analytic remat count (bench/flops.py); 'dots_saveable' keeps convolution outputs, so no
  convolution is recomputed. (XLA on CPU reports the same temporary memory for all three; the
  memory effect is measured on GPU.)"""
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  t = jnp.array([0.3, 1.2])
  params = _micro_unet("none").init(jax.random.key(1), x, t)
  # Non-zero residual branches, so gradients reach every layer.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                        params)

  def loss_fn(remat):
    net = _micro_unet(remat)
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(net.apply(p, x, t) ** 2)))

  convs, cost, ref = {}, {}, None
  for remat in ("none", policy):
    compiled = loss_fn(remat).lower(params).compile()
    v, g = compiled(params)
    convs[remat] = len(re.findall(r"= \S+ convolution\(", compiled.as_text()))
    cost[remat] = common.xla_flops(compiled)
    if ref is None:
      ref = (v, g)
      # Some gradients are zero up to rounding (a conv bias right before a GroupNorm): compare
      # on the scale of the whole gradient.
      scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(g))
      continue
    np.testing.assert_allclose(v, ref[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref[1])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)
  if policy == "full":
    cfg = {k: v for k, v in common.MICRO_UNET.items() if k != "image_size"}
    cfg["attention_resolutions"] = ()
    fwd = flops.unet_forward_flops(cfg, 8, 3, exact_padding=True)
    extra = (cost["full"] - cost["none"]) / 2  # per image
    # XLA also counts the recomputed norms and activations (a few % at 32 channels).
    assert 1.0 < extra / fwd["remat_full"] < 1.08, (extra, fwd)
    assert fwd["remat_full"] < 0.7 * fwd["model"]
    assert convs["full"] > convs["none"], convs
  else:
    assert convs["none"] == convs["dots_saveable"], convs
    assert abs(cost["dots_saveable"] / cost["none"] - 1) < 0.02, cost
  assert remat_policy(True) == remat_policy("full") == (True, None)
  assert remat_policy(False) == remat_policy("none") == (False, None)
  assert remat_policy("dots_saveable") == (True, jax.checkpoint_policies.dots_saveable)


def test_unet_remat_rejects_unknown_policy():
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="dots_saveable"):
    _micro_unet("dots").init(jax.random.key(0), x, jnp.ones((1,)))


# ---------------------------------------------------------------------- compilation cache
def test_cache_resolve(tmp_path, monkeypatch):
  wd = str(tmp_path / "run")
  assert compile_cache.resolve("workdir", wd) == os.path.join(wd, "jax_cache")
  for off in ("off", "", "none", None):
    assert compile_cache.resolve(off, wd) is None
  monkeypatch.setenv("IBMD_JAX_CACHE", str(tmp_path / "u"))
  assert compile_cache.resolve("user", wd) == str(tmp_path / "u")
  assert compile_cache.resolve(str(tmp_path / "c"), wd) == str(tmp_path / "c")
  with pytest.raises(ValueError, match="needs a workdir"):
    compile_cache.resolve("workdir", None)
  assert compile_cache.enable(None) is None
  with pytest.raises(ValueError, match="min_compile_time_s"):
    compile_cache.enable(str(tmp_path / "c"), min_compile_time_s=-1)


_CACHE_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from ibmd_jax import compile_cache
    compile_cache.enable(sys.argv[1], min_compile_time_s=0.0, min_entry_size_bytes=-1)
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(axis=0) * 3.0)
    x = jnp.ones((64, 64))  # eager ops compile programs too: outside the counted block
    with compile_cache.CacheEvents() as ev:
      compiled = f.lower(x).compile()
    print(json.dumps({"hits": ev.hits, "writes": ev.misses, "value": float(compiled(x)[0])}))
""")


def test_persistent_cache_hit_in_second_process(tmp_path):
  cache = str(tmp_path / "cache")
  script = str(tmp_path / "c.py")
  with open(script, "w") as f:
    f.write(_CACHE_SCRIPT)
  runs = [json.loads(subprocess.run([sys.executable, script, cache], capture_output=True,
                                    text=True, env=_env(), check=True, timeout=300).stdout
                     .strip().splitlines()[-1]) for _ in range(2)]
  assert runs[0]["hits"] == 0 and runs[0]["writes"] == 1
  assert runs[1]["hits"] == 1 and runs[1]["writes"] == 0
  assert runs[0]["value"] == runs[1]["value"] == pytest.approx(64 * np.tanh(64.0) * 3.0)


@pytest.mark.slow
def test_round_bench_compile_only_cold_then_warm(tmp_path):
  """bench/ibmd_round.py --compile_only twice on one cache directory: a miss, then a hit."""
  cache, res = str(tmp_path / "cache"), []
  for i in range(2):
    out = str(tmp_path / f"c{i}.json")
    subprocess.run([sys.executable, "bench/ibmd_round.py", "--preset", "micro", "--batch", "1",
                    "--critic_steps", "1", "--dtype", "f32", "--compile_only", "--cache_dir",
                    cache, "--out", out], cwd=ROOT, env=_env(), check=True, timeout=600,
                   capture_output=True)
    res.append(_load(out)["results"][0])
  assert not res[0]["cache_hit"] and res[0]["cache_writes"] >= 1
  assert res[1]["cache_hit"] and res[1]["cache_writes"] == 0
  assert res[1]["compile_s"] < res[0]["compile_s"]


@pytest.mark.slow
def test_launcher_writes_the_compilation_cache(tmp_path):
  wd, cache = str(tmp_path / "run"), str(tmp_path / "cc")
  p = subprocess.run([sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py",
                      f"--workdir={wd}", f"--compilation_cache={cache}",
                      "--config.mode=teacher", "--config.teacher.steps=2"],
                     cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-2000:]
  assert f"compilation cache: {cache}" in p.stderr
  assert os.path.isdir(cache)


@pytest.mark.slow  # a bench script's replay of a launcher run (37 s of the suite)
def test_toy_trajectory_ends_at_the_launchers_student_distance(tmp_path):
  """bench/toy_trajectory.py replays the launcher's distillation: its last EMA distance is the
  launcher's student_1step_ed for the same config and seed."""
  from bench import toy_trajectory
  from configs import toy_cond


  c = toy_cond.get_config()
  c.seed = 3
  c.teacher.steps, c.teacher.batch_size, c.model.width = 40, 64, 32
  c.distill.rounds, c.distill.batch_size, c.distill.critic_steps = 6, 32, 2
  c.eval.teachers, c.eval.student_steps = (), (1,)
  c.eval.num_conditions, c.eval.samples_per_condition = 4, 40
  wd = str(tmp_path / "run")
  runner.run(c, wd)
  launcher = json.load(open(os.path.join(wd, "eval", "metrics.json")))["student"]["1"]
  rows = toy_trajectory.trajectory(c, os.path.join(wd, "teacher"), every=4, echo=False)
  assert [r["round"] for r in rows] == [4, 6]
  np.testing.assert_allclose(rows[-1]["ema_ed"], launcher["ed"], rtol=1e-3,
                             atol=1e-5)
  with pytest.raises(ValueError, match="conditional toy"):
    c.conditional = False
    toy_trajectory.trajectory(c, os.path.join(wd, "teacher"))
