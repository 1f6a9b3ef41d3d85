r"""One program's collectives as each TPU generation's compiler writes them: the launcher's round
(compile mode's builder) compiled for several slices with the same mesh, and per collective op its
bytes per chip, its instruction count and its distinct channels (a count above the channels means
the compiler gathers the same tensor again at several places instead of keeping it).

  ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=. python bench/collectives_by_chip.py \
      --config=configs/bench64.py:inpaint,tiny --fsdp=4 --batch_size=8 \
      --topology=v5e:2x2 --topology=v6e:2x2 --topology=v5p:2x2x1 --out=/tmp/collectives.json

Needs libtpu (pip install -e ".[tpu]"); about 2-3 minutes per topology for the tiny round here.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re

from tools import aot, hlo, split_compile

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

_CHANNEL = re.compile(r"\s(" + "|".join(hlo.COLLECTIVE_OPS) + r")(?:-start)?\([^)]*\), channel_id=(\d+)")


def breakdown(hlo_text: str) -> dict:
  """{op: {bytes, instructions, channels}} of a compiled module's text."""
  sizes = hlo.collective_bytes(hlo_text)
  count = collections.Counter(m.group(2) for m in hlo._COLLECTIVE.finditer(hlo_text))  # pylint: disable=protected-access
  channels = collections.defaultdict(set)
  for op, ch in _CHANNEL.findall(hlo_text):
    channels[op].add(ch)
  return {op: {"bytes": int(sizes.get(op, 0)), "instructions": int(count[op]),
               "channels": len(channels.get(op, ()))} for op in sorted(count)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/bench64.py:inpaint,tiny")
  p.add_argument("--topology", action="append", required=True)
  p.add_argument("--fsdp", type=int, default=4)
  p.add_argument("--batch_size", type=int, default=8, help="global distillation batch")
  p.add_argument("--out", default="")
  a = p.parse_args()
  from bench.compile_time import load  # pylint: disable=g-import-not-at-top
  from ibmd_jax import sharding as shd, tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  out = {}
  for topo in a.topology:
    c = load(a.config)
    c.mode, c.aot.topology = "compile", topo
    devices = aot.topology_devices(topo)
    c.mesh.data, c.mesh.fsdp = len(devices) // a.fsdp, a.fsdp
    c.distill.batch_size = a.batch_size
    mesh = shd.mesh_from_config(c, devices)
    fn, args, _ = aot.build_programs(c, tasks_lib.make_task(c), mesh, ("round",))["round"]
    out[topo] = breakdown(split_compile.lower(fn, *args).compile().as_text() or "")
    print(topo, json.dumps(out[topo]), flush=True)
    if a.out:
      with open(a.out, "w") as f:
        json.dump({"config": a.config, "fsdp": a.fsdp, "batch_size": a.batch_size,
                   "topologies": out}, f, indent=1)


if __name__ == "__main__":
  main()
