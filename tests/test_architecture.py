"""The import structure of the suite (docs/architecture.md): layers, no cycles, no hidden imports.

* ``lint-imports`` (import-linter) checks the contracts in ``pyproject.toml``: the packages are
  layered bnn < studies < analysis < reports, the modules inside each of the first three are
  layered, and no package has an import cycle between its modules. Function-level imports count
  too.
* Every module of ``bnn``, ``studies`` and ``analysis`` sits in one of its package's layers (a new
  module must be placed).
* No library module imports a project module inside a function (where a cycle or an upward
  dependency would hide); only the command-line entry points (``__main__``) may defer imports.
* Every module imports on its own in an interpreter where no project module was imported before,
  so no module works only because another one happened to be imported first.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bnn", "studies", "analysis", "reports")


def _modules(package: str) -> dict[str, Path]:
    """Dotted name -> file of every module of ``package`` (packages by their ``__init__``)."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


ALL_MODULES = {name: path for package in PACKAGES for name, path in _modules(package).items()}


def _lint_imports() -> Path:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.exists():
        return exe
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports is not installed (pip install -e '.[dev]')")
    return Path(found)


def test_import_contracts_hold():
    done = subprocess.run(
        [str(_lint_imports()), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-4000:]
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert f"Contracts: {len(contracts)} kept, 0 broken." in report


@pytest.mark.parametrize("package", ["bnn", "studies", "analysis"])
def test_every_module_is_in_a_layer(package):
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layered,) = [c for c in contracts if c.get("containers") == [package]]
    placed = {name.strip() for layer in layered["layers"] for name in layer.split("|")}
    unplaced = sorted(
        name for name in _modules(package) if name != package and name.split(".")[1] not in placed
    )
    assert not unplaced, f"place these modules in a layer of the {package} contract in pyproject.toml: {unplaced}"


def _function_level_project_imports(path: Path) -> list[str]:
    """``module:line imported`` for each import of a project module inside a function."""
    tree = ast.parse(path.read_text())
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else ["<relative>"]
            else:
                continue
            project = [n for n in names if n == "<relative>" or n.split(".")[0] in PACKAGES]
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
            found += [f"{where}:{node.lineno} {n}" for n in project]
    return found


def test_no_project_import_hides_in_a_function():
    hidden = [
        hit
        for name, path in ALL_MODULES.items()
        if not name.endswith("__main__")
        for hit in _function_level_project_imports(path)
    ]
    assert not hidden, "move these imports to module level (or break the cycle that forced them):\n" + "\n".join(
        hidden
    )


def test_the_ast_check_finds_a_hidden_import(tmp_path):
    """The check above is not vacuous: a function-level project import is reported."""
    module = tmp_path / "m.py"
    module.write_text("import bnn\n\ndef f():\n    from bnn.train import fit\n    import os\n    return fit, os\n")
    assert _function_level_project_imports(module) == ["m.py:4 bnn.train"]


# Heavy third-party libraries are imported once, before the fork, only to make the per-module
# children cheap; no project module is imported in the parent.
FRESH_IMPORTS = textwrap.dedent(
    """
    import importlib, os, sys, traceback
    for lib in ("torch", "torchvision", "timm", "numpy", "pandas", "sklearn", "scipy", "matplotlib",
                "seaborn", "skimage", "PIL", "mlflow", "optuna", "sqlalchemy", "pydantic", "yaml",
                "papermill", "nbformat", "tqdm"):
        importlib.import_module(lib)
    project = ("bnn", "studies", "analysis", "reports")
    assert not [m for m in sys.modules if m.split(".")[0] in project], "project module imported early"
    failed, running = [], {}
    names = list(sys.argv[1:])
    while names or running:  # one forked child per module, as many at once as there are cores
        while names and len(running) < (os.cpu_count() or 1):
            name = names.pop(0)
            pid = os.fork()
            if pid == 0:
                try:
                    importlib.import_module(name)
                except BaseException:
                    traceback.print_exc()
                    os._exit(1)
                os._exit(0)
            running[pid] = name
        pid, status = os.wait()
        if os.waitstatus_to_exitcode(status) != 0:
            failed.append(running[pid])
        del running[pid]
    print("FAILED:", " ".join(sorted(failed)))
    sys.exit(1 if failed else 0)
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.integration
def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(ALL_MODULES)
    done = subprocess.run(
        [sys.executable, "-c", FRESH_IMPORTS, *names],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    assert done.stdout.strip().endswith("FAILED:"), done.stdout


def _private_reads(path: Path) -> list[str]:
    """``file:line expression`` for each read of another object's private attribute (``x._name``,
    not ``self``/``cls``): a library's private state that its next release may rename."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            where = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
            found.append(f"{where}:{node.lineno} {ast.unparse(node)}")
    return found


def test_studies_use_only_the_public_api_of_optuna_and_mlflow():
    """``studies`` drives Optuna and MLflow through their public API (trial ids via
    ``studies.claim.TrialIds``, not ``trial._trial_id``)."""
    reads = [hit for name, path in ALL_MODULES.items() if name.startswith("studies") for hit in _private_reads(path)]
    assert not reads, "use the library's public API instead:\n" + "\n".join(reads)


def test_the_private_read_check_finds_one(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f(trial, self):\n    return trial._trial_id, self._x, trial.number\n")
    assert _private_reads(module) == ["m.py:2 trial._trial_id"]
