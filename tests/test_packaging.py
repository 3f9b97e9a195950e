"""Each package imports only what its own pyproject declares (docs/architecture.md, Packages and their rules).

Two checks per package:
1. static: every `import` in its source names the stdlib, a declared dependency, or an allowed
   lower xt package;
2. dynamic: in a fresh interpreter where every top-level module that is NOT declared is blocked,
   importing all of the package's modules still works (so `pip install packages/xt-models` alone,
   with its declared dependencies, is enough: no click, Ray, xt.data or xt.cli behind the scenes).
"""
from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ALLOWED = {
    "core": set(), "kernels": {"core"}, "parallel": {"core", "kernels"},
    "models": {"core", "kernels", "parallel"}, "data": {"core"},
    "rl": {"core", "kernels", "parallel", "models", "data"},
    "cli": {"core", "kernels", "parallel", "models", "data", "rl"},
}
IMPORT_NAME = {"pyyaml": "yaml", "pillow": "PIL", "torch-npu": "torch_npu", "scikit-learn": "sklearn"}
PACKAGES = sorted(p.name.removeprefix("xt-") for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())


def _declared(pkg: str) -> tuple[set[str], set[str], set[str]]:
    """(required module names, optional-extra module names, declared xt packages) of xt-`pkg`."""
    meta = tomllib.loads((ROOT / "packages" / f"xt-{pkg}" / "pyproject.toml").read_text())["project"]
    def names(deps):
        out = set()
        for d in deps:
            n = re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].lower().replace("_", "-")
            out.add(n)
        return out
    req = names(meta.get("dependencies", []))
    opt = set().union(*[names(v) for v in meta.get("optional-dependencies", {}).values()]) if meta.get("optional-dependencies") else set()
    xt = {n.removeprefix("xt-") for n in req if n.startswith("xt-")}
    mods = {IMPORT_NAME.get(n, n.replace("-", "_")) for n in req if not n.startswith("xt-")}
    omods = {IMPORT_NAME.get(n, n.replace("-", "_")) for n in opt if not n.startswith("xt-")}
    return mods, omods, xt


def _modules(pkg: str) -> list[str]:
    """All modules of xt.`pkg`, except those that exist only for an optional extra (triton, npu),
    which are imported lazily when that backend is chosen."""
    src = ROOT / "packages" / f"xt-{pkg}" / "src"
    names = (".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
             for f in (src / "xt" / pkg).rglob("*.py"))
    return sorted(n for n in names if not {"triton", "npu"} & set(n.replace("_", ".").split(".")))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_static_imports_are_declared(pkg):
    mods, omods, xt = _declared(pkg)
    src = ROOT / "packages" / f"xt-{pkg}" / "src"
    bad = []
    for f in src.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for m in names:
                top = m.split(".")[0]
                if top == "xt":
                    sub = m.split(".")[1] if "." in m else pkg
                    if sub != pkg and (sub not in ALLOWED[pkg] or sub not in xt):
                        bad.append(f"{f.relative_to(ROOT)}:{node.lineno} imports {m}")
                elif top not in sys.stdlib_module_names and top != "__future__" and top not in mods | omods:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} imports undeclared {top}")
    assert not bad, "\n".join(bad)


def _blocked_import_script(pkg: str) -> str:
    """The Python source that imports every module of xt.`pkg` with the undeclared names blocked."""
    mods, _, xt = _declared(pkg)
    # What may be imported: stdlib, declared modules, declared xt packages, and whatever those
    # third-party dependencies themselves import (we only block the top-level names the *project*
    # could reach for: other xt packages and known heavy/undeclared libraries). A third-party module
    # is blocked only when this package's own code imports it: lower xt packages are checked with
    # their own declarations.
    blocked_xt = sorted(set(ALLOWED) - xt - {pkg})
    heavy = sorted({"click", "ray", "transformers", "triton", "torch_npu", "tokenizers", "rich",
                    "matplotlib", "msgspec", "safetensors", "jinja2", "hypothesis", "math_verify",
                    "reasoning_gym", "sympy"} - mods)
    return textwrap.dedent(f"""
        import importlib, importlib.abc, sys
        BLOCK_XT = {blocked_xt!r}
        HEAVY = {heavy!r}
        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                parts = name.split(".")
                if parts[0] == "xt" and len(parts) > 1 and parts[1] in BLOCK_XT:
                    raise ImportError("undeclared xt package " + name)
                if parts[0] in HEAVY:
                    caller = sys._getframe(1)
                    # block only imports made (directly) from xt code
                    while caller is not None and caller.f_code.co_filename.startswith("<frozen"):
                        caller = caller.f_back
                    if caller is not None and "/xt/{pkg}/" in caller.f_code.co_filename.replace("\\\\", "/"):
                        raise ImportError("undeclared dependency " + name)
                return None
        sys.meta_path.insert(0, Blocker())
        for m in {_modules(pkg)!r}:
            importlib.import_module(m)
        print("ok")
    """)


@pytest.fixture(scope="module")
def blocked_imports() -> dict[str, subprocess.CompletedProcess]:
    """``pkg -> result`` of each package's fresh interpreter (`_blocked_import_script`), run as
    many at a time as there are CPUs: each is one single-threaded interpreter start plus imports
    (~4-8 s), 34 s one after the other on a 2-core CPU."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    def run(pkg: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _blocked_import_script(pkg)], capture_output=True, text=True,
                              timeout=300)
    with ThreadPoolExecutor(max_workers=max(1, min(len(PACKAGES), os.cpu_count() or 1))) as pool:
        return dict(zip(PACKAGES, pool.map(run, PACKAGES)))


@pytest.mark.parametrize("pkg", PACKAGES)
def test_imports_with_only_declared_dependencies(blocked_imports, pkg):
    r = blocked_imports[pkg]
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def _xt_import_graph() -> dict[str, set[str]]:
    """``module -> intra-xt modules it imports``, over every module of every package.

    Counted: ``import xt.a.b`` and ``from xt.a import b`` anywhere in the file (module level, in
    functions, under ``TYPE_CHECKING``), and ``importlib.import_module("xt.a.b")`` with a literal
    name. ``from xt.a import name`` points at ``xt.a.name`` when that is a module, else at ``xt.a``.
    Importing a module also runs its packages' ``__init__``; that edge is counted except from a
    module to a package that contains it (Python is already importing that package then).

    Function-level imports count on purpose: a deferred import does not remove a dependency, it
    only hides the cycle from the interpreter until a call order breaks it (partially initialised
    modules). The three cycles this test was written for (cli build/convert, kernels backends/ops,
    DeepSeek model/mtp) were all of that kind, so a module-level-only walk would not have seen any.
    Not seen: names built at run time (``importlib.import_module(table[name])``).
    """
    files = {}
    for src in (ROOT / "packages").glob("*/src"):
        for f in (src / "xt").rglob("*.py"):
            files[".".join(f.relative_to(src).with_suffix("").parts).removesuffix(".__init__")] = f

    def owner(name: str) -> str | None:  # the longest prefix of `name` that is a module
        parts = name.split(".")
        while parts and ".".join(parts) not in files:
            parts.pop()
        return ".".join(parts) or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                targets = [node.args[0].value]
            for t in targets:
                dep = owner(t) if t.startswith("xt.") else None
                if dep and dep != mod and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return graph


def test_no_import_cycles_between_xt_modules():
    graph = _xt_import_graph()
    assert "xt.kernels.moe.grouped_gemm" in graph["xt.kernels.moe"]  # the walk sees the tree
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles between xt modules (docs/architecture.md, Packages and their rules):\n" + \
        "\n".join(cycles)
