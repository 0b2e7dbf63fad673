"""Every package of the library is listed in pyproject.toml, and the library never imports click."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "embedstore").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml packages: {sorted(found - listed)}"
    assert "embedstore_cli" in listed


def test_library_never_imports_click():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "embedstore").rglob("*.py")
                 if "import click" in p.read_text() or "from click" in p.read_text()]  # fmt: skip
    assert offenders == []
