"""Command line of ``tools/plan_run.py``: pretrain_ponder.py's flags (so a training command's
model and ponder flags can be pasted as they are) plus the planning flags of ``PlanConfig``.
The layout flags (tensor/pipeline size, micro-batch size, recomputation) are searched over, not
read."""

import sys
from dataclasses import dataclass
from typing import List, Optional, Tuple

from megatron_ponder.flags import add_arguments, from_arguments, option


@dataclass
class PlanConfig:
    """What the planner needs besides the model: the run and the cluster."""

    train_tokens: Optional[float] = option(None, "tokens to train on, e.g. 300e9")
    gpus: Optional[int] = option(None, "number of GPUs")
    gpu_type: Optional[str] = option(
        "h100", "GPU from the table in megatron_ponder/planning/hardware.py (h100, h200, "
        "a100, a100-40gb, l40s, b200); its fields can be overridden below")
    gpu_memory_gib: Optional[float] = option(None, "GPU memory in GiB (overrides the table)")
    peak_tflops: Optional[float] = option(None, "dense bf16 peak TFLOP/s (overrides the table)")
    memory_bandwidth_tbs: Optional[float] = option(
        None, "memory bandwidth in TB/s (overrides the table)")
    mfu: float = option(
        0.5, "assumed fraction of the bf16 peak the layers' matmuls and attention reach at large "
        "per-GPU shapes (smaller shapes, communication and the pipeline bubble are modelled on "
        "top of it)")
    gpus_per_node: Optional[int] = option(None, "GPUs per node (default: 8)")
    nvlink_bandwidth_gbs: Optional[float] = option(
        None, "achievable collective bandwidth inside a node, GB/s per GPU (default by "
        "--gpu-type, hardware.py)")
    network_bandwidth_gbs: Optional[float] = option(
        None, "achievable network bandwidth across nodes, GB/s per GPU (default by --gpu-type)")
    nvlink_latency_us: Optional[float] = option(
        None, "fixed cost of one collective or message inside a node, microseconds (default 10)")
    network_latency_us: Optional[float] = option(
        None, "fixed cost of one collective or message across nodes, microseconds (default 20)")
    memory_reserve_gib: float = option(
        4.0, "per-GPU memory kept free for the CUDA context, communication buffers and "
        "allocator fragmentation")
    plan_fp32: bool = option(False, "plan fp32 training (default: bf16 mixed precision)")
    max_tensor_parallel: int = option(8, "largest tensor-parallel size to consider (one node)")
    top: int = option(10, "fitting layouts to print")
    validate: bool = option(False, "instead of planning: check the models: activation memory and "
                          "communicated bytes against small CPU runs, step time against "
                          "published Megatron-LM throughput")
    validate_cases: Tuple[str, ...] = option(
        (), "with --validate: only these memory and byte cases (names as printed; default: "
        "all)")
    validate_parts: Tuple[str, ...] = option(
        (), "with --validate: only these parts: memory, bytes, throughput (default: all)")


def build_parser():
    from megatron_ponder.training.arguments import build_parser as pretrain_parser

    parser = pretrain_parser()
    parser.prog = "plan_run.py"
    parser.usage = ("plan_run.py [pretrain_ponder.py model/ponder flags] --global-batch-size N "
                    "--train-tokens T --gpus G [--gpu-type h100] [--mfu F] ...  |  "
                    "plan_run.py --validate")
    parser.description = ("Plan a PonderLM-2 run: FLOPs per token, per-GPU memory of candidate "
                          "layouts, the layouts that fit ranked by estimated step time, wall "
                          "time and GPU-hours. Takes pretrain_ponder.py's model flags.")
    add_arguments(parser, PlanConfig, "planning")
    return parser


def request_from_args(args, plan: PlanConfig):
    from megatron_ponder.planning.hardware import gpu_spec, interconnect
    from megatron_ponder.planning.planner import PlanRequest
    from megatron_ponder.training.arguments import config_from_args
    from megatron_ponder.training.trainer import grad_reduce_can_overlap

    if not any(getattr(args, name, None) for name in ("data_path", "train_data_path",
                                                       "mock_data")):
        args.mock_data = True  # planning reads no data
    config = config_from_args(args)
    if plan.train_tokens is None or plan.gpus is None:
        raise ValueError("give --train-tokens and --gpus (or --validate)")
    if config.train.global_batch_size is None:
        raise ValueError("give --global-batch-size (samples per optimizer step)")
    model = config.model
    if config.tokenizer.vocab_size:
        model.vocab_size = config.tokenizer.vocab_size
    gpu = gpu_spec(plan.gpu_type, plan.gpu_memory_gib, plan.peak_tflops,
                   plan.memory_bandwidth_tbs)
    return PlanRequest(
        model=model, ponder=config.ponder, seq_length=config.data.seq_length,
        global_batch_size=config.train.global_batch_size, train_tokens=plan.train_tokens,
        gpus=plan.gpus, gpu=gpu, mfu=plan.mfu, mixed_precision=not plan.plan_fp32,
        reserve_gib=plan.memory_reserve_gib, max_tensor_parallel=plan.max_tensor_parallel,
        interconnect=interconnect(plan.gpu_type, plan.gpus_per_node, plan.nvlink_bandwidth_gbs,
                                  plan.network_bandwidth_gbs, plan.nvlink_latency_us,
                                  plan.network_latency_us),
        overlap_grad_reduce=grad_reduce_can_overlap(config),
        overlap_param_gather=config.performance.overlap_param_gather,
        grad_reduce_in_bf16=config.performance.grad_reduce_in_bf16)


VALIDATION_PARTS = ("memory", "bytes", "throughput")
# Pass marks: activation and byte ratios, and the median error against published throughput.
MEMORY_TOLERANCE, BYTES_TOLERANCE, THROUGHPUT_MEDIAN_ERROR = 0.10, 0.05, 0.15


def validate(plan: PlanConfig) -> int:
    """``--validate``: the memory, byte and throughput checks; 1 if any misses its mark."""
    from megatron_ponder.planning.communication_measured import BYTE_CASES, validate_bytes
    from megatron_ponder.planning.memory_measured import MEMORY_CASES, validate_memory
    from megatron_ponder.planning.published import median_absolute_error, validate_throughput

    parts = plan.validate_parts or VALIDATION_PARTS
    unknown_parts = sorted(set(parts) - set(VALIDATION_PARTS))
    if unknown_parts:
        raise ValueError(f"unknown --validate-parts {unknown_parts}; choose from "
                         f"{list(VALIDATION_PARTS)}")
    names = set(plan.validate_cases)
    known = {case.name for case in MEMORY_CASES} | {case.name for case in BYTE_CASES}
    if names - known:
        raise ValueError(f"unknown validation case(s) {sorted(names - known)}; choose from "
                         f"{sorted(known)}")
    memory_cases = [case for case in MEMORY_CASES if not names or case.name in names]
    byte_cases = [case for case in BYTE_CASES if not names or case.name in names]
    printer = lambda text: print(text, flush=True)  # noqa: E731
    failures = []
    if "memory" in parts and memory_cases:
        print("activation memory: estimate vs bytes autograd keeps (ratio = estimate / measured)")
        lines = validate_memory(memory_cases, printer=printer)
        failures += _misses(lines, MEMORY_TOLERANCE, "activation")
    if "bytes" in parts and byte_cases:
        print("communication: bytes each rank sends per step, model vs counted (ratio = model / "
              "measured)")
        lines = validate_bytes(byte_cases, printer=printer)
        failures += _misses(lines, BYTES_TOLERANCE, "byte")
    if "throughput" in parts:
        print(f"throughput: Narayanan et al. (SC21) Table 1, A100, matmul efficiency {plan.mfu:g}")
        lines = validate_throughput(plan.mfu, printer=printer)
        median = median_absolute_error(lines)
        print(f"median absolute error {100 * median:.1f}% over {len(lines)} rows")
        if median > THROUGHPUT_MEDIAN_ERROR:
            failures.append(f"median throughput error {100 * median:.1f}% over "
                            f"{100 * THROUGHPUT_MEDIAN_ERROR:g}%")
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


def _misses(lines, tolerance: float, what: str) -> List[str]:
    bad = [line for line in lines if not 1 - tolerance <= line.ratio <= 1 + tolerance]
    if not bad:
        print(f"all {len(lines)} {what} ratios within [{1 - tolerance:g}, {1 + tolerance:g}]")
        return []
    return [f"{len(bad)} of {len(lines)} {what} ratios outside [{1 - tolerance:g}, "
            f"{1 + tolerance:g}]"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = from_arguments(PlanConfig, args)
    if plan.validate:
        try:
            return validate(plan)
        except ValueError as error:
            parser.error(str(error))
    from megatron_ponder.planning.planner import format_plan, make_plan

    try:
        request = request_from_args(args, plan)
        result = make_plan(request)
    except ValueError as error:
        parser.error(str(error))
    print(format_plan(result, top=plan.top))
    return 0
