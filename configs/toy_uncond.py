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
  c.model.time_scale = 1.0 / 1000.0
  c.distill.multistep = "full_chain"
  return c
