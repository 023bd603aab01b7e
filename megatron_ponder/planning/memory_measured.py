"""The memory part of the planner's ``--validate``: the activation model against measurement,
small models trained on CPU (gloo ranks, megatron-core's mock data), counting the bytes autograd
actually keeps for backward.

Every tensor autograd saves goes through ``torch.autograd.graph.saved_tensors_hooks``; the hook
counts its storage (unique storages, so views and tensors saved twice count once; weights
excluded) from when it is saved until autograd drops it (after that node's backward), and the
peak of that live total over one training step (all micro-batches and passes, forward and
backward, no optimizer step) is the measurement. ``ratio`` is estimate / measured.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

from megatron_ponder.local_ranks import run_local_ranks


class SavedTensorMeter:
    """Live bytes of the storages autograd keeps for backward, and their peak."""

    def __init__(self, excluded_storages=()):
        self.excluded = set(excluded_storages)
        self.refs: Dict[int, int] = {}
        self.sizes: Dict[int, int] = {}
        self.live = 0
        self.peak = 0

    def pack(self, tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.excluded or storage.nbytes() == 0:
            return tensor
        return _Held(self, key, storage.nbytes(), tensor)

    @staticmethod
    def unpack(packed):
        return packed.tensor if isinstance(packed, _Held) else packed

    def _add(self, key: int, size: int) -> None:
        count = self.refs.get(key, 0)
        if count == 0:
            self.sizes[key] = size
            self.live += size
            self.peak = max(self.peak, self.live)
        self.refs[key] = count + 1

    def _remove(self, key: int) -> None:
        count = self.refs[key] - 1
        if count == 0:
            del self.refs[key]
            self.live -= self.sizes.pop(key)
        else:
            self.refs[key] = count

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


class _Held:
    __slots__ = ("meter", "key", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, size: int, tensor: torch.Tensor):
        self.meter, self.key, self.tensor = meter, key, tensor
        meter._add(key, size)

    def __del__(self):
        self.meter._remove(self.key)


@dataclass(frozen=True)
class MemoryCase:
    """One configuration of the memory check (``--validate-parts memory``)."""

    name: str
    arch: str = "llama"
    thoughts: int = 1
    jacobi: int = 2
    recompute: str = "none"
    tp: int = 1
    pp: int = 1
    num_layers: int = 2
    micro_batches: int = 1
    bf16: bool = False
    extra: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def flags(self) -> List[str]:
        flags = [
            "--model-arch", self.arch, "--num-layers", str(self.num_layers),
            "--hidden-size", "64", "--num-attention-heads", "4",
            "--seq-length", "32", "--mock-data", "--tokenizer-type", "NullTokenizer",
            "--vocab-size", "1000", "--micro-batch-size", "2",
            "--global-batch-size", str(2 * self.micro_batches),
            "--num-latent-thoughts", str(self.thoughts),
            "--jacobi-iterations", str(self.jacobi),
            "--tensor-model-parallel-size", str(self.tp),
            "--pipeline-model-parallel-size", str(self.pp),
            "--train-iters", "1", "--num-workers", "0", "--seed", "1", "--eval-iters", "0",
        ]
        if self.tp > 1:
            flags.append("--sequence-parallel")
        if self.recompute != "none":
            flags += ["--recompute-granularity", self.recompute]
        if self.bf16:
            flags.append("--bf16")
        return flags + list(self.extra)


# Single-process cases first (quick), then the multi-rank ones.
MEMORY_CASES = (
    MemoryCase("llama K=0", thoughts=0),
    MemoryCase("llama K=1 J=2", thoughts=1),
    MemoryCase("llama K=2 J=2", thoughts=2),
    MemoryCase("gpt_neox K=1 J=2", arch="gpt_neox"),
    MemoryCase("llama K=1 J=2 GQA", extra=("--num-query-groups", "2")),
    MemoryCase("llama K=1 J=2 bf16", bf16=True),
    MemoryCase("llama K=1 J=2 recompute selective", recompute="selective"),
    MemoryCase("llama K=1 J=2 recompute full", recompute="full"),
    MemoryCase("llama K=1 J=2 TP=2 SP", tp=2),
    MemoryCase("llama K=1 J=2 PP=2 M=4", pp=2, num_layers=4, micro_batches=4),
)


def measure_rank(flags: List[str], world_size: int) -> Tuple[int, int, int, int]:
    """On one rank: (pipeline stage, number of micro-batches, peak bytes kept for backward
    during one step's forward and backward, the padded vocabulary size)."""
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state

    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import training_session

    torch.set_num_threads(1)
    with training_session(parse_args(flags), world_size) as trainer:
        config = trainer.config
        data = trainer.training_data()
        excluded = {param.untyped_storage().data_ptr() for param in trainer.model.parameters()}
        excluded |= {param.main_grad.untyped_storage().data_ptr()
                     for param in trainer.model.parameters()
                     if getattr(param, "main_grad", None) is not None}
        meter = SavedTensorMeter(excluded)
        with meter.hooks():
            trainer.compute_gradients(data)
        stage = parallel_state.get_pipeline_model_parallel_rank()
        return stage, trainer.num_microbatches, meter.peak, config.model.vocab_size


def measure_case(case: MemoryCase, timeout: float = 900) -> List[Tuple[int, int, int, int]]:
    """``measure_rank`` on every rank of ``case`` (fresh processes)."""
    return run_local_ranks(measure_rank, case.world_size, case.flags(), case.world_size,
                           timeout=timeout, extra_env={"CUDA_VISIBLE_DEVICES": ""})


def estimate_case(case: MemoryCase, stage: int, num_microbatches: int,
                  vocab_size: int) -> int:
    """The activation model's bytes for ``case`` on ``stage``."""
    from megatron_ponder.planning.memory import ActivationSetup, activation_bytes
    from megatron_ponder.training.arguments import parse_args

    config = parse_args(case.flags())
    model = config.model
    model.vocab_size = vocab_size
    setup = ActivationSetup(
        micro_batch_size=config.train.micro_batch_size, seq_length=config.data.seq_length,
        tp=case.tp, sequence_parallel=case.tp > 1, recompute=case.recompute,
        dtype_bytes=2 if case.bf16 else 4)
    estimate = activation_bytes(model, config.ponder, setup, config.ponder.jacobi_iterations,
                                pipeline_size=case.pp, stage=stage,
                                num_microbatches=num_microbatches)
    return estimate.total


@dataclass(frozen=True)
class MemoryLine:
    case: str
    stage: int
    estimate: int
    measured: int

    @property
    def ratio(self) -> float:
        return self.estimate / self.measured

    def text(self) -> str:
        stage = f" stage {self.stage}" if self.stage is not None else ""
        return (f"{self.case + stage:<42} estimate {self.estimate / 2**10:9.1f} KiB  "
                f"measured {self.measured / 2**10:9.1f} KiB  ratio {self.ratio:.3f}")


def validate_memory(cases=MEMORY_CASES, timeout: float = 900, printer=print) -> List[MemoryLine]:
    """Measure and estimate every case; one line per case (per pipeline stage)."""
    lines = []
    for case in cases:
        results = measure_case(case, timeout)
        by_stage = {}
        for stage, microbatches, peak, vocab in results:
            previous = by_stage.get(stage)
            by_stage[stage] = (max(previous[0], peak) if previous else peak, microbatches,
                               vocab)
        for stage, (peak, microbatches, vocab) in sorted(by_stage.items()):
            line = MemoryLine(case.name, stage if case.pp > 1 else None,
                              estimate_case(case, stage, microbatches, vocab), peak)
            printer(line.text())
            lines.append(line)
    return lines


def select_memory_cases(names: Optional[List[str]]) -> Tuple[MemoryCase, ...]:
    if not names:
        return MEMORY_CASES
    known = {case.name: case for case in MEMORY_CASES}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown validation case(s) {unknown}; choose from {list(known)}")
    return tuple(known[name] for name in names)

