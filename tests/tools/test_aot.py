"""Compile mode (tools/aot.py): the launcher's programs compiled for TPU slices by libtpu's
compile-only client on this CPU host. Skipped, with the command to install it, without libtpu."""
import contextlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests.test_image_tasks import load_config

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # parallel test workers each load it

try:
  import libtpu  # noqa: F401  pylint: disable=unused-import
  HAVE_LIBTPU = True
except ImportError:
  HAVE_LIBTPU = False

needs_libtpu = pytest.mark.skipif(not HAVE_LIBTPU, reason='libtpu is not installed: pip install '
                                  '-e ".[tpu]" (compile mode needs its compile-only client)')
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# In-process compiles (the tests share a persistent cache) must not write TPU entries that the
# compile-only client cannot read back: reading one warns, and here that is an error.
pytestmark = pytest.mark.filterwarnings("error:Error reading persistent compilation cache entry")


@contextlib.contextmanager
def no_persistent_cache():
  """The persistent compilation cache off (no reads, no writes) for in-process TPU compiles, as
  the launcher has it in compile mode, then back on for the rest of the session. JAX decides once
  per process whether it uses the cache: reset_cache() makes it decide again, both ways."""
  from jax.experimental.compilation_cache import compilation_cache as cc
  key = "jax_enable_compilation_cache"
  keep = getattr(jax.config, key)
  jax.config.update(key, False)
  cc.reset_cache()
  try:
    yield
  finally:
    jax.config.update(key, keep)
    cc.reset_cache()


def _config(topology, **kw):
  c = load_config("bench64", "inpaint,tiny")
  c.mode = "compile"
  c.aot.topology = topology
  c.aot.programs = ("teacher_step",)
  c.teacher.batch_size = 16
  c.update_from_flattened_dict(kw)
  return c


def _state_bytes_per_chip(abstract) -> int:
  """Bytes of one chip's shards of a planned state (ShapeDtypeStructs with NamedShardings)."""
  total = 0
  for x in jax.tree.leaves(abstract):
    shard = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * x.dtype.itemsize
  return total


@needs_libtpu
# v5e:4x4 with fsdp 2: a 4-host slice and a state split over fsdp in one compile; the others are
# the same checks on other slices (slow)
@pytest.mark.parametrize("topology,fsdp,hosts", [
    ("v5e:4x4", 2, 4),
    pytest.param("v5e:2x2", 2, 1, marks=pytest.mark.slow),
    pytest.param("v5e:4x4", 1, 4, marks=pytest.mark.slow)])
def test_teacher_step_compiles_for_a_slice_and_its_memory_adds_up(tmp_path, topology, fsdp,
                                                                  hosts):
  from ibmd_jax import programs, run
  from tools import aot
  from ibmd_jax.tasks import make_task
  # A compile-light UNet (the step, its state and its shardings are the point, not the network):
  # one level without level attention (~half the ops of the tiny UNet's two levels), 64 channels
  # so that its 3x3 kernels (36,864 weights) are big enough for fsdp to split.
  c = _config(topology, **{"mesh.fsdp": fsdp, "model.channel_mult": (1,),
                           "model.attention_resolutions": (), "model.model_channels": 64})
  devices = aot.topology_devices(topology)
  assert len({d.process_index for d in devices}) == hosts  # v5e:4x4 is a 4-host slice
  report = run.run(c, str(tmp_path), compile_fn=aot.run)["aot"]
  r = report["programs"]["teacher_step"]
  assert report["chips"] == len(devices) and report["mesh"] == {"data": len(devices) // fsdp,
                                                                "fsdp": fsdp}
  # The launcher's own step: programs.teacher_program's state, in its shardings, donated.
  from ibmd_jax import sharding as shd
  mesh = shd.mesh_from_config(c, devices)
  _, planned = programs.teacher_program(c, make_task(c), mesh)
  state = _state_bytes_per_chip(planned.abstract)
  batch = 16 // len(devices) * 2 * 16 * 16 * 3 * 4  # x0 and xT rows of this chip
  assert r["argument"] >= state + batch, (r, state)
  assert r["alias"] >= state * 0.99  # the state is donated: its outputs reuse its buffers
  assert r["total"] == r["argument"] + r["output"] - r["alias"] + r["temp"] + r["code"]
  assert r["fits"] and r["flops"] > 0 and r["roofline_s"] > 0
  on_disk = json.load(open(tmp_path / "aot.json"))
  assert on_disk["programs"]["teacher_step"]["total"] == r["total"]
  assert "| teacher_step |" in (tmp_path / "aot.md").read_text()
  if fsdp > 1:  # the big leaves are split over fsdp: a chip holds less than the whole state
    whole = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(planned.abstract))
    assert state < 0.75 * whole


@needs_libtpu
def test_an_oversized_batch_is_reported_as_not_fitting(tmp_path):
  """The launcher exits 1 naming the program and the shortfall; aot.json still records it. The
  toy MLP's teacher step (the quickest program to compile) at 4M rows per chip: its arguments fit,
  its activations (temporaries) do not."""
  env = dict(os.environ, PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  r = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py",
       f"--workdir={tmp_path}", "--config.mode=compile", "--config.aot.topology=v5e:2x2",
       "--config.aot.programs=('teacher_step',)", f"--config.teacher.batch_size={2**24}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 1, r.stderr[-2000:]
  # the fit is checked against the HBM libtpu lets a program use (15.75 of v5e's 16 GiB)
  assert "error: teacher_step needs" in r.stderr and "than the 15.75 GiB a v5e chip gives" in r.stderr
  rec = json.load(open(tmp_path / "aot.json"))["programs"]["teacher_step"]
  assert not rec["fits"] and rec["total"] > 16 * 2**30


def test_bad_topology_names_are_config_errors():
  from tools import aot
  from ibmd_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown chip 'v9x'"):
    aot.chip_of("v9x:2x2")
  if not HAVE_LIBTPU:
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tpu\]"'):
      aot.topology_devices("v5e:2x2")


# ------------------------------------------------------------------------------------ search
def _fake_compile(limit_bytes):
  """A stand-in for aot._search_one: memory grows with the per-chip batch, shrinks with fsdp and
  remat; remat costs FLOPs. Records the candidates compiled."""
  from tools import aot
  seen = []

  def one(config, devices, fsdp, remat, per_chip, program, chip, hbm, options=None):
    if options is None:
      seen.append((fsdp, remat, per_chip))
    else:  # aot.search_quick: XLA's quick compile, modelled as understating memory by 10 %
      assert options == aot.QUICK_XLA, options
      seen.append((fsdp, remat, per_chip, "quick"))
    total = int((4e9 / fsdp + per_chip * (1e9 if remat == "none" else 0.3e9))
                * (0.9 if options else 1.0))
    flops = per_chip * len(devices) * 1e12 * (1.3 if remat == "full" else 1.0) / len(devices)
    got = aot.Compiled(name=program, argument=total, output=0, alias=0, temp=0, code=0,
                       flops=flops, bytes_accessed=0.0, optimal_seconds=None,
                       collective=int(1e8 * (fsdp > 1)), compile_s=0.0,
                       images=per_chip * len(devices))
    return dict(fsdp=fsdp, remat=remat, per_chip=per_chip, **aot.dataclasses.asdict(got),
                total=total, fits=total <= limit_bytes, **aot.estimate(got, chip, len(devices)))
  return one, seen


def test_search_order_pruning_cache_and_budget(tmp_path, monkeypatch):
  """Smallest first; a (fsdp, remat) that failed at a batch is not tried larger; a later remat is
  skipped where an earlier one fits; the winner is the best estimated images/s, printed as the
  overrides; a budget stops it between compiles and a rerun compiles only what is left."""
  from tools import aot
  assert aot.candidate_order(4, (), ("none", "full"), (2, 1))[:3] == [
      (4, "none", 1), (4, "full", 1), (2, "none", 1)]
  monkeypatch.setattr(aot, "topology_devices", lambda t: list(range(4)))
  fake, seen = _fake_compile(limit_bytes=8e9)
  monkeypatch.setattr(aot, "_search_one", fake)
  c = load_config("bench64", "inpaint,tiny")
  c.aot.search, c.aot.topology = True, "v5e:2x2"
  c.aot.search_batches, c.aot.search_remat = (1, 2, 4, 8, 16), ("none", "full")
  report = aot.search(c, str(tmp_path))
  # fsdp=4 'none' holds 1e9 + b·1e9: fits up to b = 7 -> fails at 8 and is not tried at 16;
  # 'full' is compiled only where 'none' does not fit.
  assert (4, "none", 16) not in seen and (4, "full", 1) not in seen and (4, "full", 8) in seen
  assert (1, "none", 8) in seen and (1, "none", 16) not in seen  # 4e9 + 8e9 > 8e9
  assert (1, "full", 16) in seen and (1, "full", 4) not in seen
  best = report["best"]
  # The estimate is per-chip batch / compute time: every fitting choice ties except remat 'full'
  # (1.3x the FLOPs). Ties go to the smallest fsdp, then the largest batch.
  assert best["remat"] == "none" and best["fsdp"] == 1 and best["per_chip"] == 4, best
  assert best["overrides"][:2] == ["--config.mesh.data=4", "--config.mesh.fsdp=1"]
  assert best["overrides"][-1] == f"--config.distill.batch_size={best['per_chip'] * 4}"
  assert (tmp_path / "aot_search.md").read_text().count("\n| ") == len(report["candidates"]) + 1
  n = len(seen)
  # A rerun of the same config compiles nothing; a budget stops a fresh search between compiles.
  again = aot.search(c, str(tmp_path))
  assert len(seen) == n and again["best"]["name"] == best["name"] and again["compiled_now"] == 0
  c.aot.search_budget_s = 1e-9
  other = tmp_path / "cut"
  clock = iter(range(0, 10**6, 10))
  monkeypatch.setattr(aot.time, "time", lambda: float(next(clock)))
  cut = aot.search(c, str(other))
  assert not cut["complete"] and cut["compiled_now"] == 1
  c.aot.search_budget_s = 0.0
  rest = aot.search(c, str(other))
  assert rest["complete"] and rest["compiled_now"] == n - 1
  assert rest["best"]["name"] == best["name"]


def test_a_quick_search_confirms_its_winner_at_xlas_default_effort(tmp_path, monkeypatch):
  """search_quick: every candidate compiled quickly; then the fitting ones at the default effort,
  best first, until one fits. The quick compile understates memory (modelled: 10 %), so its
  winner (8 per chip) does not fit at the default and the next (6) is the answer."""
  from tools import aot
  monkeypatch.setattr(aot, "topology_devices", lambda t: list(range(4)))
  fake, seen = _fake_compile(limit_bytes=8.2e9)  # fsdp=4, 'none': (1 + b)·1e9, quick 0.9x that
  monkeypatch.setattr(aot, "_search_one", fake)
  c = load_config("bench64", "inpaint,tiny")
  c.aot.search, c.aot.topology, c.aot.search_quick = True, "v5e:2x2", True
  c.aot.search_batches, c.aot.search_remat, c.aot.search_fsdp = (2, 4, 6, 8), ("none",), (4,)
  report = aot.search(c, str(tmp_path))
  assert seen == [(4, "none", b, "quick") for b in (2, 4, 6, 8)] + [(4, "none", 8), (4, "none", 6)]
  best = report["best"]
  assert not best["quick"] and best["per_chip"] == 6 and best["name"] == "fsdp=4,remat=none,per_chip=6"
  assert best["total"] == 7e9 and best["overrides"][-1] == "--config.distill.batch_size=24"
  assert not report["candidates"]["fsdp=4,remat=none,per_chip=8"]["fits"]
  assert report["candidates"]["quick:fsdp=4,remat=none,per_chip=8"]["fits"]
  md = (tmp_path / "aot_search.md").read_text()
  assert md.count("quick (-1)") == 4 and md.count("| default |") == 2
  assert "confirmed at XLA's default effort" in md
  # A rerun compiles nothing; without search_quick only the default compiles count as results.
  n = len(seen)
  assert aot.search(c, str(tmp_path))["compiled_now"] == 0 and len(seen) == n
  c.aot.search_quick = False
  plain = aot.search(c, str(tmp_path))
  assert plain["best"]["name"] == "fsdp=4,remat=none,per_chip=6"
  assert [s for s in seen[n:]] == [(4, "none", 2), (4, "none", 4)]  # 6 and 8 were cached
  # When nothing that fitted quickly fits at the default, the error says so.
  fake2, _ = _fake_compile(limit_bytes=2.9e9)  # quick: 0.9·3e9 fits at 2; default 3e9 does not
  monkeypatch.setattr(aot, "_search_one", fake2)
  c.aot.search_quick, c.aot.search_batches = True, (2,)
  with pytest.raises(aot.DoesNotFit, match="none that fitted quickly fitted at XLA's default"):
    aot.search(c, str(tmp_path / "none"))


def test_search_refuses_bad_settings(tmp_path, monkeypatch):
  from tools import aot
  from ibmd_jax.errors import ConfigError
  monkeypatch.setattr(aot, "topology_devices", lambda t: list(range(4)))
  c = load_config("bench64", "inpaint,tiny")
  c.aot.search = True
  for key, value, match in (("search_program", "nope", "search_program"),
                            ("search_remat", ("sometimes",), "unknown"),
                            ("search_fsdp", (3,), "do not divide"),
                            ("search_batches", (0,), "per-chip batch")):
    d = c.copy_and_resolve_references()
    d.aot[key] = value
    with pytest.raises(ConfigError, match=match):
      aot.search(d, str(tmp_path))


@needs_libtpu
def test_search_from_the_launcher_compiles_and_prints_the_overrides(tmp_path):
  """The real compiler: the toy config's round for v5e:2x2, two meshes x one batch (one residual
  block and one critic step: less to compile; its 128 x 128 kernels are still big enough to be
  split over fsdp)."""
  env = dict(os.environ, PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  r = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py",
       f"--workdir={tmp_path}", "--config.mode=compile", "--config.aot.topology=v5e:2x2",
       "--config.model.depth=1", "--config.distill.critic_steps=1",
       "--config.aot.search=True", "--config.aot.search_batches=(2,)",
       "--config.aot.search_fsdp=(1,4)"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(tmp_path / "aot_search.json"))
  assert set(rep["candidates"]) == {"fsdp=1,remat=none,per_chip=2", "fsdp=4,remat=none,per_chip=2"}
  for cand in rep["candidates"].values():
    assert cand["fits"] and cand["flops"] > 0 and cand["argument"] > 0
  # fsdp=4 splits the state: its chips hold less and its collectives move more.
  one, four = (rep["candidates"][f"fsdp={f},remat=none,per_chip=2"] for f in (1, 4))
  assert four["argument"] < one["argument"] and four["collective"] > one["collective"]
  assert " ".join(rep["best"]["overrides"]) in r.stdout
  assert "--config.distill.batch_size=8" in rep["best"]["overrides"]
  # No persistent cache in compile mode: the compile-only client cannot load its own entries.
  assert "compilation cache: off" in r.stderr and not (tmp_path / "jax_cache").exists()


@needs_libtpu
@pytest.mark.slow  # the default suite: test_a_quick_search_confirms_its_winner_at_xlas_default_effort
def test_a_quick_search_from_the_launcher_reaches_xla_and_reports_the_default_compile(tmp_path):
  """search_quick with the real compiler (toy round, v5e:2x2, one candidate): the quick compile is
  a different program (fewer instructions: XLA took the option) and the winner is the default."""
  env = dict(os.environ, PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  r = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/toy_cond.py",
       f"--workdir={tmp_path}", "--config.mode=compile", "--config.aot.topology=v5e:2x2",
       "--config.aot.search=True", "--config.aot.search_batches=(2,)",
       "--config.aot.search_fsdp=(1,)", "--config.aot.search_quick=True"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
  assert r.returncode == 0, r.stderr[-3000:]
  rep = json.load(open(tmp_path / "aot_search.json"))
  quick, default = (rep["candidates"][p + "fsdp=1,remat=none,per_chip=2"] for p in ("quick:", ""))
  assert quick["quick"] and not default["quick"] and rep["quick"]
  assert 0 < quick["hlo_instructions"] < default["hlo_instructions"], (quick, default)
  assert rep["best"]["name"] == "fsdp=1,remat=none,per_chip=2"
  assert rep["best"]["total"] == default["total"] and not rep["best"]["quick"]


@needs_libtpu
@pytest.mark.slow  # two TPU compiles of the round (30 s of the suite)
def test_a_bfloat16_frozen_teacher_shrinks_the_rounds_arguments_by_half_the_teacher(tmp_path):
  """distill.teacher_dtype=bfloat16 in the compiled round: a chip's arguments drop by half the
  teacher's bytes on that chip, up to TPU tile padding (toy network, v5e:2x2, replicated)."""
  from ibmd_jax import programs
  from tools import aot
  from ibmd_jax import sharding as shd
  from ibmd_jax.tasks import make_task
  args = {}
  for dtype in ("float32", "bfloat16"):
    from configs import toy_cond
    c = toy_cond.get_config()
    c.mode, c.aot.topology, c.aot.programs = "compile", "v5e:2x2", ("round",)
    c.distill.batch_size, c.distill.teacher_dtype = 8, dtype
    rep = aot.run(c, str(tmp_path / dtype))
    args[dtype] = rep["programs"]["round"]["argument"]
  mesh = shd.mesh_from_config(c, aot.topology_devices("v5e:2x2"))
  teacher = programs.teacher_abstract(make_task(c), mesh)
  teacher_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(teacher))
  # TPU layouts pad small arrays to tiles, differently for bf16: measured 247,296 bytes saved of
  # the 251,652 that half the teacher's unpadded bytes make.
  saved = args["float32"] - args["bfloat16"]
  assert abs(saved - teacher_bytes / 2) < 0.05 * teacher_bytes / 2, (args, teacher_bytes)


@needs_libtpu
def test_a_state_bigger_than_the_chip_is_refused_before_compiling(tmp_path):
  """Arguments that alone exceed HBM (from their shapes and shardings) are reported without
  spending minutes in XLA, and the bytes reported are at least the planned state's per chip."""
  from ibmd_jax import run
  from tools import aot
  from tools.aot import DoesNotFit
  c = _config("v5e:2x2", **{"model.model_channels": 2048})  # 3.4 G parameters: 50 GiB of state
  with pytest.raises(DoesNotFit, match=r"teacher_step needs .* \(its arguments alone"):
    run.run(c, str(tmp_path), compile_fn=aot.run)
  rec = json.load(open(tmp_path / "aot.json"))["programs"]["teacher_step"]
  assert not rec["fits"] and "compile_s" not in rec and rec["argument"] > 16 * 2**30
  from ibmd_jax import programs, sharding as shd
  from ibmd_jax.tasks import make_task
  mesh = shd.mesh_from_config(c, aot.topology_devices("v5e:2x2"))
  _, planned = programs.teacher_program(c, make_task(c), mesh)
  assert rec["argument"] >= _state_bytes_per_chip(planned.abstract)


def test_pass_times_and_the_table_are_read_from_what_xla_and_the_queue_wrote(tmp_path):
  """aot.pass_times nests pipelines (a pass's own time excludes the passes inside it) and reads
  the phases off the dump's files; bench/tpu_table.py's report is built from the aot.json files
  the queue wrote (and says which entries are not compiled yet or failed)."""
  from tools import aot
  from bench import tpu_table
  d = tmp_path / "dump"
  d.mkdir()
  (d / "module_0001.metadata.textproto").write_text(
      'pass_metadata {\n  pass_id: 1\n  pass_name: "outer"\n  pipeline_name: "p"\n'
      '  start_timestamp_usec: 1000000\n  end_timestamp_usec: 5000000\n}\n'
      'pass_metadata {\n  pass_id: 2\n  pass_name: "inner"\n  pipeline_name: "q"\n'
      '  module_changed: true\n  start_timestamp_usec: 2000000\n  end_timestamp_usec: 3000000\n}\n'
      'pass_metadata {\n  pass_id: 3\n  pass_name: "after"\n  pipeline_name: "p"\n'
      '  start_timestamp_usec: 6000000\n  end_timestamp_usec: 6500000\n}\n')
  for i, tag in enumerate(("before_optimizations", "after_optimizations_before_buffer_assignment",
                           "after_optimizations_after_buffer_assignment", "after_codegen")):
    f = d / f"module_0003.x.{tag}.txt"
    f.write_text("")
    os.utime(f, (100 + 10 * i ** 2, 100 + 10 * i ** 2))
  pt = aot.pass_times(str(d), compile_s=10.0)
  assert pt["slowest"] == {"p/outer": 3.0, "q/inner": 1.0, "p/after": 0.5}
  assert pt["hlo_passes_s"] == pytest.approx(4.5) and pt["rest_s"] == pytest.approx(5.5)
  assert pt["phases_s"] == {"hlo_optimisation": 10.0, "buffer_assignment": 30.0,
                            "backend_codegen": 50.0}
  root = tmp_path / "aot"
  (root / "i2sb_v5e4").mkdir(parents=True)
  gib = 2**30
  (root / "i2sb_v5e4" / "aot.json").write_text(json.dumps({
      "chip": "v5e", "chips": 4, "mesh": {"data": 1, "fsdp": 4}, "programs": {"round": {
          "total": 14 * gib, "hbm": 16 * gib, "fits": True, "flops": 3e13, "roofline_s": 0.5,
          "bytes_accessed": 4e11, "collective": 1e9, "images": 16,
          "bound": "compute", "images_per_s_per_chip": 8.0, "compile_s": 3000.0}}}))
  (root / "i2sb_v5p64").mkdir()
  (root / "i2sb_v5p64" / "failed.json").write_text(json.dumps(
      {"rc": -9, "wall_s": 10.0, "host_max_rss_gib": 23.9}))
  (root / "e2h_v5e16").mkdir()
  (root / "e2h_v5e16" / "aot.json").write_text(json.dumps({
      "chip": "v5e", "chips": 16, "mesh": {"data": 4, "fsdp": 4}, "programs": {"round": {
          "total": 15 * gib, "hbm": 16 * gib, "fits": True, "flops": 2e13, "roofline_s": 0.25,
          "bytes_accessed": 3e11, "collective": 2e9, "images": 128,
          "bound": "memory", "images_per_s_per_chip": 32.0, "compile_s": 1001.0,
          "parts_s": [400.2, 590.4], "threads": 1}}}))
  (root / "e2h_v5e16" / "host.json").write_text(json.dumps(
      {"rc": 0, "wall_s": 1010.0, "host_max_rss_gib": 20.5, "host_peak_rss_swap_gib": 31.25}))
  text = tpu_table.report(str(root))
  # three significant digits, trailing zeros kept; memory against v5e's usable 15.75 GiB; the
  # round's XLA FLOPs (loop bodies once) and per round (I2SB: five critic steps, x2.375 by the
  # FLOP model); the roofline of the round (HBM: 4e11 B x 2.375 / 819 GB/s = 1.16 s), and the
  # first published estimate (the record's own, 8.00) beside it
  assert ("| i2sb_sr4_bicubic.py | v5e:2x2 | 1×4 | 4 | 14.00 (15.75) | 1.75 | yes | 30.0 → 71.3 |"
          ) in text, text
  assert "| 1.16 (memory) | 3.45 | 8.00 | 3000 |" in text, text
  # a split round compiled one program after the other, the host's peak with swap (E→H: x2.439;
  # HBM: 3e11 B x 2.439 / 819 GB/s = 0.893 s -> 8 per chip / 0.893 s = 8.95 images/s)
  assert ("| ddbm_e2h64.py | v5e:4x4 | 4×4 | 8 | 15.00 (15.75) | 0.75 | yes | 20.0 → 48.8 |"
          ) in text, text
  assert "| 0.893 (memory) | 8.95 | 32.0 | 1001 (400 + 590) | 31.2 (RSS max 20.5) |" in text, text
  assert "failed (rc -9, host RSS 23.9 GiB)" in text and "not compiled yet" in text
  # the pod command: the teacher and data in the bucket, every compiled choice, the mode
  assert ("launch/tpu_pod.sh configs/i2sb_sr4_bicubic.py "
          "'--config.teacher.checkpoint=gs://<bucket>/teachers/i2sb_sr4_bicubic/teacher' "
          "'--config.data.tfds_data_dir=gs://<bucket>/tfds' --config.mesh.fsdp=4 "
          "--config.distill.batch_size=16 --config.model.remat=full "
          "--config.distill.teacher_dtype=bfloat16 --config.distill.microbatches=1 "
          "--config.distill.split_round=False --config.mode=distill") in text, text


@needs_libtpu
@pytest.mark.slow  # the default suite compiles split rounds in test_the_round_estimate_counts_every_critic_step
def test_a_split_round_compiles_as_two_programs_and_reports_the_larger_one(tmp_path, capsys):
  """distill.split_round=True in compile mode (toy round, v5e:2x2): the critic program and the
  generator program are compiled; the round's arguments / temporaries are one program's, its code
  both programs', its FLOPs the sum — more than the fused round's generator share alone."""
  from tools import aot
  from configs import toy_cond
  reps = {}
  for split in (False, True):
    c = toy_cond.get_config()
    c.mode, c.aot.topology, c.aot.programs = "compile", "v5e:2x2", ("round",)
    c.distill.batch_size, c.distill.split_round = 8, split
    c.aot.compile_threads = 1  # the split round's programs one after the other
    reps[split] = aot.run(c, str(tmp_path / str(split)))["programs"]["round"]
  fused, split = reps[False], reps[True]
  assert split["fits"] and split["total"] > 0
  # One after the other: each program's own compile time, and together within the whole (which
  # also holds the lowering).
  assert not fused["parts_s"] and split["threads"] == 1 and len(split["parts_s"]) == 2
  assert min(split["parts_s"]) > 0 and sum(split["parts_s"]) <= split["compile_s"], split
  assert "one after the other" in (tmp_path / "True" / "aot.md").read_text()
  # Each program is reported as it is compiled (a full-size one takes tens of minutes).
  out = capsys.readouterr().out
  assert out.index("round: critic program compiled in") < out.index(
      "round: generator program compiled in"), out
  # Same state in and out: the arguments (state, teacher, batches) of the generator program,
  # the larger one, are the fused round's up to the critic metrics it takes.
  assert abs(split["argument"] - fused["argument"]) < 0.02 * fused["argument"]
  # Same work: the two programs' FLOPs add up to the fused round's within 5 %.
  assert abs(split["flops"] - fused["flops"]) < 0.05 * fused["flops"], (split, fused)
  assert split["code"] > 0


def test_a_bad_compile_threads_is_one_clear_error(tmp_path):
  """aot.compile_threads outside 0 / 1 / 2 is refused before anything is compiled (no libtpu
  needed), naming the key and its choices."""
  from tools import aot
  from ibmd_jax.errors import ConfigError
  c = _config("v5e:2x2")
  c.aot.compile_threads = 3
  with pytest.raises(ConfigError, match=r"aot.compile_threads=3: 1 compiles .* 2 at once"):
    aot.run(c, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_collective_bytes_and_their_breakdown_read_off_hlo_text():
  """aot.collective_bytes: a synchronous op counts its result; an async '-start' tuple (operand,
  result) its larger member; a combined all-reduce's tuple whole. bench/collectives_by_chip also
  counts instructions against distinct channels: the same gather twice is 2 instructions, 1 channel."""
  from bench.collectives_by_chip import breakdown
  from tools import aot
  hlo = "\n".join([
      "  %all-gather.1 = bf16[3,3,32,64]{2,3,1,0} all-gather(%p.1), channel_id=820, dims={3}",
      "  %all-gather.2 = bf16[3,3,32,64]{2,3,1,0:T(8,128)} all-gather(%p.2), channel_id=820, x=1",
      "  %ags = (f32[16,128]{1,0}, f32[64,128]{1,0}) all-gather-start(%p.3), channel_id=7, y=2",
      "  %ar = (f32[10]{0}, bf16[4,4]{1,0}) all-reduce(%a, %b), channel_id=9, to_apply=%add",
      "  %add.1 = f32[10]{0} add(%a, %b)",
  ])
  got = aot.collective_bytes(hlo)
  assert got == {"all-gather": 2 * 3 * 3 * 32 * 64 * 2 + 64 * 128 * 4, "all-reduce": 40 + 32}
  b = breakdown(hlo)
  assert b["all-gather"] == {"bytes": got["all-gather"], "instructions": 3, "channels": 2}
  assert b["all-reduce"] == {"bytes": 72, "instructions": 1, "channels": 1}


@needs_libtpu
@pytest.mark.slow  # a bench script's two TPU compiles; its unknown-key error: test_compile_time_bench_refuses_unknown_keys
def test_compile_time_bench_compares_variants_and_passes_xla_options(tmp_path):
  """bench/compile_time.py: config overrides and ``xla.`` compiler options per variant; XLA's
  lowest effort is a smaller program; an unknown key is refused by name."""
  from bench import compile_time
  with pytest.raises(SystemExit, match="no such config key"):
    compile_time.apply(compile_time.load("configs/toy_cond.py"), "distill.not_a_key=1", {})
  out = tmp_path / "ct.json"
  compile_time.main(["--config=configs/toy_cond.py", "--topology=v5e:2x2", "--program=round",
                     "--variant=base:distill.batch_size=8",
                     "--variant=quick:distill.batch_size=8,xla.exec_time_optimization_effort=-1",
                     f"--out={out}"])
  v = json.load(open(out))["variants"]
  assert 0 < v["quick"]["hlo_instructions"] < v["base"]["hlo_instructions"], v
  for r in v.values():
    assert r["gib_per_chip"] > 0 and r["tflop_per_chip"] > 0 and r["compile_s"] > 0
  assert (tmp_path / "ct.md").read_text().count("\n| ") == 2  # one row per variant


def test_the_old_import_path_names_the_new_one():
  """ibmd_jax.aot moved to tools.aot (issue 33): importing the old path says where it went."""
  with pytest.raises(ImportError, match=r"ibmd_jax\.aot moved to tools\.aot"):
    import ibmd_jax.aot  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel


def test_compile_mode_without_the_launchers_driver_names_it(tmp_path):
  """run.run has no compile driver of its own (the package does not import tools/): called in
  compile mode without one it is a one-line ConfigError naming the launcher and tools.aot.run,
  before any compile."""
  from ibmd_jax import run
  from ibmd_jax.errors import ConfigError
  with pytest.raises(ConfigError, match=r"launch\.main .*--config\.mode=compile.*tools\.aot\.run"):
    run.run(_config("v5e:2x2"), str(tmp_path))
  assert not (tmp_path / "aot.json").exists()


def test_a_search_over_teacher_dtype_and_microbatches_prints_the_complete_pod_command(
    tmp_path, monkeypatch):
  """aot.search_teacher_dtype / aot.search_microbatches: a level is compiled at a (mesh, batch)
  only where the earlier ones do not fit; the winner's overrides carry it, and the pod command
  carries the user's own overrides, every choice that decides the program, and the mode that
  runs it (not compile mode's settings)."""
  import sys  # pylint: disable=g-import-not-at-top
  from tools import aot
  monkeypatch.setattr(aot, "topology_devices", lambda t: list(range(4)))
  seen = []

  def one(config, devices, fsdp, remat, per_chip, program, chip, hbm, options=None):
    seen.append((per_chip, remat))
    _, extra = aot.split_variant(remat)
    bf16 = extra["distill.teacher_dtype"] == "bfloat16"
    total = int(2.5e9 + per_chip * 1e9 / extra["distill.microbatches"] - 1e9 * bf16)
    got = aot.Compiled(name=program, argument=total, output=0, alias=0, temp=0, code=0,
                       flops=(per_chip + 1) * 1e12, bytes_accessed=0.0, optimal_seconds=None,
                       collective=0, compile_s=0.0, images=per_chip * len(devices))
    return dict(fsdp=fsdp, remat=remat, per_chip=per_chip, **aot.dataclasses.asdict(got),
                total=total, fits=total <= 4e9, **aot.estimate(got, chip, len(devices)))

  monkeypatch.setattr(aot, "_search_one", one)
  monkeypatch.setattr(sys, "argv", [
      "launch/main.py", "--config=configs/bench64.py:inpaint,tiny", "--workdir=plans/x",
      "--config.mode=compile", "--config.aot.search=True", "--config.aot.topology=v5e:2x2",
      "--config.distill.rounds=77", "--config.mesh.fsdp=1"])
  c = load_config("bench64", "inpaint,tiny")
  c.aot.search, c.aot.topology = True, "v5e:2x2"
  c.aot.search_fsdp, c.aot.search_remat, c.aot.search_batches = (4,), ("full",), (2, 4)
  c.aot.search_teacher_dtype, c.aot.search_microbatches = ("float32", "bfloat16"), (1, 2)
  report = aot.search(c, str(tmp_path))
  lv = lambda td, mb: f"full,teacher_dtype={td},microbatches={mb}"
  # per chip 2: float32 with 2 microbatches fits, so bfloat16 is never compiled there; at 4,
  # float32 with 1 microbatch is not tried (it failed at 2) and bfloat16 is needed
  assert seen == [(2, lv("float32", 1)), (2, lv("float32", 2)), (4, lv("float32", 2)),
                  (4, lv("bfloat16", 1)), (4, lv("bfloat16", 2))], seen
  best = report["best"]
  assert best["per_chip"] == 4 and best["overrides"] == [
      "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.model.remat=full",
      "--config.distill.teacher_dtype=bfloat16", "--config.distill.microbatches=2",
      "--config.distill.batch_size=16"]
  pod = best["pod_command"].split()
  assert pod[pod.index("launch/tpu_pod.sh") + 1] == "configs/bench64.py:inpaint,tiny"
  assert "--config.distill.rounds=77" in pod and "--config.mesh.fsdp=1" not in pod
  assert "--config.distill.split_round=False" in pod and pod[-1] == "--config.mode=distill"
  assert not [w for w in pod if "aot." in w or w == "--config.mode=compile"]
  assert best["pod_command"] in (tmp_path / "aot_search.md").read_text()


@needs_libtpu
def test_the_round_estimate_counts_every_critic_step(tmp_path):
  """XLA counts the critic steps' scan body once, so a round with L = 5 and one with L = 1 have the
  same XLA FLOPs; the estimate counts the critic program L times (split round, from its own
  count), and the estimated round time grows as the round's FLOPs do. The fused round (one
  program) gets the same growth from the forward-unit model, checked here against the split
  programs' own counts."""
  # In-process with the persistent cache off, as the launcher has it in compile mode: the L = 1 and
  # L = 5 split rounds share their generator program, and a cache entry another test's compile
  # left for it would be one the compile-only client cannot read back.
  from tools import aot
  from configs import toy_cond
  reps = {}
  with no_persistent_cache():
    for split, steps in ((True, 1), (True, 5), (False, 5)):
      c = toy_cond.get_config()
      c.mode, c.aot.topology, c.aot.programs = "compile", "v5e:2x2", ("round",)
      c.distill.batch_size, c.distill.split_round, c.distill.critic_steps = 8, split, steps
      c.model.depth = 1  # one residual block: a third of the MLP's ops to compile, same counts
      c.aot.compile_threads = 1
      reps[split, steps] = aot.run(c, str(tmp_path / f"{split}{steps}"))["programs"]["round"]
  s1, s5, f5 = reps[True, 1], reps[True, 5], reps[False, 5]
  (c1, g1), (c5, g5) = ([p["flops"] for p in r["parts_cost"]] for r in (s1, s5))
  # XLA's counts: the critic program holds one critic step whatever L is (within 5 %: the scan's
  # bookkeeping differs; measured 1.81 against 1.78 MFLOP with the one-block MLP, 3.90 against
  # 3.80 with three blocks)
  assert c5 == pytest.approx(c1, rel=0.05) and s5["flops"] == pytest.approx(s1["flops"], rel=0.05)
  assert s5["flops_run"] == pytest.approx(5 * c5 + g5, rel=1e-9)
  assert s1["flops_run"] == pytest.approx(c1 + g1, rel=1e-9)
  flops_ratio = s5["flops_run"] / s1["flops_run"]
  assert flops_ratio > 2.2
  assert s5["roofline_s"] / s1["roofline_s"] == pytest.approx(flops_ratio, rel=0.1), (s1, s5)
  assert s5["images_per_s_per_chip"] < s1["images_per_s_per_chip"] / 2
  # fused: XLA's count is one critic step + the generator step; the estimate scales it by
  # (5 critic + generator) / (critic + generator) in forward units (critic 4, generator 7)
  assert f5["loop_factor"] == pytest.approx(27 / 11)
  # (one block: 27/11 = 2.45 against the split programs' 2.56)
  assert f5["flops_run"] / f5["flops"] == pytest.approx((5 * c1 + g1) / (c1 + g1), rel=0.1)
  assert "| round |" in (tmp_path / "False5" / "aot.md").read_text()


def test_compile_time_bench_refuses_unknown_keys():
  from bench import compile_time
  with pytest.raises(SystemExit, match="no such config key"):
    compile_time.apply(compile_time.load("configs/toy_cond.py"), "distill.not_a_key=1", {})
