r"""The HBM a TPU chip's programs may use, as libtpu reports it: a program needing far more than
any chip has is compiled for one device of each slice by the compile-only client, and XLA's
refusal names the available HBM ("... exceeds available HBM (15.75G)"). compile mode's fit check
compares a program's bytes with this figure (tools/chips.py: usable_hbm_gib), not the datasheet's.

  ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=. python -m tools.usable_hbm \
      --out=docs/compile_runs/usable_hbm.json

Seconds, a few hundred MB of host memory. libtpu's compile-only v4 slice lists each of a chip's two
TensorCores as a device (v4:2x2x1: 4 chips, 8 devices), so its figure is per TensorCore.
"""
from __future__ import annotations

import argparse
import json
import re

TOPOLOGIES = ("v4:2x2x1", "v5e:2x2", "v5p:2x2x1", "v6e:2x2")


def probe(topology: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  from jax.sharding import SingleDeviceSharding  # pylint: disable=g-import-not-at-top
  desc = topologies.get_topology_desc(topology_name=topology, platform="tpu")
  dev = desc.devices[0]
  x = jax.ShapeDtypeStruct((2**36,), jnp.float32, sharding=SingleDeviceSharding(dev))  # 256 GiB
  try:
    jax.jit(lambda x: jnp.sin(x) * 2).lower(x).compile()
    return {"error": "compiled a 256 GiB program: no limit reported"}
  except Exception as e:  # pylint: disable=broad-except  # XLA's RESOURCE_EXHAUSTED
    line = next((l for l in str(e).splitlines() if "available HBM" in l), str(e)[:300])
    m = re.search(r"available HBM \(([\d.]+)G\)", line)
    coords = {tuple(d.coords) for d in desc.devices}
    return {"device_kind": dev.device_kind, "devices": len(desc.devices), "chips": len(coords),
            "usable_hbm_gib": float(m.group(1)) if m else None, "xla_message": line.strip(),
            "jax": jax.__version__}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="")
  args = p.parse_args(argv)
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  res = {"command": "ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=. python -m tools.usable_hbm",
         "libtpu": importlib.metadata.version("libtpu"),
         "topologies": {t: probe(t) for t in TOPOLOGIES}}
  text = json.dumps(res, indent=1)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
