"""The packages form layers in the order the data flows, data_gen -> editseq -> eval: a module
imports its own layer and the ones below, never one above (docs/ARCHITECTURE.md)."""
import ast
import pathlib

import pytest

from tests.conftest import REPO_ROOT

LAYERS = ("data_gen", "editseq", "eval")


def imported_packages(path: pathlib.Path) -> set[str]:
  """Top-level packages a module imports anywhere in it (functions included), also by
  `importlib.import_module("name")`; relative imports stay in its own package."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name.split(".")[0] for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.add(node.module.split(".")[0])
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
      found.add(node.args[0].value.split(".")[0])
  return found


def test_imported_packages_sees_every_kind_of_import(tmp_path):
  module = tmp_path / "m.py"
  module.write_text("import os.path\nfrom eval import run\nfrom . import sibling\n"
                    "def f():\n  import editseq.cli\n  importlib.import_module('configs.base')\n")
  assert imported_packages(module) == {"os", "eval", "editseq", "configs"}


@pytest.mark.parametrize("package", LAYERS)
def test_no_module_imports_a_higher_layer(package):
  higher = set(LAYERS[LAYERS.index(package) + 1:])
  upward = {str(path.relative_to(REPO_ROOT)): sorted(imported_packages(path) & higher)
            for path in sorted((REPO_ROOT / package).rglob("*.py"))}
  assert {module: names for module, names in upward.items() if names} == {}
