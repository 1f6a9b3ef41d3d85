"""Reports: the evaluation table, the quality-vs-NFE/time plot and image grids, one of each for
every task (the columns come from the task's scorer)."""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw


def format_table(results: dict, columns: list) -> str:
  """Markdown table: one row per baseline and per sampler (group, count), one column per metric
  of `columns` [(key, title, format)] that any row has, then the time per sample."""
  rows = [(label, "–", results[key]) for key, label in results.get("baselines", {}).items()
          if key != "reference"]
  labels = results.get("labels", {})
  for g in results["groups"]:
    rows += [(labels.get(g, g), c, row) for c, row in results[g].items()]
  if "reference" in results.get("baselines", {}):
    rows.append((results["baselines"]["reference"], "–", results["reference"]))
  cols = [c for c in columns if any(c[0] in r for _, _, r in rows)]
  lines = ["| sampler | NFE | " + " | ".join(t for _, t, _ in cols) + " | s / sample |",
           "|" + "---|" * (len(cols) + 3)]

  def fmt(row, key, spec):
    v = row.get(key)
    if v is None:
      return "–"
    s = format(v, spec)
    std = row.get(key + "_std")
    return s + (f" ± {std:.2g}" if std is not None and np.isfinite(std) else "")

  for label, count, row in rows:
    t = f"{row['s_per_sample']:.3g}" if "s_per_sample" in row else "–"
    lines.append(f"| {label} | {count} | " + " | ".join(fmt(row, k, s) for k, _, s in cols)
                 + f" | {t} |")
  return "\n".join(lines)


def write_report(out_dir: str, results: dict, columns: list, header: str, panels: list,
                 artifacts: list) -> str:
  """<out_dir>/metrics.json, report.md (header, table, plot, artifacts) and quality_vs_nfe.png;
  returns the table."""
  os.makedirs(out_dir, exist_ok=True)
  table = format_table(results, columns)
  baselines = {label: results[key] for key, label in results.get("baselines", {}).items()
               if key != "reference"}
  plot = None
  if panels:
    plot = plot_quality(results, os.path.join(out_dir, "quality_vs_nfe.png"), panels=panels,
                        baselines=baselines,
                        title="the numbers at the points are teacher NFEs / student steps")
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(f"# Evaluation\n\n{header}\n\n{table}\n")
    if plot:
      f.write(f"\n![quality against NFE and time]({os.path.basename(plot)})\n")
    for title, name, caption in artifacts:
      f.write(f"\n## {title}\n\n{caption}\n\n![{title}]({name})\n")
  return table


def plot_quality(results: dict, path: str, ylabel: str = "energy distance", *,
                 panels: Optional[list] = None, time_key: str = "s_per_sample",
                 time_label: str = "seconds per sample (median over batches)", baselines: Optional[dict] = None,
                 title: str = "") -> Optional[str]:
  """Quality against NFE and against time per sample: teacher curves, student points.

  results: the evaluation's results: results["groups"] names the sampler groups ({count: row},
  e.g. "teacher", "teacher_eta0", "student"), each row a dict of metric values and `time_key`.
  panels: one figure row per (metric key, axis label, log y-axis). baselines: {label: {metric:
  value}} drawn as horizontal lines. Missing or non-finite values are left out. Returns the path.
  """
  import matplotlib  # here, not at import: 1 s of every launcher process's start (issue 37)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  if panels is None:
    panels = [("ed", ylabel, True)]
  baselines = baselines or {}
  groups = results.get("groups", ["exact_teacher", "teacher", "student"])
  styles = ["o-", "^--", "v-.", "d:", "x-"]
  floor_styles = (":", "--", "-.")
  fig, axes = plt.subplots(len(panels), 2, figsize=(9, 3.4 * len(panels)), squeeze=False)
  for row, (metric, mlabel, log) in zip(axes, panels):
    vals = [v[metric] for who in groups
            for v in results.get(who, {}).values() if np.isfinite(v.get(metric, np.nan))]
    vals += [abs(b[metric]) for b in baselines.values() if np.isfinite(b.get(metric, np.nan))]
    if log and vals and max(vals) < 10 * max(min(vals), 1e-5):
      log = False  # less than a decade: a linear axis reads better
    for ax, xkey, xlabel in ((row[0], "nfe", "network evaluations (NFE)"),
                             (row[1], time_key, time_label)):
      labels = results.get("labels", {})
      for n, who in enumerate(groups):
        style = "s" if who == "student" else styles[n % len(styles)]
        label = labels.get(who, who)
        pts = sorted((int(k), v) for k, v in results.get(who, {}).items()
                     if np.isfinite(v.get(metric, np.nan)) and (xkey == "nfe" or xkey in v))
        if not pts:
          continue
        xs = [k if xkey == "nfe" else v[xkey] for k, v in pts]
        ys = [max(v[metric], 1e-5) if log else v[metric] for _, v in pts]
        ax.plot(xs, ys, style, label=label, ms=6)
        for (k, _), x, y in zip(pts, xs, ys):
          ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
      for (blabel, vals), ls in zip(baselines.items(), floor_styles):
        v = vals.get(metric)
        if v is not None and np.isfinite(v):
          ax.axhline(max(abs(v), 1e-5) if log else v, color="gray", ls=ls, label=blabel)
      ax.set_xscale("log")
      if xkey == "nfe":  # plain NFE numbers as ticks
        nfes = sorted({int(k) for who in groups for k in results.get(who, {})})
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
      if log:
        ax.set_yscale("log")
      ax.set_xlabel(xlabel)
      ax.set_ylabel(mlabel)
      ax.grid(alpha=0.3)
    row[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def to_uint8(x) -> np.ndarray:
  return np.clip(np.round((np.asarray(x, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def save_grid(path: str, columns: list[tuple[str, np.ndarray]], rows: int = 8,
              min_cell: int = 64) -> None:
  """One row per example, one column per named image set ([-1, 1] float or uint8 NHWC), with the
  column names written above; images smaller than `min_cell` are enlarged (nearest neighbour) so
  that a tiny run's grid can be looked at. The names also go to <path>.txt."""
  cols = [c[:rows] if c.dtype == np.uint8 else to_uint8(c[:rows]) for _, c in columns]
  n, h, w, _ = cols[0].shape
  zoom = max(1, -(-min_cell // max(h, w)))
  h, w = h * zoom, w * zoom
  pad, head = 2, 26
  grid = np.full((head + n * (h + pad) + pad, len(cols) * (w + pad) + pad, 3), 255, np.uint8)
  for j, col in enumerate(cols):
    if col.shape[-1] == 1:
      col = np.repeat(col, 3, axis=-1)
    col = col.repeat(zoom, axis=1).repeat(zoom, axis=2)
    for i in range(len(col)):
      y, x = head + pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = col[i]
  img = Image.fromarray(grid)
  draw = ImageDraw.Draw(img)
  for j, (name, _) in enumerate(columns):
    lines = [""]  # greedy word wrap onto two lines, then cut what still does not fit
    for word in name.split():
      cand = f"{lines[-1]} {word}".strip()
      if draw.textlength(cand) <= w or not lines[-1]:
        lines[-1] = cand
      else:
        lines.append(word)
    for k, line in enumerate(lines[:2]):
      while line and draw.textlength(line) > w:
        line = line[:-1]
      x = pad + j * (w + pad) + max(0, (w - draw.textlength(line)) / 2)
      draw.text((x, 1 + 12 * k), line, fill=(0, 0, 0))
  img.save(path)
  with open(os.path.splitext(path)[0] + ".txt", "w") as f:
    f.write("columns: " + " | ".join(name for name, _ in columns) + "\n")


