"""megatron_ponder.parallel is library code: it must not depend on the training package."""

import ast
import pathlib

import megatron_ponder.parallel as parallel


def test_parallel_package_does_not_import_training():
    for path in pathlib.Path(parallel.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith("megatron_ponder.training"), (path.name, name)
