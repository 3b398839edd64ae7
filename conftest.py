"""Collect the repository root as a plain folder, not as a Python package.

The root holds ComfyUI's entry `__init__.py` (relative imports, a folder name that need not be a valid module
name), which pytest would otherwise import as a package before running any test.
"""
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent


class _RootIsAFolder:
    # Registered globally: pytest asks the root's *parent* folder how to collect the root, which a conftest
    # hook living in the root itself would not be consulted for.
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == _ROOT:
            return pytest.Dir.from_parent(parent, path=Path(path))
        return None


def pytest_configure(config):
    config.pluginmanager.register(_RootIsAFolder(), "layert2v-root-is-a-folder")
