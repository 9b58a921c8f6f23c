"""The packages the code imports are the packages ``pyproject.toml`` declares (deptry).

deptry reads every import under the repository (tests excluded, see ``[tool.deptry]``) and fails
on an import that is not declared (DEP001), a declared package never imported (DEP002, except the
ones ``per_rule_ignores`` names with the reason), a package used only through another one
(DEP003) or a dev dependency imported by the package (DEP004).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_match_the_declared_dependencies():
    result = subprocess.run([sys.executable, "-m", "deptry", "."], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
