"""One label ignore value (-100) for every package: defined in xt.core.labels, imported elsewhere."""
from __future__ import annotations

import ast
import pathlib

from xt.core.labels import IGNORE_INDEX

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_package_uses_the_one_constant():
    import xt.core.engine
    import xt.data
    import xt.parallel.sp_batch
    assert IGNORE_INDEX == -100
    assert xt.core.engine.IGNORE_INDEX is xt.data.IGNORE_INDEX is xt.parallel.sp_batch.IGNORE_INDEX is IGNORE_INDEX


def test_no_literal_minus_100_in_package_code():
    """A literal -100 in code (not in docstrings or comments, which the AST does not hold as
    numbers) is the ignore value written again; import IGNORE_INDEX instead."""
    home = ROOT / "packages" / "xt-core" / "src" / "xt" / "core" / "labels.py"
    found = []
    for f in (ROOT / "packages").glob("*/src/xt/**/*.py"):
        if f == home:
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if (isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
                    and isinstance(node.operand, ast.Constant) and node.operand.value == 100):
                found.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not found, "use xt.core.labels.IGNORE_INDEX:\n" + "\n".join(found)
