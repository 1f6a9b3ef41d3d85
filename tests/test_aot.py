"""Compile mode (ibmd_jax/aot.py): the launcher's programs compiled for TPU slices by libtpu's
compile-only client on this CPU host. Skipped, with the command to install it, without libtpu."""
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
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(topology, **kw):
  c = load_config("bench64", "inpaint,tiny")
  c.mode = "compile"
  c.aot.topology = topology
  c.aot.programs = ("teacher_step",)
  c.teacher.batch_size = 16
  for k, v in kw.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _state_bytes_per_chip(abstract) -> int:
  """Bytes of one chip's shards of a planned state (ShapeDtypeStructs with NamedShardings)."""
  total = 0
  for x in jax.tree.leaves(abstract):
    shard = x.sharding.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * x.dtype.itemsize
  return total


@needs_libtpu
@pytest.mark.parametrize("topology,fsdp,hosts", [("v5e:2x2", 2, 1), ("v5e:4x4", 1, 4)])
def test_teacher_step_compiles_for_a_slice_and_its_memory_adds_up(tmp_path, topology, fsdp,
                                                                  hosts):
  from ibmd_jax import aot, programs, run
  from ibmd_jax.tasks import make_task
  c = _config(topology, **{"mesh.fsdp": fsdp})
  devices = aot.topology_devices(topology)
  assert len({d.process_index for d in devices}) == hosts  # v5e:4x4 is a 4-host slice
  report = run.run(c, str(tmp_path))["aot"]
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
  """The launcher exits 1 naming the program and the shortfall; aot.json still records it."""
  env = dict(os.environ, PYTHONPATH=REPO, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  r = subprocess.run(
      [sys.executable, "-m", "launch.main", "--config=configs/bench64.py:inpaint,tiny",
       f"--workdir={tmp_path}", "--config.mode=compile", "--config.aot.topology=v5e:2x2",
       "--config.aot.programs=('teacher_step',)", "--config.teacher.batch_size=262144"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert r.returncode == 1, r.stderr[-2000:]
  assert "error: teacher_step needs" in r.stderr and "more than a v5e chip's 16 GiB" in r.stderr
  rec = json.load(open(tmp_path / "aot.json"))["programs"]["teacher_step"]
  assert not rec["fits"] and rec["total"] > 16 * 2**30


def test_bad_topology_names_are_config_errors():
  from ibmd_jax import aot
  from ibmd_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown chip 'v9x'"):
    aot.chip_of("v9x:2x2")
  if not HAVE_LIBTPU:
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tpu\]"'):
      aot.topology_devices("v5e:2x2")
