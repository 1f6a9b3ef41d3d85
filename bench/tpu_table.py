r"""docs/tpu.md's table: every full-size config compiled for the slices users run on, one compile
at a time, resumable, and the table written from whatever has been compiled.

  ALLOW_MULTIPLE_LIBTPU_LOAD=1 PYTHONPATH=. python bench/tpu_table.py --root=runs/aot \
      [--only=i2sb_v5e16,...] [--budget_s=3600]      # compile what is not done yet, in order
  PYTHONPATH=. python bench/tpu_table.py --root=runs/aot --report=docs/tpu_table.md

Each entry is the launcher's own compile mode (`python -m launch.main ... --config.mode=compile`)
in a subprocess, so a compile XLA refuses, or one killed for host memory, is recorded and the
queue goes on; <root>/<name>/aot.json is the result, <root>/<name>.log the output, and an entry
with an aot.json is skipped on the next call. The recorded full-size compiles took 971–5,856 s
and 17.9–52.0 GiB of host memory (resident + swap) each on a 2-core host (docs/tpu_runs/*/:
swap needed): one at a time (one compile already keeps both cores busy; two at once need twice
the memory).

The choices (mesh, remat, per-chip batch, bf16 teacher, microbatches) are the fitting ones for
each chip's usable HBM; the table shows what XLA measured for them, and the estimates with every
loop counted (`corrected`: tools/loops.py, tools/chips.py) recomputed from each aot.json, no
recompile. `pod_command` is the exact launch/tpu_pod.sh line: the compiled choices, written out,
and --config.mode=distill.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# (config, topology, overrides): per-chip batch = batch_size / chips.
_SPLIT = "--config.distill.split_round=True"  # 971 s instead of 2,134 s for the E->H round
_BIG = ("--config.model.remat=full", "--config.distill.teacher_dtype=bfloat16", _SPLIT)
ENTRIES = {
    # I2SB ImageNet-256 (552.8M parameters), the memory targets of issue 19: v5e >= 4 per chip,
    # v5p >= 16 per chip (v5p-64 with fsdp 4: the same per-chip program as any v5p slice with
    # fsdp 4 at 16 per chip).
    "i2sb_v5e4": ("configs/i2sb_sr4_bicubic.py", "v5e:2x2",  # measured fused: 5,856 s
                  ("--config.mesh.fsdp=4", "--config.distill.batch_size=16",
                   "--config.model.remat=full", "--config.distill.teacher_dtype=bfloat16")),
    "i2sb_v5e16": ("configs/i2sb_sr4_bicubic.py", "v5e:4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=64") + _BIG),
    "i2sb_v5p64": ("configs/i2sb_sr4_bicubic.py", "v5p:4x4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=1024") + _BIG),
    "i2sb_v6e16": ("configs/i2sb_sr4_bicubic.py", "v6e:4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=128") + _BIG),
    # DDBM edges->handbags 64² (295M parameters). On 4 chips, as issue 19 measured it fused
    # (batch 8 per chip, replicated, no remat: 2,134 s), with the round split in two programs.
    "e2h_v5e4_split": ("configs/ddbm_e2h64.py", "v5e:2x2",
                       ("--config.distill.batch_size=32", _SPLIT)),
    "e2h_v5e16": ("configs/ddbm_e2h64.py", "v5e:4x4",
                  ("--config.mesh.fsdp=4", "--config.distill.batch_size=128",
                   "--config.distill.teacher_dtype=bfloat16", _SPLIT)),
    "e2h_v5p64": ("configs/ddbm_e2h64.py", "v5p:4x4x4", ("--config.distill.batch_size=2048",
                                                         _SPLIT)),
    "e2h_v6e16": ("configs/ddbm_e2h64.py", "v6e:4x4",
                  ("--config.mesh.fsdp=4", "--config.distill.batch_size=256",
                   "--config.distill.teacher_dtype=bfloat16", _SPLIT)),
    # DDBM DIODE 256² and DBIM ImageNet-256 inpainting (the I2SB network with xT concatenated; DBIM
    # class-conditional, 4-step DMD2 generator).
    "diode_v5e16": ("configs/ddbm_diode256.py", "v5e:4x4",
                    ("--config.mesh.fsdp=4", "--config.distill.batch_size=64") + _BIG),
    "diode_v5p64": ("configs/ddbm_diode256.py", "v5p:4x4x4",
                    ("--config.mesh.fsdp=4", "--config.distill.batch_size=1024") + _BIG),
    "diode_v6e16": ("configs/ddbm_diode256.py", "v6e:4x4",
                    ("--config.mesh.fsdp=4", "--config.distill.batch_size=128") + _BIG),
    "dbim_v5e16": ("configs/dbim_inpaint256.py", "v5e:4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=64") + _BIG),
    "dbim_v5p64": ("configs/dbim_inpaint256.py", "v5p:4x4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=1024") + _BIG),
    "dbim_v6e16": ("configs/dbim_inpaint256.py", "v6e:4x4",
                   ("--config.mesh.fsdp=4", "--config.distill.batch_size=128") + _BIG),
}


def command(name: str, root: str, extra=()) -> list[str]:
  config, topology, overrides = ENTRIES[name]
  return [sys.executable, "-m", "launch.main", f"--config={config}",
          f"--workdir={os.path.join(root, name)}", "--config.mode=compile",
          f"--config.aot.topology={topology}", "--config.aot.programs=('round',)",
          # a split round's programs one after the other: half the host memory of two at once
          # (a 256² program needs ~24 GiB of it to compile)
          "--config.aot.compile_threads=1", *overrides, *extra]


def run_queue(root: str, names: list[str], budget_s: float) -> None:
  t0 = time.time()
  env = dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1")
  for name in names:
    out = os.path.join(root, name, "aot.json")
    failed = os.path.join(root, name, "failed.json")
    if os.path.exists(out) or os.path.exists(failed):
      continue
    if budget_s and time.time() - t0 > budget_s:
      print(f"budget of {budget_s:.0f} s spent; rerun to continue", flush=True)
      return
    os.makedirs(os.path.join(root, name), exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command(name, root)[1:])}", flush=True)
    start = time.time()
    peak = 0
    with open(os.path.join(root, f"{name}.log"), "w") as log:
      proc = subprocess.Popen(["/usr/bin/time", "-v", *command(name, root)], stdout=log,
                              stderr=subprocess.STDOUT, env=env)
      while proc.poll() is None:  # resident + swapped: what the compile needed of the host
        peak = max(peak, _tree_memory(proc.pid))
        time.sleep(5)
      rc = proc.returncode
    wall = time.time() - start
    rss = _max_rss_gib(os.path.join(root, f"{name}.log"))
    info = {"rc": rc, "wall_s": wall, "host_max_rss_gib": rss,
            "host_peak_rss_swap_gib": round(peak / 2**30, 2)}
    if not os.path.exists(out):  # XLA refused it, or the host killed it: recorded, go on
      with open(failed, "w") as f:
        json.dump(info, f)
    else:
      with open(os.path.join(root, name, "host.json"), "w") as f:
        json.dump(info, f)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: rc {rc}, {wall:.0f} s, host RSS {rss} GiB",
          flush=True)


def _sig3(x: float) -> str:
  """Three significant digits, trailing zeros kept (2.00, 26.0, 472); 1,121 from a thousand on."""
  return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:#.3g}".rstrip(".")


def _tree_memory(pid: int) -> int:
  """Resident + swapped bytes of a process and its descendants (Linux /proc), 0 where unreadable."""
  children: dict[int, list[int]] = {}
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        with open(f"/proc/{d}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
      except (OSError, IndexError, ValueError):
        pass
  total, todo = 0, [pid]
  while todo:
    p = todo.pop()
    todo.extend(children.get(p, []))
    try:
      with open(f"/proc/{p}/status") as f:
        for line in f:
          if line.startswith(("VmRSS:", "VmSwap:")):
            total += int(line.split()[1]) * 1024
    except OSError:
      pass
  return total


def _max_rss_gib(log: str):
  try:
    with open(log) as f:
      for line in f:
        if "Maximum resident set size" in line:
          return round(int(line.split(":")[-1]) / 2**20, 2)
  except OSError:
    pass
  return None


def _load_entry(name: str):
  """The entry's config with its overrides applied (what was compiled)."""
  import ast  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  config, _, overrides = ENTRIES[name]
  c = importlib.import_module(config[:-len(".py")].replace("/", ".")).get_config()
  for o in overrides:
    key, raw = o[len("--config."):].split("=", 1)
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    c.update_from_flattened_dict({key: value})
  return c


# Where each config's teacher and data live on the pod (docs/tpu.md, step 3).
POD_INPUTS = {
    "configs/i2sb_sr4_bicubic.py": ("--config.teacher.checkpoint=gs://<bucket>/teachers/i2sb_sr4_bicubic/teacher",
                                    "--config.data.tfds_data_dir=gs://<bucket>/tfds"),
    "configs/ddbm_e2h64.py": ("--config.teacher.checkpoint=gs://<bucket>/teachers/ddbm_e2h64/teacher",),
    "configs/ddbm_diode256.py": ("--config.teacher.checkpoint=gs://<bucket>/teachers/ddbm_diode256/teacher",),
    "configs/dbim_inpaint256.py": ("--config.teacher.checkpoint=gs://<bucket>/teachers/dbim_inpaint256/teacher",
                                   "--config.data.tfds_data_dir=gs://<bucket>/tfds"),
}


def pod_command(name: str) -> str:
  """The entry's launch/tpu_pod.sh line: the teacher and data in the bucket, then every choice
  that decides the compiled round, and --config.mode=distill (the program that was compiled)."""
  from tools import podcmd  # pylint: disable=g-import-not-at-top
  config, topology, overrides = ENTRIES[name]
  c = _load_entry(name)
  given = podcmd.keys(overrides)
  plan = list(overrides) + [
      f"--config.{k}={v}" for k, v in (
          ("distill.teacher_dtype", c.distill.teacher_dtype),
          ("distill.microbatches", int(c.distill.microbatches)),
          ("distill.split_round", bool(c.distill.split_round)), ("mode", "distill"))
      if k not in given]
  return podcmd.pod_command(config, topology, list(POD_INPUTS.get(config, ())) + plan)


def corrected(name: str, rep: dict) -> dict:
  """A recorded round's estimate with every loop counted (tools/loops.py) and the published chip
  figures (tools/chips.py), from its aot.json alone: XLA's counts × the round's loop factor (the
  records hold the split programs' sums, so both programs take the round's factor)."""
  from tools import chips as chips_lib, estimates, loops  # pylint: disable=g-import-not-at-top
  r = rep["programs"]["round"]
  acc = loops.round_loops(_load_entry(name))
  chip = chips_lib.device_figures(rep["chip"])
  est = estimates.program_estimate(r, chip, rep["chips"], r["images"], acc["factor"])
  per_image = r["flops"] / (r["images"] / rep["chips"])
  return dict(est, usable=chip["hbm_bytes"], margin=chip["hbm_bytes"] - r["total"],
              fits=r["total"] <= chip["hbm_bytes"],
              xla_over_model=per_image / (acc["critic_xla"] + acc["gen_xla"]), loops=acc)


def report(root: str) -> str:
  lines = ["The fitting choice of each full-size config on each slice, compiled on a CPU host "
           "(docs/tpu.md; records in docs/tpu_runs/<row>/). Memory: XLA's compiled round per "
           "chip against the HBM libtpu lets a program use (docs/compile_runs/usable_hbm.json). "
           "Estimates: a roofline per round with every loop counted as many times as it runs "
           "(the L critic steps, DBIM's generator chain: tools/loops.py) and the datasheet "
           "figures of tools/chips.py; \"first published\" is the estimate as first written, "
           "from XLA's count of each loop body once and the older chip figures. Rewritten from "
           "the records, no recompile: `python bench/tpu_table.py --root=docs/tpu_runs "
           "--report=docs/tpu_table.md`.", "",
           "| config | slice | mesh | per-chip batch | round GiB per chip (of usable HBM) | margin "
           "GiB | fits | TFLOP per chip: XLA (loop bodies once) → per round | XLA ÷ FLOP model | "
           "est. round s (roofline) | est. generator images/s per chip | first published "
           "(loop bodies once, old chip figures) | compile s (split round: critic + generator) | "
           "host GiB (peak resident + swap) |", "|" + "---|" * 14]
  for name, (config, topology, overrides) in ENTRIES.items():
    path = os.path.join(root, name, "aot.json")
    if not os.path.exists(path):
      fail = os.path.join(root, name, "failed.json")
      state = "not compiled yet"
      if os.path.exists(fail):
        with open(fail) as f:
          info = json.load(f)
        state = f"failed (rc {info['rc']}, host RSS {info['host_max_rss_gib']} GiB)"
      lines.append(f"| {os.path.basename(config)} | {topology} | | | {state} |" + " |" * 9)
      continue
    with open(path) as f:
      rep = json.load(f)
    r = rep["programs"]["round"]
    host = {}
    if os.path.exists(os.path.join(root, name, "host.json")):
      with open(os.path.join(root, name, "host.json")) as f:
        host = json.load(f)
    batch = [o for o in overrides if "distill.batch_size" in o]
    per_chip = int(batch[0].split("=")[1]) // rep["chips"] if batch else "default"
    mesh = f"{rep['mesh']['data']}×{rep['mesh']['fsdp']}"
    if "xla_error" in r:
      lines.append(f"| {os.path.basename(config)} | {topology} | {mesh} | {per_chip} | "
                   f"{r['total'] / 2**30:.2f} (XLA) | | **no** |" + " |" * 6
                   + f" {_host_cell(host)} |")
      continue
    e = corrected(name, rep)
    old = r.get("images_per_s_per_chip")
    lines.append(
        f"| {os.path.basename(config)} | {topology} | {mesh} | {per_chip} | "
        f"{r['total'] / 2**30:.2f} ({e['usable'] / 2**30:g}) | {e['margin'] / 2**30:.2f} | "
        f"{'yes' if e['fits'] else '**no**'} | {_sig3(r['flops'] / 1e12)} → "
        f"{_sig3(e['flops_run'] / 1e12)} | {e['xla_over_model']:.2f} | "
        f"{_sig3(e['roofline_s'])} ({e['bound']}) | "
        f"{'–' if e['images_per_s_per_chip'] is None else _sig3(e['images_per_s_per_chip'])} | "
        f"{'–' if old is None else _sig3(old)} | {_compile_cell(r)} | {_host_cell(host)} |")
  lines += ["", "Pod commands (the overrides compiled above; `--config.mode=distill` runs the "
            "compiled round and nothing else; the teacher and the data in the bucket: "
            "docs/tpu.md, step 3):", "", "```bash"]
  for name in ENTRIES:
    if os.path.exists(os.path.join(root, name, "aot.json")):
      lines.append(pod_command(name))
  lines.append("```")
  return "\n".join(lines)


def _compile_cell(r: dict) -> str:
  parts = r.get("parts_s") or ()
  if len(parts) != 2:
    return f"{r['compile_s']:.0f}"
  sep = " + " if r.get("threads", 1) == 1 else " ∥ "  # ∥: the two compiled at once
  return f"{r['compile_s']:.0f} ({parts[0]:.0f}{sep}{parts[1]:.0f})"


def _host_cell(host: dict) -> str:
  """Peak resident + swap where the queue sampled it, else /usr/bin/time's resident maximum."""
  if host.get("host_peak_rss_swap_gib"):
    return f"{host['host_peak_rss_swap_gib']:.1f} (RSS max {host.get('host_max_rss_gib')})"
  return f"{host.get('host_max_rss_gib')} (RSS)"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--root", default="runs/aot")
  p.add_argument("--only", default="", help="comma-separated entry names (default: all, in order)")
  p.add_argument("--budget_s", type=float, default=0.0, help="no new compile after this many s")
  p.add_argument("--report", default="", help="write the table (markdown) here instead")
  args = p.parse_args(argv)
  if args.report:
    text = report(args.root)
    with open(args.report, "w") as f:
      f.write(text + "\n")
    print(text)
    return
  names = [n for n in args.only.split(",") if n] or list(ENTRIES)
  unknown = [n for n in names if n not in ENTRIES]
  if unknown:
    raise SystemExit(f"--only: unknown entries {unknown}; choose from {list(ENTRIES)}")
  run_queue(args.root, names, args.budget_s)


if __name__ == "__main__":
  main()
