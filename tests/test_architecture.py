"""The import directions of docs/architecture.md hold: every import of the library, at the top
of a file or inside a function, goes down the table's rows (or stays in its own package)."""

import ast
import glob
import os
import re

from tests.helpers import ROOT

LIBRARY = os.path.join(ROOT, "omniflatten_jax")


def rows() -> dict[str, int]:
    """``{package or module: row}`` from the table in docs/architecture.md."""
    text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
    found = re.findall(r"^\| (\d+) \| `([\w.]+)/?` \|", text, re.M)
    return {name.removesuffix(".py"): int(row) for row, name in found}


def unit(module: str) -> str:
    """``omniflatten_jax.a.b`` -> ``a``: the table's unit (a package or a top-level module)."""
    return module.split(".")[1]


def imports(path: str):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "omniflatten_jax":
                yield from (f"omniflatten_jax.{a.name}" for a in node.names)
            elif node.module.startswith("omniflatten_jax."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("omniflatten_jax."))


def test_every_import_goes_down_the_table():
    table = rows()
    files = glob.glob(os.path.join(LIBRARY, "**", "*.py"), recursive=True)
    units = {os.path.relpath(f, LIBRARY).split(os.sep)[0].removesuffix(".py") for f in files}
    assert units - {"__init__"} == set(table), "docs/architecture.md lists every package"
    wrong = []
    for path in files:
        source = os.path.relpath(path, LIBRARY).split(os.sep)[0].removesuffix(".py")
        if source == "__init__":
            continue
        for module in imports(path):
            target = unit(module)
            if target != source and table[target] >= table[source]:
                wrong.append(f"{os.path.relpath(path, ROOT)} imports {module} "
                             f"(row {table[source]} -> row {table[target]})")
    assert not wrong, "\n".join(wrong)
