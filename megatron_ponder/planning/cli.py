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
    mfu: float = option(0.4, "assumed model FLOPs utilisation (fraction of the bf16 peak), e.g. "
                      "the MFU a short run at this layout logged")
    memory_reserve_gib: float = option(
        4.0, "per-GPU memory kept free for the CUDA context, communication buffers and "
        "allocator fragmentation")
    plan_fp32: bool = option(False, "plan fp32 training (default: bf16 mixed precision)")
    max_tensor_parallel: int = option(8, "largest tensor-parallel size to consider (one node)")
    top: int = option(10, "fitting layouts to print")
    validate: bool = option(False, "instead of planning: build small models on CPU and compare "
                          "the activation estimate with the bytes saved for backward")
    validate_cases: Tuple[str, ...] = option(
        (), "with --validate: only these cases (names as printed; default: all)")


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
    from megatron_ponder.planning.hardware import gpu_spec
    from megatron_ponder.planning.planner import PlanRequest
    from megatron_ponder.training.arguments import config_from_args

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
        reserve_gib=plan.memory_reserve_gib, max_tensor_parallel=plan.max_tensor_parallel)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    plan = from_arguments(PlanConfig, args)
    if plan.validate:
        from megatron_ponder.planning.validation import select_cases, validate

        try:
            cases = select_cases(list(plan.validate_cases))
        except ValueError as error:
            parser.error(str(error))
        lines = validate(cases, printer=lambda text: print(text, flush=True))
        bad = [line for line in lines if not 0.9 <= line.ratio <= 1.1]
        if bad:
            print(f"{len(bad)} of {len(lines)} ratios outside [0.9, 1.1]", file=sys.stderr)
            return 1
        print(f"all {len(lines)} ratios within [0.9, 1.1]")
        return 0
    from megatron_ponder.planning.planner import format_plan, make_plan

    try:
        request = request_from_args(args, plan)
        result = make_plan(request)
    except ValueError as error:
        parser.error(str(error))
    print(format_plan(result, top=plan.top))
    return 0
