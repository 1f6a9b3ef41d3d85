"""The TPU chips compile mode plans for: their public datasheet figures, and a slice's chips from
libtpu's compile-only client (``jax.experimental.topologies``), without having them."""
from __future__ import annotations

import importlib.util

from ibmd_jax.errors import ConfigError


# Public datasheet figures per chip (Google Cloud TPU documentation, system architecture pages:
# https://cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): HBM GiB, dense bf16 TFLOP/s, HBM GB/s,
# inter-chip interconnect Gbit/s per chip (all links).
CHIPS = {
    "v4": dict(hbm_gib=32.0, bf16_tflops=275.0, hbm_gbps=1228.0, ici_gbit=2400.0,
               source="https://cloud.google.com/tpu/docs/v4"),
    "v5e": dict(hbm_gib=16.0, bf16_tflops=197.0, hbm_gbps=819.0, ici_gbit=1600.0,
                source="https://cloud.google.com/tpu/docs/v5e"),
    "v5p": dict(hbm_gib=95.0, bf16_tflops=459.0, hbm_gbps=2765.0, ici_gbit=4800.0,
                source="https://cloud.google.com/tpu/docs/v5p"),
    "v6e": dict(hbm_gib=32.0, bf16_tflops=918.0, hbm_gbps=1640.0, ici_gbit=3584.0,
                source="https://cloud.google.com/tpu/docs/v6e"),
}
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
