"""Every loop counted as many times as it runs (tools/loops.py, tools/estimates.py): the FLOP model
against XLA's recorded counts, and estimates that scale with the critic steps."""
import json
import os

import pytest

from bench import tpu_table
from tools import estimates, loops

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_flop_model_with_loop_bodies_once_matches_every_recorded_xla_count():
  """XLA's FLOPs of each recorded round (one critic step, one pass of a generator chain) against
  the model's count of the same: 1.00-1.09 on all 14 rows. A model that counted what the round
  runs (L critic steps, DBIM's 4-step chain) would be 1.26-2.5x off."""
  ratios = {}
  for name in tpu_table.ENTRIES:
    rep = json.load(open(os.path.join(REPO, "docs/tpu_runs", name, "aot.json")))
    r = rep["programs"]["round"]
    acc = loops.round_loops(tpu_table._load_entry(name))  # what was compiled
    assert acc["source"].startswith("UNet")
    per_image = r["flops"] / (r["images"] / rep["chips"])
    ratios[name] = per_image / (acc["critic_xla"] + acc["gen_xla"])
  assert all(0.99 < v < 1.10 for v in ratios.values()), ratios
  # what the round runs: 2.4x XLA's count for five critic steps, 1.26x for DBIM (chain of 4)
  i2sb = loops.round_loops(tpu_table._load_entry("i2sb_v6e16"))
  dbim = loops.round_loops(tpu_table._load_entry("dbim_v6e16"))
  assert i2sb["factor"] == pytest.approx(2.375, abs=0.01)
  assert dbim["factor"] == pytest.approx(1.262, abs=0.01)


def test_round_estimates_scale_with_the_critic_steps_as_their_flops_do():
  """Same compiled program (XLA's count does not change with L), L = 5 against L = 1: the
  estimated round time grows exactly as the round's FLOPs, and for a split round the critic
  program is counted L times."""
  from configs import toy_cond
  chip = dict(bf16_tflops=197.0, hbm_gbps=819.0, ici_gbps_one_way=200.0)
  costs = {"flops": 1.0e13, "bytes_accessed": 2.0e11, "collective": 1.0e9}
  out = {}
  for steps in (1, 5):
    c = toy_cond.get_config()
    c.distill.critic_steps = steps
    acc = loops.round_loops(c)
    out[steps] = estimates.program_estimate(costs, chip, 4, 32, acc["factor"])
  flops_ratio = out[5]["flops_run"] / out[1]["flops_run"]
  assert flops_ratio == pytest.approx((5 * 4 + 7) / (4 + 7))  # forward units: critic 4, gen 7
  assert out[5]["roofline_s"] / out[1]["roofline_s"] == pytest.approx(flops_ratio)
  assert out[5]["images_per_s_per_chip"] < out[1]["images_per_s_per_chip"] / 2.4
  # split: per program, the critic's counted once by XLA and run L times
  critic = {"flops": 4e12, "bytes_accessed": 5e10, "collective": 1e8}
  gen = {"flops": 6e12, "bytes_accessed": 1.5e11, "collective": 9e8}
  total = {k: critic[k] + gen[k] for k in critic}
  s5 = estimates.program_estimate(total, chip, 4, 32, parts=[critic, gen], part_factors=[5, 1])
  s1 = estimates.program_estimate(total, chip, 4, 32, parts=[critic, gen], part_factors=[1, 1])
  assert s5["flops_run"] == pytest.approx(5 * 4e12 + 6e12)
  t_c = 5e10 / 819e9  # the critic program is memory-bound
  assert s5["roofline_s"] - s1["roofline_s"] == pytest.approx(4 * t_c)


def test_samplers_and_microbatches_count_their_loops():
  from configs import toy_cond
  c = toy_cond.get_config()
  assert loops.program_factor("teacher_sampler", c, 100) == 100
  c.teacher.microbatches = 4
  assert loops.program_factor("teacher_step", c) == 4
  base = loops.round_loops(c)
  c.distill.microbatches = 2
  assert loops.round_loops(c)["factor"] == pytest.approx(2 * base["factor"])
