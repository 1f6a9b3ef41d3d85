"""The Colab notebook runs top to bottom on CPU (its install cell is skipped: the package is
already importable here)."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_runs(tmp_path):
  nb = json.load(open(os.path.join(REPO, "launch", "colab_toy.ipynb")))
  code = []
  for cell in nb["cells"]:
    if cell["cell_type"] != "code" or "install" in cell["metadata"].get("tags", []):
      continue
    src = "".join(cell["source"])
    assert not any(l.lstrip().startswith(("!", "%")) for l in src.splitlines()), src
    code.append(src)
  script = "\n\n".join(code).replace("/tmp/ibmd_colab_toy", str(tmp_path / "run"))
  script = "import matplotlib\nmatplotlib.use('Agg')\n" + script
  # Shrink the run further for the test suite; the notebook's own sizes are for Colab.
  script = script.replace("config.teacher.steps = 600", "config.teacher.steps = 100").replace(
      "config.distill.rounds = 150", "config.distill.rounds = 10")
  r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
                              # one device, as a Colab runtime (the suite's 8 fake ones cost time)
                              XLA_FLAGS="--xla_force_host_platform_device_count=1"),
                     timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  assert "IBMD student" in r.stdout
  assert (tmp_path / "run" / "samples.png").stat().st_size > 1000
