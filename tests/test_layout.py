"""The library's layout: imports point one way (no cycle, function-level imports included), one
training loop of bounded size, no dispatch on task types."""
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ibmd_jax")


def _modules() -> dict:
  out = {}
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def _imports(path: str, modules: dict, name: str) -> set:
  """ibmd_jax modules imported anywhere in the file (top level and inside functions)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    else:
      continue
    for n in names:
      while n and n not in modules:
        n = n.rpartition(".")[0]
      if n and n != name and n.startswith("ibmd_jax"):
        found.add(n)
  return found


def test_the_import_graph_has_no_cycle():
  modules = _modules()
  graph = {m: _imports(p, modules, m) for m, p in modules.items()}
  # a package's __init__ re-exporting its submodules is not a cycle with them
  for m in graph:
    graph[m] = {d for d in graph[m] if not (m.startswith(d + ".") and d in modules)}
  state, stack = {}, []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for d in graph[m]:
      if state.get(d) == 1:
        raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      if d not in state:
        visit(d)
    stack.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
  assert graph["ibmd_jax.train"] and "ibmd_jax.run" not in graph["ibmd_jax.train"]


def test_one_loop_of_bounded_size_and_no_task_type_dispatch():
  with open(os.path.join(ROOT, "train.py")) as f:
    assert len(f.read().splitlines()) <= 350
  for m, path in _modules().items():
    src = open(path).read()
    for cls in ("ToyTask", "ImageTask"):
      assert f"isinstance(task, {cls})" not in src and f", {cls})" not in src, (m, cls)


def _keys(cfg, prefix=""):
  out = set()
  for k, v in cfg.items():
    if hasattr(v, "items") and k != "model":  # model: the chosen network's own options
      out |= _keys(v, f"{prefix}{k}.")
    else:
      out.add(prefix + k)
  return out


def test_one_schema_for_every_config():
  """configs/base.py owns every key: the toys and the image setups have the same keys (the
  network's options aside), so an override valid on one is valid on all."""
  from configs import base, bench64, images, toy_cond, toy_uncond

  want = _keys(base.get_config())
  for cfg in (toy_cond.get_config(), toy_uncond.get_config(), images.paper("i2sb_sr4_bicubic"),
              images.paper("ddbm_e2h64", "tiny"), bench64.get_config("sr4_vp")):
    assert _keys(cfg) == want, sorted(_keys(cfg) ^ want)
  assert "teacher.optimizer.decay" in want and "sampler.eta" in want
