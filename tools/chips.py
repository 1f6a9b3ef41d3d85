"""The TPU chips compile mode plans for: their public datasheet figures, and a slice's chips from
libtpu's compile-only client (``jax.experimental.topologies``), without having them."""
from __future__ import annotations

import importlib.util

from ibmd_jax.errors import ConfigError


# Per chip, from the Google Cloud TPU system-architecture pages (read 2026-12-07 through the docs
# search; the addresses below): HBM capacity (GiB), dense bf16 peak (TFLOP/s), HBM bandwidth (GB/s)
# and the inter-chip interconnect (ICI). The pages give ICI per chip as *bidirectional* bandwidth
# (v5e 400, v5p 1,200, v6e 800 GB/s; older copies: 1,600 / 4,800 / 3,584→3,200 Gbit/s, the same
# figures in one direction). The roofline divides the bytes a chip's collectives produce (what it
# receives) by `ici_gbps_one_way`: half the bidirectional figure. v4's page gives no ICI figure:
# left out (None), so v4 estimates have no interconnect term.
# `usable_hbm_gib` is what libtpu lets a program use (docs/compile_runs/usable_hbm.json, from
# tools/usable_hbm.py): the fit check compares with it, not with the datasheet's capacity.
# libtpu's compile-only client lists each v4 TensorCore as a device (v4:2x2x1 is 8 devices), so
# v4's per-device figures are half a chip's (`devices_per_chip`).
CHIPS = {
    "v4": dict(hbm_gib=32.0, usable_hbm_gib=15.25, bf16_tflops=275.0, hbm_gbps=1200.0,
               ici_gbps_one_way=None, devices_per_chip=2,
               source="https://docs.cloud.google.com/tpu/docs/v4",
               ici_source="none: the v4 page gives no per-chip ICI bandwidth"),
    "v5e": dict(hbm_gib=16.0, usable_hbm_gib=15.75, bf16_tflops=197.0, hbm_gbps=819.0,
                ici_gbps_one_way=200.0, devices_per_chip=1,
                source="https://docs.cloud.google.com/tpu/docs/v5e",
                ici_source="bidirectional ICI per chip 400 GB/s (v5e page)"),
    "v5p": dict(hbm_gib=95.0, usable_hbm_gib=95.74, bf16_tflops=459.0, hbm_gbps=2765.0,
                ici_gbps_one_way=600.0, devices_per_chip=1,
                source="https://docs.cloud.google.com/tpu/docs/v5p",
                ici_source="bidirectional ICI per chip 1,200 GB/s (v5p page)"),
    "v6e": dict(hbm_gib=32.0, usable_hbm_gib=31.25, bf16_tflops=918.0, hbm_gbps=1600.0,
                ici_gbps_one_way=400.0, devices_per_chip=1,
                source="https://docs.cloud.google.com/tpu/docs/v6e",
                ici_source="bidirectional ICI per chip 800 GB/s (v6e page; 3,200 Gbit/s one way)"),
}


def device_figures(kind: str) -> dict:
  """A chip's figures per device of libtpu's compile-only client (v4: per TensorCore, half a
  chip's peak and bandwidths; the others: the chip's), with `hbm_bytes`, the fit check's limit."""
  c = dict(CHIPS[kind])
  n = c["devices_per_chip"]
  for key in ("bf16_tflops", "hbm_gbps"):
    c[key] = c[key] / n
  if c["ici_gbps_one_way"]:
    c["ici_gbps_one_way"] = c["ici_gbps_one_way"] / n
  c["hbm_bytes"] = int(c["usable_hbm_gib"] * 2**30)
  return c


INSTALL_HINT = ('compile mode needs libtpu\'s compile-only client: pip install -e ".[tpu]" '
                '(or pip install "jax[tpu]==<your jax version>")')


def chip_of(topology: str) -> str:
  kind = topology.split(":", 1)[0].lower()
  if kind not in CHIPS:
    raise ConfigError(f"aot.topology={topology!r}: unknown chip {kind!r}; choose from "
                      f"{sorted(CHIPS)} (e.g. v5e:4x4, v5p:4x4x4, v6e:4x4, v4:2x2x2)")
  return kind


def topology_devices(topology: str) -> list:
  """The chips of a TPU slice, from libtpu's compile-only client."""
  chip_of(topology)
  try:
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  except Exception as e:  # libtpu missing, or a topology it does not know
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if importlib.util.find_spec("libtpu") is None:
      raise ConfigError(f"{INSTALL_HINT} (libtpu is not installed; JAX said: {msg})") from e
    raise ConfigError(f"aot.topology={topology!r} is not a TPU slice libtpu can describe: {msg}. "
                      "Names look like v5e:4x4, v5p:4x4x4, v6e:4x4, v4:2x2x2") from e
  return list(desc.devices)
