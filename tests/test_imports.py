"""The repository's import graph, read with ast from every .py file (imports inside functions
included, nothing is imported): no import cycle anywhere (ibmd_jax, launch, configs, tools, bench,
tests), nothing in ibmd_jax/ imports tools/ or bench/, and the package's tests (tests/ outside
tests/tools/) import neither."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = ("ibmd_jax", "launch", "configs", "tools", "bench", "tests")
TOOLING = ("tools", "bench")


def modules(root: str, top=TOP) -> dict:
  """{dotted module name: path} of every .py file under the given top-level folders."""
  out = {}
  for pkg in top:
    for d, _, files in os.walk(os.path.join(root, pkg)):
      for f in files:
        if f.endswith(".py"):
          rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
          if rel[-1] == "__init__":
            rel = rel[:-1]
          out[".".join(rel)] = os.path.join(d, f)
  return out


def imported_names(name: str, path: str, is_package: bool) -> set:
  """Every dotted name the module imports: `import a.b` -> a.b; `from a import b` -> a.b where
  that is a module, else a (`from a import b` with b a module names the submodule, not a's
  __init__); relative imports resolved. Returned as (base, alias or None) pairs."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update((a.name, None) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = name.split(".")
        parts = parts if is_package else parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
      out.update((base, a.name) for a in node.names)
  return out


def graph(root: str = ROOT, top=TOP) -> dict:
  """{module: set of the repository's modules it imports}."""
  mods = modules(root, top)
  out = {}
  for name, path in mods.items():
    deps = set()
    for base, alias in imported_names(name, path, path.endswith("__init__.py")):
      full = f"{base}.{alias}" if alias else base
      parts = (full if full in mods else base).split(".")
      while parts and ".".join(parts) not in mods:  # the longest prefix that is a module here
        parts.pop()
      if parts and ".".join(parts) != name:
        deps.add(".".join(parts))
    out[name] = deps
  return out


def cycles(g: dict) -> list:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(g.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


def _imports_tooling(name: str, path: str) -> list:
  return sorted(b + (f".{a}" if a else "")
                for b, a in imported_names(name, path, path.endswith("__init__.py"))
                if b.split(".")[0] in TOOLING)


def test_the_graph_reads_the_repository():
  g = graph()
  # a few edges known to exist: the check would pass vacuously if it read nothing
  assert "ibmd_jax.sharding" in g["ibmd_jax.run"]
  assert "tools.aot" in g["launch.main"]  # compile mode's dispatch (inside main())
  assert "ibmd_jax.eval.metrics" in g["ibmd_jax.eval.bootstrap"]
  assert "configs.images" in g["configs.bench64"]
  assert len([m for m in g if m.startswith("ibmd_jax")]) > 30


def test_no_import_cycle_anywhere():
  assert cycles(graph()) == []


def test_the_package_imports_no_tooling():
  mods = modules(ROOT, ("ibmd_jax",))
  bad = {m: _imports_tooling(m, p) for m, p in mods.items() if _imports_tooling(m, p)}
  assert not bad, f"ibmd_jax/ must not import tools/ or bench/: {bad}"


def test_the_package_tests_import_no_tooling():
  mods = {m: p for m, p in modules(ROOT, ("tests",)).items() if not m.startswith("tests.tools")}
  assert "tests.test_samplers" in mods
  bad = {m: _imports_tooling(m, p) for m, p in mods.items() if _imports_tooling(m, p)}
  assert not bad, f"tests outside tests/tools/ must not import tools/ or bench/: {bad}"


def test_a_cycle_is_found(tmp_path):
  """A cycle through a function-level import and a relative import is seen, and a chain is not."""
  pkg = tmp_path / "pkg"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "a.py").write_text("from pkg.sub import b\n")
  (pkg / "sub" / "b.py").write_text("def f():\n  from .. import c\n")
  (pkg / "c.py").write_text("import os\n")
  g = graph(str(tmp_path), ("pkg",))
  assert g["pkg.a"] == {"pkg.sub.b"} and g["pkg.sub.b"] == {"pkg.c"}
  assert cycles(g) == []
  (pkg / "c.py").write_text("import pkg.a\n")
  assert cycles(graph(str(tmp_path), ("pkg",))) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
