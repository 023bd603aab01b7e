"""Load the scripts in tools/ as modules, so tests can call their ``main(argv)`` in-process
(one megatron-core import for the whole session instead of one per run)."""

import importlib.util
import os

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
TOOLS_DIR = os.path.join(REPO_ROOT, "tools")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", os.path.join(TOOLS_DIR,
                                                                                f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def preprocess_tool():
    return load_tool("preprocess_data")


@pytest.fixture(scope="session")
def corpus_tool():
    return load_tool("prepare_default_corpus")
