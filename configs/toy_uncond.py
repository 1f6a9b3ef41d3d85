"""Toy pipeline, unconditional (I2SB-style) teacher on paired data with the I2SB bridge.

  python -m launch.main --config=configs/toy_uncond.py --workdir=/tmp/ibmd_toy_uncond
"""
from configs import toy_cond


def get_config():
  c = toy_cond.get_config()
  c.data.coupling = "paired_blur"
  c.conditional = False
  c.bridge.kind = "i2sb"
  c.bridge.precond = "eps"
  c.bridge.beta_max = 0.3
  # model.time_scale stays None: 1/1000 from the I2SB bridge's noise-level input
  c.distill.multistep = "full_chain"
  # The marginal-only toy keeps its measured setting: distilling the closed form at batch 256 the
  # one-step student is at the noise floor (ED 0.0003, floor -0.0002, trained teacher at 100 NFE
  # 0.0017); distilling the trained teacher at batch 1024 (toy_cond's default) it ends at 0.0037
  # (docs/toy_results.md).
  c.distill.teacher = "exact"
  c.distill.batch_size = 256
  return c
