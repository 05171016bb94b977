"""The public API stays what facejob/__init__.py promises, whichever submodules are loaded."""
from __future__ import annotations

import importlib
import pkgutil

import facejob


def test_public_functions_survive_importing_every_module():
    # Importing a submodule sets it as an attribute of its package: a module named like a public
    # function (facejob/verify.py once, facejob/index/ if there were one) would replace it.
    names = [m.name for m in pkgutil.walk_packages(facejob.__path__, "facejob.") if m.name != "facejob.__main__"]
    for name in names:
        importlib.import_module(name)
    assert "facejob.indexing.verify" in names and "facejob.indexing.driver" in names
    assert facejob.index.__module__ == facejob.verify.__module__ == "facejob"
    assert set(facejob.__all__) == {"IndexConfig", "ModelConfig", "RunConfig", "ConfigError", "index", "verify"}
