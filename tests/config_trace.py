"""Follows `config` call by call from ibmd_jax.run.run, statically (ast): the ibmd_jax modules
whose functions get the ConfigDict or one of its sections (a name bound to it, or an attribute
chain of one: `config`, `config.model`, `tc = config.teacher`), not values computed from it
(`int(config.seed)`, `dict(config.data)`).

  python tests/config_trace.py [repository root]   # prints the modules, in the order reached

The compile-mode branch (ibmd_jax.aot, tooling) is left out: `skip`.
"""
import ast
import os
import sys


def _chain_root(node):
  while isinstance(node, (ast.Attribute, ast.Subscript)):
    node = node.value
  return node.id if isinstance(node, ast.Name) else None


class _Tracer:

  def __init__(self, root, skip=("ibmd_jax.aot",)):
    self.root, self.skip, self.cache, self.reached, self.seen = root, set(skip), {}, [], set()

  def _file(self, mod):
    p = os.path.join(self.root, *mod.split("."))
    return p + ".py" if os.path.exists(p + ".py") else os.path.join(p, "__init__.py")

  def _parse(self, mod):
    if mod not in self.cache:
      f = self._file(mod)
      if not os.path.exists(f):
        self.cache[mod] = None
        return None
      tree = ast.parse(open(f).read())
      imports, defs = {}, {}
      for n in ast.walk(tree):
        if isinstance(n, ast.Import):
          for a in n.names:
            imports[a.asname or a.name] = ("mod", a.name)
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("ibmd_jax"):
          for a in n.names:
            sub = f"{n.module}.{a.name}"
            imports[a.asname or a.name] = (("mod", sub) if os.path.exists(self._file(sub))
                                           else ("obj", n.module, a.name))
      for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef)):
          defs[n.name] = n
      self.cache[mod] = (imports, defs)
    return self.cache[mod]

  def _resolve(self, mod, func):
    imports, defs = self._parse(mod)
    if isinstance(func, ast.Name):
      if func.id in defs:
        return mod, func.id
      if imports.get(func.id, ("",))[0] == "obj":
        return imports[func.id][1], imports[func.id][2]
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
      v = func.value.id
      if imports.get(v, ("",))[0] == "mod":
        return imports[v][1], func.attr
      if imports.get(v, ("",))[0] == "obj":
        return imports[v][1], f"{imports[v][2]}.{func.attr}"
      if isinstance(defs.get(v), ast.ClassDef):
        return mod, f"{v}.{func.attr}"
    return None

  def _find(self, mod, name):
    parsed = self._parse(mod)
    if parsed is None:
      return mod, None
    imports, defs = parsed
    parts = name.split(".")
    node = defs.get(parts[0])
    if node is None and imports.get(parts[0], ("",))[0] == "obj":
      return self._find(imports[parts[0]][1], ".".join([imports[parts[0]][2]] + parts[1:]))
    if node is None and imports.get(parts[0], ("",))[0] == "mod" and len(parts) > 1:
      return self._find(imports[parts[0]][1], ".".join(parts[1:]))
    if isinstance(node, ast.ClassDef):
      method = parts[1] if len(parts) > 1 else "__init__"
      node = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == method),
                  None)
    return mod, node

  def visit(self, mod, fname, param):
    if mod in self.skip or (mod, fname, param) in self.seen:
      return
    self.seen.add((mod, fname, param))
    mod, fn = self._find(mod, fname)
    if fn is None or mod in self.skip:
      return
    if mod not in self.reached:
      self.reached.append(mod)
    names = {param}
    for n in ast.walk(fn):  # sections bound to names: tc = config.teacher
      if (isinstance(n, ast.Assign) and isinstance(n.value, (ast.Attribute, ast.Name))
          and _chain_root(n.value) in names):
        names |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    for n in ast.walk(fn):
      if not isinstance(n, ast.Call):
        continue
      target = self._resolve(mod, n.func)
      if target is None or not target[0].startswith("ibmd_jax"):
        continue
      _, callee = self._find(*target)
      if callee is None:
        continue
      params = [a.arg for a in callee.args.args]
      if params and params[0] in ("self", "cls"):
        params = params[1:]
      for i, a in enumerate(n.args):
        if _chain_root(a) in names and i < len(params):
          self.visit(target[0], target[1], params[i])
      for k in n.keywords:
        if k.arg and _chain_root(k.value) in names:
          self.visit(target[0], target[1], k.arg)


def config_modules(root: str) -> list:
  tracer = _Tracer(root)
  tracer.visit("ibmd_jax.run", "run", "config")
  return tracer.reached


if __name__ == "__main__":
  found = config_modules(sys.argv[1] if len(sys.argv) > 1 else ".")
  print(len(found), "modules:", ", ".join(found))
