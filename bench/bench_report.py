"""The real-image benchmark's report: every metric with a paired bootstrap 95 % interval, the
acceptance checks, and the grids (called by ``bench/bench64.py --report``).

Inputs: the evaluations' saved outputs, <root>/<task>/{1step,2step,untrained}/eval/outputs.npz
(eval1: the degraded input, the reference, the teacher at every NFE and sampler, the 1-step
student; eval2: the 2-step student; eval0: the never-updated generator). All metrics are
recomputed here from those images by ``ibmd_jax.eval.bootstrap`` (FD / KID on the weight-free
``band_features``, SWD on pyramid patches), so the evaluations' own numbers are not used.

The checks (issue 20), each decided by the 95 % interval of a paired difference lying entirely on
the passing side ("beyond the interval"):
  a. the teacher at its best (sampler, NFE) by FD beats the degraded input on FD and SWD, and on
     PSNR for super-resolution;
  b. sampling helps: that teacher's FD is below the same sampler's FD at NFE 1;
  c. the 1-step student's FD is below the teacher's at NFE 1 and at NFE 2 (every sampler), and at
     most 1.10 × the best teacher's; the 2-step student's at most 1.05 × the best teacher's;
  d. the checks of c for the 1-step student, run on the generator that was never updated, fail.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from ibmd_jax import report as report_lib
from ibmd_jax.eval import bootstrap

SR_TASKS = ("sr4", "sr4_vp")
COLS = (("psnr", "PSNR ↑", ".2f"), ("ssim", "SSIM ↑", ".3f"), ("swd", "SWD ↓", ".4f"),
        ("fd", "FD band ↓", ".3g"), ("kid", "KID band ↓", ".3g"))


def _npz(path: str) -> dict:
  if not os.path.exists(path):
    raise FileNotFoundError(path)
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def load(root: str, task: str) -> tuple[dict, dict]:
  """(sets {name: {'images', 'psnr', 'ssim'}}, eval1's metrics.json); names 'input', 'reference',
  '<teacher group>/<nfe>', 'student/1', 'student/2', 'untrained/1'."""
  parts = {"1step": _npz(os.path.join(root, task, "1step", "eval", "outputs.npz"))}
  for sub in ("2step", "untrained"):
    p = os.path.join(root, task, sub, "eval", "outputs.npz")
    if os.path.exists(p):
      parts[sub] = _npz(p)
  ref = parts["1step"]["reference"]
  sets = {}
  for sub, arrays in parts.items():
    if not np.array_equal(arrays["reference"], ref):
      raise ValueError(f"{task}/{sub} was evaluated on other images than {task}/1step: "
                       "rerun its evaluation with the same eval settings")
    for k, v in arrays.items():
      if ":" in k or (sub != "1step" and not k.startswith("student/")):
        continue
      name = ("untrained/" + k.split("/")[1]) if sub == "untrained" else k
      sets[name] = {"images": v, "psnr": arrays.get(f"psnr:{k}"), "ssim": arrays.get(f"ssim:{k}")}
  with open(os.path.join(root, task, "1step", "eval", "metrics.json")) as f:
    meta = json.load(f)
  return sets, meta


def _float(images: np.ndarray) -> np.ndarray:
  return images.astype(np.float32) / 127.5 - 1.0


def analyse(sets: dict, reps: int = 200, seed: int = 0) -> tuple[bootstrap.Bootstrap, dict]:
  """The bootstrap over every set but the reference, and {name: summary}."""
  b = bootstrap.Bootstrap(_float(sets["reference"]["images"]), reps=reps, seed=seed)
  rows = {}
  for name, s in sets.items():
    if name != "reference":
      rows[name] = b.add(name, _float(s["images"]), s["psnr"], s["ssim"])
  return b, rows


def teacher_names(rows: dict) -> list[str]:
  return [n for n in rows if n.startswith("teacher")]


def _margin(b, a: str, ref: str, metric: str, scale: float = 1.0) -> tuple[bool, str]:
  """a better than scale × ref on metric, beyond the 95 % interval of the paired difference."""
  d = b.compare(a, ref, metric, scale)
  better = d["hi"] < 0 if bootstrap.SIGN[metric] < 0 else d["lo"] > 0
  s = f"{scale:g}×" if scale != 1.0 else ""
  return better, (f"{metric}({a}) − {s}{metric}({ref}) = {d['value']:.4g} "
                  f"[{d['lo']:.4g}, {d['hi']:.4g}]")


def student_checks(b, rows: dict, student: str, best: str, nfes=(1, 2), within: float = 0.10
                   ) -> list[tuple[str, bool, str]]:
  """Check c for one student: FD below every teacher sampler at `nfes`, within `within` of best."""
  out = []
  groups = sorted({n.split("/")[0] for n in teacher_names(rows)})
  for g in groups:
    for nfe in nfes:
      ref = f"{g}/{nfe}"
      if ref in rows:
        ok, nums = _margin(b, student, ref, "fd")
        out.append((f"{student} better than {ref} on FD", ok, nums))
  ok, nums = _margin(b, student, best, "fd", 1.0 + within)
  out.append((f"{student} within {within:.0%} of the best teacher {best} on FD", ok, nums))
  return out


def checks(task: str, b, rows: dict) -> list[tuple[str, str, bool, str]]:
  """[(check letter, what, passed, numbers)]."""
  teachers = teacher_names(rows)
  best = min(teachers, key=lambda n: rows[n]["fd"]["value"])
  out = []
  for m in ("fd", "swd") + (("psnr",) if task in SR_TASKS else ()):
    ok, nums = _margin(b, best, "input", m)
    out.append(("a", f"best teacher {best} better than the degraded input on {m.upper()}", ok, nums))
  first = best.split("/")[0] + "/1"
  ok, nums = _margin(b, best, first, "fd")
  out.append(("b", f"sampling helps: {best} better than {first} on FD", ok, nums))
  if "student/1" in rows:
    out += [("c",) + c for c in student_checks(b, rows, "student/1", best)]
  if "student/2" in rows:
    ok, nums = _margin(b, "student/2", best, "fd", 1.05)
    out.append(("c", f"student/2 within 5% of the best teacher {best} on FD", ok, nums))
  if "untrained/1" in rows:
    control = student_checks(b, rows, "untrained/1", best)
    failed = [c for c in control if not c[1]]
    out.append(("d", "the checks of c on the never-updated generator fail", bool(failed),
                f"{len(failed)} of {len(control)} fail: " + "; ".join(
                    f"{w}: {n}" for w, _, n in control)))
  return out


def _cell(r: Optional[dict], fmt: str) -> str:
  if r is None or not np.isfinite(r["value"]):
    return "–"
  return f"{r['value']:{fmt}} [{r['lo']:{fmt}}, {r['hi']:{fmt}}]"


def _label(name: str, meta: dict) -> tuple[str, str]:
  if name == "input":
    return "degraded input", "–"
  group, count = name.split("/")
  if group == "untrained":
    return "generator, never updated (control)", count
  if group == "student":
    return "IBMD student", count
  return meta.get("labels", {}).get(group, group), count


def table(rows: dict, meta: dict) -> str:
  order = (["input"] + sorted(teacher_names(rows), key=lambda n: (n.split("/")[0] != "teacher",
                                                                   n.split("/")[0], int(n.split("/")[1])))
           + [n for n in ("untrained/1", "student/1", "student/2") if n in rows])
  head = "| sampler | NFE | " + " | ".join(t for _, t, _ in COLS) + " | s / image |"
  lines = [head, "|" + "---|" * (len(COLS) + 3)]
  for name in order:
    label, count = _label(name, meta)
    group = name.split("/")[0]
    # seconds per image as eval1 timed them (its teacher samplers and 1-step student)
    row = meta.get(group, {}).get(count, {}) if group != "untrained" else {}
    sec = row.get("s_per_sample") if isinstance(row, dict) else None
    lines.append(f"| {label} | {count} | " + " | ".join(_cell(rows[name].get(m), f)
                                                        for m, _, f in COLS)
                 + f" | {'–' if sec is None else f'{sec:.3g}'} |")
  return "\n".join(lines)


def grid(path: str, sets: dict, rows: dict, n: int = 8) -> None:
  teachers = teacher_names(rows)
  best = min(teachers, key=lambda k: rows[k]["fd"]["value"])
  idx = np.linspace(0, len(sets["reference"]["images"]) - 1, n).round().astype(int)
  cols = [("input", "input"), (best.split("/")[0] + "/1", "teacher NFE 1"),
          (best, f"teacher NFE {best.split('/')[1]}"), ("untrained/1", "never updated"),
          ("student/1", "student 1-step"), ("student/2", "student 2-step"),
          ("reference", "reference")]
  report_lib.save_grid(path, [(t, sets[k]["images"][idx]) for k, t in cols if k in sets], n)


BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"


def _write_between_markers(path: str, text: str, begin: str = BEGIN, end: str = END) -> None:
  """The report replaces what lies between `begin` and `end` of an existing file (a document that
  explains the benchmark around its numbers), else it is the whole file."""
  body = text + "\n"
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if begin in old and end in old:
      head, rest = old.split(begin, 1)
      body = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(body)
  os.replace(tmp, path)


def check_lines(res) -> tuple[list[str], bool]:
  """The report's lines for a task's checks [(letter, what, ok, numbers)], and whether all pass."""
  return ([f"- {'✅' if ok else '❌'} ({letter}) {what}: {nums}" for letter, what, ok, nums in res],
          all(ok for _, _, ok, _ in res))


def task_summary(rows: dict, res, secs: dict) -> dict:
  """report.json's entry of a task: its rows, its checks, its stages' wall seconds."""
  return {"rows": rows, "checks": [dict(check=c, what=w, ok=o, numbers=n) for c, w, o, n in res],
          "stage_s": secs}


def closing_lines(rec: dict, missing: list[str]) -> list[str]:
  """The report's last lines: all stage time over the calls, and what is not evaluated yet."""
  total = sum(v["s"] for v in rec["done"].values())
  lines = ["", f"Stage time in all: {total:.0f} s ({total / 60:.1f} min) over "
           f"{len(rec['calls'])} calls."]
  if missing:
    lines.append(f"Not evaluated yet: {'; '.join(missing)}.")
  return lines


def write(root: str, tasks, path: str, grids_dir: str, rec: dict, command: str,
          reps: int = 200, *, stages=(), titles=None) -> int:
  """The report of the tasks' finished stages (`stages`, in order; `titles`: {task: heading}),
  given by bench64, which runs them (this module does not import it: bench64's stage runner must
  not import JAX, and this one does)."""
  titles = titles or {}
  out_dir = os.path.dirname(os.path.abspath(path))
  grids = grids_dir or os.path.join(out_dir, "results")
  lines = [f"<!-- written by: {command} -->"]
  all_ok, missing, summary = True, [], {}
  for task in tasks:
    try:
      sets, meta = load(root, task)
    except FileNotFoundError as e:
      missing.append(f"{task} ({e})")
      continue
    b, rows = analyse(sets, reps)
    secs = {s: rec["done"].get(f"{task}/{s}", {}).get("s") for s in stages}
    lines += ["", f"### `{task}`: {titles.get(task, task)}", "",
              f"{len(sets['reference']['images'])} held-out {meta.get('split')} crops of "
              f"{meta.get('image_size')}², {meta.get('devices')} × "
              f"{meta.get('device_kind', 'device')} (JAX {meta.get('jax', '?')}); value [95 % "
              f"interval], {reps} paired bootstrap replicates; stage wall times (s): "
              + ", ".join(f"{s} {v:.0f}" for s, v in secs.items() if v is not None), "",
              table(rows, meta), ""]
    res = checks(task, b, rows)
    more, ok = check_lines(res)
    lines += more
    all_ok &= ok
    os.makedirs(grids, exist_ok=True)
    g = os.path.join(grids, f"{task}_grid.png")
    grid(g, sets, rows)
    lines.append(f"\n![{task}: columns as labelled]({os.path.relpath(g, out_dir)})")
    summary[task] = task_summary(rows, res, secs)
  lines += closing_lines(rec, missing)
  _write_between_markers(path, "\n".join(lines))
  with open(os.path.join(root, "report.json"), "w") as f:
    json.dump(summary, f, indent=1)
  print("\n".join(lines))
  return 0 if (all_ok and not missing) else 1
