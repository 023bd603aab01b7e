"""The bytes part of the planner's ``--validate``: the communication model against what a
training step really sends, small models trained one step on CPU gloo ranks, every collective and
send counted.

Counting wraps the methods of ``torch.distributed.ProcessGroup`` (``allreduce``,
``all_gather_single``, ``reduce_scatter_single``, their coalesced forms, ``broadcast``,
``send``, ...) for one ``Trainer.train_step`` (forward and backward of every micro-batch and
pass, gradient reduction, optimizer step, parameter all-gather): every torch.distributed call
ends in one of them, whichever alias the caller bound (megatron-core binds
``all_gather_into_tensor`` and ``reduce_scatter_tensor`` at import time). Each call's payload
(the same convention as ``communication.py``) is recorded by group and operation; the group is
named by identity with megatron's parallel groups (``tp``, ``dp``, ``pp``, ``mp``; ``world``
for a group of every rank; every send counts as ``pp``). Received messages are not counted (their
sender counts them). ``ratio`` is the model's bytes sent / the measured bytes sent, per
configuration, pipeline stage and (group, operation).
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from megatron_ponder.local_ranks import run_local_ranks
from megatron_ponder.planning.communication import (
    Collective, CommSetup, sent_by_kind, step_collectives,
)

# ProcessGroup method -> (operation, index of the argument whose tensors are the payload).
_METHODS = {
    "allreduce": ("all_reduce", 0),
    "allreduce_coalesced": ("all_reduce", 0),
    "all_gather_single": ("all_gather", 0),
    "_allgather_base": ("all_gather", 0),
    "allgather": ("all_gather", 0),
    "allgather_into_tensor_coalesced": ("all_gather", 0),
    "all_gather_single_coalesced": ("all_gather", 0),
    "reduce_scatter_single": ("reduce_scatter", 1),
    "_reduce_scatter_base": ("reduce_scatter", 1),
    "reduce_scatter": ("reduce_scatter", 1),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 1),
    "reduce_scatter_single_coalesced": ("reduce_scatter", 1),
    "broadcast": ("broadcast", 0),
    "send": ("send", 0),
    # Not issued by a training step today; counted so that a new one shows up as unmodelled.
    "alltoall_base": ("all_to_all", 0),
    "reduce": ("reduce", 0),
    "gather": ("gather", 0),
    "scatter": ("scatter", 1),
}


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    return 0


class CollectiveCounter:
    """While active, counts calls and payload bytes of every process-group operation."""

    def __init__(self, name_group):
        self.name_group = name_group
        self.calls: Dict[Tuple[str, str, int], int] = defaultdict(int)
        self.payload: Dict[Tuple[str, str, int], int] = defaultdict(int)
        self._originals = {}

    def __enter__(self):
        process_group = torch.distributed.ProcessGroup
        for method, (operation, argument) in _METHODS.items():
            original = getattr(process_group, method)
            self._originals[method] = original
            setattr(process_group, method, self._counting(original, operation, argument))
        return self

    def __exit__(self, *exc):
        for method, original in self._originals.items():
            setattr(torch.distributed.ProcessGroup, method, original)
        self._originals.clear()

    def _counting(self, original, operation: str, argument: int):
        counter = self

        def counted(group, *args, **kwargs):
            name = "pp" if operation == "send" else counter.name_group(group)
            key = (name, operation, group.size())
            counter.calls[key] += 1
            counter.payload[key] += _tensor_bytes(args[argument])
            return original(group, *args, **kwargs)
        return counted

    def collectives(self) -> List[Collective]:
        return [Collective(group, operation, size, self.calls[key], self.payload[key])
                for key in sorted(self.calls) for group, operation, size in [key]]


def _group_namer():
    """A function naming a process group by identity with megatron's parallel groups."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    named = [("tp", parallel_state.get_tensor_model_parallel_group()),
             ("pp", parallel_state.get_pipeline_model_parallel_group()),
             ("dp", parallel_state.get_data_parallel_group()),
             ("dp", parallel_state.get_data_parallel_group(with_context_parallel=True)),
             ("mp", parallel_state.get_model_parallel_group())]
    world = dist.get_world_size()

    def name(group) -> str:
        for label, known in named:
            if group is known:
                return label
        return "world" if group.size() == world else f"group of {group.size()}"
    return name


@dataclass(frozen=True)
class ByteCase:
    """One configuration of the byte check: a tiny llama (H=64, 4 heads, L=32, micro-batch 2,
    J=2, fp32 unless ``bf16``), ``micro_batches`` per step."""

    name: str
    tp: int = 1
    pp: int = 1
    dp: int = 1
    thoughts: int = 1
    sequence_parallel: bool = True
    recompute: str = "none"
    bf16: bool = False
    arch: str = "llama"
    micro_batches: int = 2

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.dp

    def flags(self) -> List[str]:
        flags = [
            "--model-arch", self.arch, "--num-layers", str(2 * self.pp),
            "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "32",
            "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "1000",
            "--micro-batch-size", "2",
            "--global-batch-size", str(2 * self.dp * self.micro_batches),
            "--num-latent-thoughts", str(self.thoughts), "--jacobi-iterations", "2",
            "--tensor-model-parallel-size", str(self.tp),
            "--pipeline-model-parallel-size", str(self.pp), "--use-distributed-optimizer",
            "--train-iters", "1", "--num-workers", "0", "--seed", "1", "--eval-iters", "0",
        ]
        if self.tp > 1 and self.sequence_parallel:
            flags.append("--sequence-parallel")
        if self.recompute != "none":
            flags += ["--recompute-granularity", self.recompute]
        if self.bf16:
            flags.append("--bf16")
        return flags


BYTE_CASES = (
    ByteCase("TP2 K=0", tp=2, thoughts=0),
    ByteCase("TP2 K=1", tp=2),
    ByteCase("TP2 K=1 recompute full", tp=2, recompute="full"),
    ByteCase("TP2 K=1 no SP", tp=2, sequence_parallel=False),
    ByteCase("TP2 K=1 gpt_neox", tp=2, arch="gpt_neox"),
    ByteCase("PP2 K=0", pp=2, thoughts=0, micro_batches=4),
    ByteCase("PP2 K=1", pp=2, micro_batches=4),
    ByteCase("DP2 K=0", dp=2, thoughts=0),
    ByteCase("DP2 K=1", dp=2),
    ByteCase("DP2 K=1 bf16", dp=2, bf16=True),
    ByteCase("TP2xPP2xDP2 K=0", tp=2, pp=2, dp=2, thoughts=0, micro_batches=4),
    ByteCase("TP2xPP2xDP2 K=1", tp=2, pp=2, dp=2, micro_batches=4),
)


@dataclass
class RankCount:
    """What one rank measured in its step."""

    stage: int
    collectives: List[Collective]
    num_microbatches: int
    jacobi: List[int]
    vocab_size: int
    check_for_nan: bool = True


def count_rank(flags: List[str], world_size: int) -> RankCount:
    """On one rank: build the trainer, count one training step's communication."""
    import warnings

    warnings.filterwarnings("ignore")
    from megatron.core import parallel_state

    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import training_session

    torch.set_num_threads(1)
    with training_session(parse_args(flags), world_size) as trainer:
        config = trainer.config
        data = trainer.training_data()
        with CollectiveCounter(_group_namer()) as counter:
            trainer.train_step(data)
        return RankCount(parallel_state.get_pipeline_model_parallel_rank(),
                         counter.collectives(), trainer.num_microbatches,
                         list(trainer.forward_step.jacobi_used), config.model.vocab_size,
                         config.train.check_for_nan_in_loss_and_grad)


def model_collectives(case: ByteCase, count: RankCount) -> List[Collective]:
    """The communication model's collectives for the rank that measured ``count``."""
    from dataclasses import replace

    from megatron_ponder.training.arguments import parse_args

    config = parse_args(case.flags())
    model = replace(config.model, vocab_size=count.vocab_size)
    setup = CommSetup(
        model=model, ponder=config.ponder, seq_length=config.data.seq_length,
        micro_batch_size=config.train.micro_batch_size, num_microbatches=count.num_microbatches,
        tp=case.tp, pp=case.pp, dp=case.dp, stage=count.stage,
        sequence_parallel=case.sequence_parallel, recompute=case.recompute,
        distributed_optimizer=True, activation_bytes=2 if case.bf16 else 4, grad_bytes=4,
        param_bytes=2 if case.bf16 else 4, check_for_nan=count.check_for_nan)
    return step_collectives(setup, jacobi_per_microbatch=count.jacobi)


@dataclass(frozen=True)
class ByteLine:
    case: str
    stage: Optional[int]
    group: str
    operation: str
    modelled_calls: float
    measured_calls: float
    modelled: float
    measured: float

    @property
    def ratio(self) -> float:
        if self.measured == 0:
            return float("inf") if self.modelled else 1.0
        return self.modelled / self.measured

    def text(self) -> str:
        stage = f" stage {self.stage}" if self.stage is not None else ""
        return (f"{self.case + stage:<30} {self.group:>5} {self.operation:<14} calls "
                f"{self.modelled_calls:4g}/{self.measured_calls:<4g} sent: model "
                f"{_size(self.modelled)}  measured {_size(self.measured)}  ratio {self.ratio:.3f}")


def _size(count: float) -> str:
    return f"{count / 2**10:9.1f} KiB" if count >= 2**10 else f"{count:9.0f} B  "


def compare(case: ByteCase, counts: Sequence[RankCount]) -> List[ByteLine]:
    """One line per pipeline stage and (group, operation) that sends anything. Ranks of one
    stage must have measured the same; the first of each stage is compared."""
    lines = []
    by_stage: Dict[int, RankCount] = {}
    for count in counts:
        first = by_stage.setdefault(count.stage, count)
        if sent_by_kind(first.collectives) != sent_by_kind(count.collectives):
            raise AssertionError(f"{case.name}: ranks of stage {count.stage} sent different "
                                 f"bytes")
    for stage, count in sorted(by_stage.items()):
        modelled = model_collectives(case, count)
        modelled_bytes, measured_bytes = sent_by_kind(modelled), sent_by_kind(count.collectives)
        modelled_calls = sent_by_kind(modelled, "calls")
        measured_calls = sent_by_kind(count.collectives, "calls")
        for kind in sorted(set(modelled_bytes) | set(measured_bytes)):
            lines.append(ByteLine(case.name, stage if case.pp > 1 else None, kind[0], kind[1],
                                  modelled_calls.get(kind, 0), measured_calls.get(kind, 0),
                                  modelled_bytes.get(kind, 0), measured_bytes.get(kind, 0)))
    return lines


def validate_bytes(cases: Sequence[ByteCase] = BYTE_CASES, timeout: float = 900,
                   printer=print) -> List[ByteLine]:
    lines = []
    for case in cases:
        counts = run_local_ranks(count_rank, case.world_size, case.flags(), case.world_size,
                                 timeout=timeout, extra_env={"CUDA_VISIBLE_DEVICES": ""})
        for line in compare(case, counts):
            printer(line.text())
            lines.append(line)
    return lines


def select_byte_cases(names: Sequence[str]) -> Tuple[ByteCase, ...]:
    known = {case.name: case for case in BYTE_CASES}
    return tuple(known[name] for name in names if name in known)
