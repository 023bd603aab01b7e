"""The megatron-core boundary: private megatron-core names, torch.cuda reassignment and
torch-function modes appear only inside megatron_ponder/mcore, and the CPU layer is switched on
only where megatron-core's runtime is set up, and off again by ``mcore.shutdown``."""

import ast
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
from typing import Dict, FrozenSet, List, Set

import megatron.core
import pytest

import megatron_ponder

PACKAGE = pathlib.Path(megatron_ponder.__file__).parent
REPO = PACKAGE.parent
BOUNDARY = PACKAGE / "mcore"
MEGATRON_CORE = pathlib.Path(megatron.core.__file__).parent


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@functools.lru_cache(maxsize=None)
def _megatron_private_names() -> FrozenSet[str]:
    """Every private function, method, class and module-level name megatron-core defines (a
    regular expression: parsing its few hundred files would take minutes on a loaded CPU)."""
    pattern = re.compile(r"^(?:\s*(?:async\s+)?(?:def|class)\s+(_\w+)|(_\w+)\s*[:=])",
                         re.MULTILINE)
    names = set()
    for path in MEGATRON_CORE.rglob("*.py"):
        for match in pattern.finditer(path.read_text(errors="replace")):
            names.add(match.group(1) or match.group(2))
    return frozenset(name for name in names if _is_private(name))


def _own_names(files: List[pathlib.Path]) -> Set[str]:
    """Names our code defines itself (functions, classes, variables, its own attributes)."""
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                    _dotted(node.value) in ("self", "cls"):
                names.add(node.attr)
    return names


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` for a Name/Attribute chain, else ''."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Scanner(ast.NodeVisitor):
    """Offences of one file against the boundary."""

    def __init__(self, megatron_private: Set[str], own: Set[str]):
        self.megatron_private = megatron_private
        self.own = own
        self.aliases: Dict[str, str] = {}  # local name -> the module or object it stands for
        self.offences: List[str] = []

    def _resolve(self, node: ast.AST) -> str:
        dotted = _dotted(node)
        head, _, rest = dotted.partition(".")
        full = self.aliases.get(head, head)
        return f"{full}.{rest}" if rest else full

    def _offence(self, node: ast.AST, what: str) -> None:
        self.offences.append(f"line {node.lineno}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            if alias.name.startswith("megatron.core") and \
                    any(_is_private(part) for part in alias.name.split(".")):
                self._offence(node, f"imports private megatron-core module {alias.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
            if alias.name == "TorchFunctionMode":
                self._offence(node, "imports TorchFunctionMode (the CPU layer's tool)")
            if not module.startswith("megatron.core"):
                continue
            if any(_is_private(part) for part in module.split(".") + [alias.name]):
                self._offence(node, f"imports private megatron-core name {module}.{alias.name}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        if node.attr == "TorchFunctionMode":
            self._offence(node, "uses TorchFunctionMode (the CPU layer's tool)")
        if not _is_private(node.attr):
            return
        owner = self._resolve(node.value)
        if owner.startswith("megatron.core"):
            self._offence(node, f"uses private megatron-core name {owner}.{node.attr}")
        elif node.attr in self.megatron_private and node.attr not in self.own and \
                owner not in ("self", "cls"):
            self._offence(node, f"uses megatron-core's private {node.attr}")

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = _dotted(node.func)
        if name in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            target, attribute = node.args[0], node.args[1]
            if name == "setattr" and self._resolve(target).startswith("torch.cuda"):
                self._offence(node, f"replaces a torch.cuda function ({ast.unparse(node)})")
            if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str) and \
                    attribute.value in self.megatron_private and \
                    attribute.value not in self.own:
                self._offence(node, f"uses megatron-core's private {attribute.value}")

    def _assigned(self, targets) -> None:
        for target in targets:
            for node in ast.walk(target):
                if isinstance(node, ast.Attribute) and \
                        self._resolve(node.value).startswith("torch.cuda"):
                    self._offence(node, f"assigns {self._resolve(node)}")

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        self._assigned(node.targets)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.generic_visit(node)
        self._assigned([node.target])

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self.generic_visit(node)
        self._assigned([node.target])

    def visit_Delete(self, node: ast.Delete) -> None:
        self.generic_visit(node)
        self._assigned(node.targets)

    def visit_Name(self, node: ast.Name) -> None:
        if self.aliases.get(node.id, node.id).endswith("TorchFunctionMode"):
            self._offence(node, "uses TorchFunctionMode (the CPU layer's tool)")


def _outside_boundary() -> List[pathlib.Path]:
    files = [path for path in PACKAGE.rglob("*.py") if BOUNDARY not in path.parents]
    return files + sorted((REPO / "tools").glob("*.py")) + [REPO / "pretrain_ponder.py"]


def boundary_offences(files: List[pathlib.Path]) -> List[str]:
    megatron_private = _megatron_private_names()
    own = _own_names(files)
    offences = []
    for path in files:
        scanner = _Scanner(megatron_private, own)
        scanner.visit(ast.parse(path.read_text()))
        offences += [f"{os.path.relpath(path, REPO)} {offence}" for offence in scanner.offences]
    return offences


def test_megatron_internals_and_cuda_patching_stay_inside_the_boundary():
    offences = boundary_offences(_outside_boundary())
    assert not offences, "outside megatron_ponder/mcore:\n" + "\n".join(offences)


def test_the_scan_finds_each_kind_of_offence(tmp_path):
    source = tmp_path / "offender.py"
    source.write_text(
        "import torch\n"
        "import torch.cuda.random as cuda_random\n"
        "from megatron.core.tensor_parallel import random as mcore_random\n"
        "from megatron.core.tensor_parallel.random import _set_cuda_rng_state\n"
        "from torch.overrides import TorchFunctionMode\n"
        "torch.cuda.synchronize = lambda: None\n"
        "setattr(cuda_random, 'manual_seed', print)\n"
        "mcore_random._get_cuda_rng_state()\n"
        "def patch(opt):\n"
        "    original = getattr(opt, '_set_main_param_and_optimizer_states')\n"
        "    opt._set_main_param_and_optimizer_states = original\n")
    offences = boundary_offences([source])
    expected = ["line 4: imports private", "line 5: imports TorchFunctionMode",
                "line 6: assigns torch.cuda.synchronize", "line 7: replaces a torch.cuda",
                "line 8: uses private megatron-core name", "line 10: uses megatron-core's",
                "line 11: uses megatron-core's"]
    for start in expected:
        assert any(start in offence for offence in offences), (start, offences)
    assert len(offences) == len(expected), offences


# ------------------------------------------------------------------ the CPU layer's scope
# Run in a fresh interpreter: the test process may have the layer on (other tests set up
# megatron-core), and these tests switch it on and off.
_SCOPE_SCRIPT = r"""
import json, sys
import torch
import torch.cuda.random as cuda_random
from torch.overrides import _get_current_function_mode_stack

NAMES = ("current_device", "synchronize", "set_device", "empty_cache", "get_rng_state",
         "set_rng_state", "manual_seed", "manual_seed_all")
ORIGINAL = {name: getattr(torch.cuda, name) for name in NAMES}
ORIGINAL_RANDOM = {name: getattr(cuda_random, name) for name in NAMES if hasattr(cuda_random, name)}
report = {}

def state():
    return {"modes": len(_get_current_function_mode_stack()),
            "replaced": sorted(n for n in NAMES if getattr(torch.cuda, n) is not ORIGINAL[n]) +
                        sorted("random." + n for n, f in ORIGINAL_RANDOM.items()
                               if getattr(cuda_random, n) is not f)}

import megatron_ponder, megatron_ponder.hf, megatron_ponder.mcore
import megatron_ponder.training.trainer, megatron_ponder.parallel.pipeline
from megatron.core.tensor_parallel import random as mcore_random
MCORE_RNG = mcore_random._get_cuda_rng_state
report["after import"] = state()

from tests.tiny_models import save_tiny_hf
save_tiny_hf(sys.argv[1], "llama")
model = megatron_ponder.hf.from_pretrained(sys.argv[1])
model(torch.tensor([[1, 2, 3]]))
report["after from_pretrained"] = state()

from megatron_ponder import mcore
from megatron_ponder.mcore import cpu
with mcore.cuda_as_cpu():
    with mcore.cuda_as_cpu():
        report["nested cuda_as_cpu"] = state()
        report["cuda placement"] = str(torch.zeros(1, device="cuda").device)
    report["inner cuda_as_cpu left"] = state()
report["cuda_as_cpu left"] = state()

mcore.init(single_process=True, seed=3)
report["after init"] = state()
report["megatron rng helper replaced"] = mcore_random._get_cuda_rng_state is not MCORE_RNG
report["activate again"] = cpu.activate()
report["after a second activate"] = state()
mcore.shutdown()
report["after shutdown"] = state()
report["megatron rng helper back"] = mcore_random._get_cuda_rng_state is MCORE_RNG
cpu.deactivate()
report["after a second deactivate"] = state()
print("REPORT" + json.dumps(report))
"""


@pytest.mark.skipif(__import__("torch").cuda.is_available(),
                    reason="the CPU layer switches on only without CUDA")
def test_cpu_layer_is_on_only_between_init_and_shutdown(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _SCOPE_SCRIPT, str(tmp_path / "llama")], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    untouched = {"modes": 0, "replaced": []}
    import torch.cuda.random as cuda_random

    every_name = ["current_device", "empty_cache", "get_rng_state", "manual_seed",
                  "manual_seed_all", "set_device", "set_rng_state", "synchronize"]
    on = {"modes": 1, "replaced": every_name + [
        f"random.{name}" for name in every_name if hasattr(cuda_random, name)]}
    assert report["after import"] == untouched
    assert report["after from_pretrained"] == untouched
    assert report["nested cuda_as_cpu"] == on
    assert report["cuda placement"] == "cpu"
    assert report["inner cuda_as_cpu left"] == on  # the outer block switched it on
    assert report["cuda_as_cpu left"] == untouched
    assert report["after init"] == on
    assert report["megatron rng helper replaced"] is True
    assert report["activate again"] is False
    assert report["after a second activate"] == on  # idempotent: still one mode
    assert report["after shutdown"] == untouched
    assert report["megatron rng helper back"] is True
    assert report["after a second deactivate"] == untouched


# ------------------------------------------------------------------ the version check
def test_supported_version_passes_and_others_are_refused_or_warned(monkeypatch, capsys):
    from megatron_ponder.mcore import version

    assert version.installed_version() in version.SUPPORTED_VERSIONS
    version.check_version(strict=True)  # the installed one is supported

    monkeypatch.setattr(version, "installed_version", lambda: "0.99.0")
    monkeypatch.setattr(version, "_warned", False)
    with pytest.raises(RuntimeError, match=r"megatron-core 0\.99\.0 is not supported "
                                           r"\(supported: 0\.16\.1\)"):
        version.check_version(strict=True)
    version.check_version(strict=False)
    version.check_version(strict=False)
    out = capsys.readouterr().out
    assert out.count("megatron-core 0.99.0 is not supported") == 1  # warned once
    assert len(out.strip().splitlines()) == 1
