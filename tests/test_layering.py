"""The layers import only downwards: core < methods, models (paramdecomp.models, the toy models:
the top-level folder toy_models/, installed as paramdecomp.toy_models) < runs < configs < scripts. Checked on the source (every import statement, also inside
functions), so an upward import fails here before it can bite."""
import ast
import pathlib


ROOT = pathlib.Path(__file__).resolve().parents[1]

# the layer of each top-level area, and the layers it may import (besides itself)
LAYERS = {
    "paramdecomp.core": set(),
    "paramdecomp.methods": {"paramdecomp.core"},
    "paramdecomp.models": {"paramdecomp.core"},
    "paramdecomp.toy_models": {"paramdecomp.core"},
    "paramdecomp.runs": {"paramdecomp.core", "paramdecomp.methods", "paramdecomp.models",
                         "paramdecomp.toy_models"},
    "paramdecomp.configs": {"paramdecomp.core", "paramdecomp.methods", "paramdecomp.models",
                            "paramdecomp.toy_models", "paramdecomp.runs"},
}
OURS = ("paramdecomp", "toy_models", "scripts")   # a bare `toy_models` import is unlayered: refused


def layer_of(module: str) -> str | None:
  for name in sorted(LAYERS, key=len, reverse=True):
    if module == name or module.startswith(name + "."):
      return name
  return None


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  rel = path.relative_to(root).with_suffix("")
  parts = list(rel.parts)
  if parts[0] == "toy_models":   # the folder installs as paramdecomp.toy_models
    parts = ["paramdecomp"] + parts
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def imports(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, module) of every absolute import of our own code in `path`."""
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out += [(node.lineno, a.name) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from paramdecomp import runs` names a module too
      out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
  return [(n, m) for n, m in out if m.split(".")[0] in OURS]


def sources(root: pathlib.Path) -> list[pathlib.Path]:
  """Our modules: paramdecomp/ (without the link paramdecomp/toy_models) and toy_models/."""
  own = [p for p in (root / "paramdecomp").rglob("*.py")
         if "toy_models" not in p.relative_to(root).parts]
  return sorted(own + list((root / "toy_models").rglob("*.py")))


def violations(root: pathlib.Path = ROOT) -> list[str]:
  """'file:line: layer imports module' for every import of a higher (or unlayered) area."""
  bad = []
  for path in sources(root):
    mine = layer_of(module_name(path, root))
    if mine is None:  # paramdecomp/__init__.py: the public surface gathers the layers
      continue
    for line, mod in imports(path):
      theirs = layer_of(mod)
      if theirs != mine and theirs not in LAYERS[mine]:
        bad.append(f"{path.relative_to(root)}:{line}: {mine} imports {mod}")
  return bad


def test_no_layer_imports_a_higher_one():
  assert violations() == []


def test_an_upward_import_is_caught(tmp_path):
  """The check is not vacuous: a core module that imports a method is reported."""
  for path in sources(ROOT):
    dest = tmp_path / path.relative_to(ROOT)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(path.read_text())
  (tmp_path / "paramdecomp/core/pytree.py").write_text(
      (ROOT / "paramdecomp/core/pytree.py").read_text() + "\nfrom paramdecomp.methods import apd\n")
  (tmp_path / "toy_models/tms.py").write_text(
      (ROOT / "toy_models/tms.py").read_text() + "\ndef f():\n  from paramdecomp.runs import targets\n")
  bad = violations(tmp_path)
  assert len(bad) == 2, bad
  assert "paramdecomp/core/pytree.py" in bad[0] and "imports paramdecomp.methods.apd" in bad[0]
  assert "toy_models/tms.py" in bad[1] and "paramdecomp.runs.targets" in bad[1]


def test_toy_models_are_imported_under_the_package_name_only():
  """The folder installs as paramdecomp.toy_models; a bare `import toy_models` would load a second
  copy of every module (two registries) and fails outside the repository."""
  bare = []
  for area in ("paramdecomp", "toy_models", "scripts", "tests"):
    for path in sorted((ROOT / area).rglob("*.py")):
      if "toy_models" in path.relative_to(ROOT).parts[1:]:
        continue  # the link paramdecomp/toy_models
      bare += [f"{path.relative_to(ROOT)}:{n}" for n, m in imports(path)
               if m.split(".")[0] == "toy_models"]
  assert bare == []
