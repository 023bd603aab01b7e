"""The step-time model against published throughput: the weak-scaling table of Narayanan et al.,
"Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM" (SC21,
Table 1): GPT models of 1.7B to 1T parameters on up to 3072 A100s of NVIDIA's Selene (8 GPUs
per node on NVLink/NVSwitch, eight 200 Gb/s HDR InfiniBand adapters per node), sequence 2048,
vocabulary 51,200, mixed precision, full activation recomputation; the achieved teraFLOP/s per
GPU count the recomputation (their equation 3), over whole iterations.

Each row is planned as a vanilla (K = 0) GPT with the paper's TP, PP, GPU count and batch, and
what the paper's Megatron-LM did where the table does not say, stated here and in
docs/planning.md: micro-batch 1, the non-interleaved 1F1B schedule (bubble (P - 1) / (M + P - 1),
blocking messages, each tensor-parallel rank sending 1/t of a message: the paper's scatter/gather
optimisation), tensor parallelism without sequence parallelism (all-reduces), data-parallel
gradients all-reduced in fp16 after the backward (no distributed optimizer, no overlap), the A100
interconnect defaults of ``hardware.py``. The matmul efficiency is the planner's default, one
value for every row. Predicted teraFLOP/s = the paper's FLOPs per iteration / (modelled step
time x GPUs).
"""

import statistics
from dataclasses import dataclass
from typing import List, Optional, Sequence

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.parallel.bubble import one_chunk_idle_fraction
from megatron_ponder.planning.communication import CommSetup
from megatron_ponder.planning.hardware import GPU_SPECS, INTERCONNECTS
from megatron_ponder.planning.timing import Hardware, step_time
from megatron_ponder.training.flops import step_flops

SEQ_LENGTH = 2048
VOCAB_SIZE = 51200


@dataclass(frozen=True)
class PublishedRun:
    """One row of the paper's Table 1."""

    parameters_billion: float
    heads: int
    hidden: int
    layers: int
    tp: int
    pp: int
    gpus: int
    batch: int
    tflops_per_gpu: float

    @property
    def name(self) -> str:
        return f"{self.parameters_billion:g}B"

    @property
    def dp(self) -> int:
        return self.gpus // (self.tp * self.pp)


MEGATRON_SC21_TABLE1 = (
    PublishedRun(1.7, 24, 2304, 24, 1, 1, 32, 512, 137),
    PublishedRun(3.6, 32, 3072, 30, 2, 1, 64, 512, 138),
    PublishedRun(7.5, 32, 4096, 36, 4, 1, 128, 512, 142),
    PublishedRun(18.4, 48, 6144, 40, 8, 1, 256, 1024, 135),
    PublishedRun(39.1, 64, 8192, 48, 8, 2, 512, 1536, 138),
    PublishedRun(76.1, 80, 10240, 60, 8, 4, 1024, 1792, 140),
    PublishedRun(145.6, 96, 12288, 80, 8, 8, 1536, 2304, 148),
    PublishedRun(310.1, 128, 16384, 96, 8, 16, 1920, 2160, 155),
    PublishedRun(529.6, 128, 20480, 105, 8, 35, 2520, 2520, 163),
    PublishedRun(1008.0, 160, 25600, 128, 8, 64, 3072, 3072, 163),
)


def paper_model(run: PublishedRun) -> ModelConfig:
    """The row's GPT: LayerNorm, GeLU MLP of 4h, sequential residual (its FLOPs and
    communication are those of ``gpt_neox`` here; the residual wiring does not change them)."""
    return ModelConfig(arch="gpt_neox", num_layers=run.layers, hidden_size=run.hidden,
                       num_attention_heads=run.heads, ffn_hidden_size=4 * run.hidden,
                       vocab_size=VOCAB_SIZE)


def paper_iteration_flops(run: PublishedRun) -> float:
    """The paper's equation 3: 96 B s l h^2 (1 + s / 6h + V / 16 l h), recomputation included."""
    b, s, l, h = run.batch, SEQ_LENGTH, run.layers, run.hidden
    return 96.0 * b * s * l * h * h * (1 + s / (6 * h) + VOCAB_SIZE / (16 * l * h))


@dataclass(frozen=True)
class ThroughputLine:
    run: PublishedRun
    predicted_tflops: float
    communication_share: float
    bubble: float

    @property
    def error(self) -> float:
        return self.predicted_tflops / self.run.tflops_per_gpu - 1.0

    def text(self) -> str:
        r = self.run
        return (f"{r.name:>8} TP {r.tp} PP {r.pp:>2} DP {r.dp:>3} GPUs {r.gpus:>4} batch "
                f"{r.batch:>4}: predicted {self.predicted_tflops:5.1f} TFLOP/s/GPU, published "
                f"{r.tflops_per_gpu:5.1f}, error {100 * self.error:+5.1f}% (comm "
                f"{100 * self.communication_share:4.1f}%, bubble {100 * self.bubble:4.1f}%)")


def predict(run: PublishedRun, efficiency: float) -> ThroughputLine:
    model = paper_model(run)
    microbatches = run.batch // run.dp
    setup = CommSetup(
        model=model, ponder=PonderConfig(num_latent_thoughts=0), seq_length=SEQ_LENGTH,
        micro_batch_size=1, num_microbatches=microbatches, tp=run.tp, pp=run.pp, dp=run.dp,
        sequence_parallel=False, recompute="full", distributed_optimizer=False,
        activation_bytes=2, grad_bytes=2, param_bytes=2, check_for_nan=False,
        split_pipeline_messages=True)
    bubble = one_chunk_idle_fraction(run.pp, microbatches) if run.pp > 1 else 0.0
    hardware = Hardware(GPU_SPECS["a100"], INTERCONNECTS["a100"], efficiency)
    time = step_time(setup, [0], hardware, bubble, pipeline_overlap=False)
    predicted = paper_iteration_flops(run) / (time.total * run.gpus) / 1e12
    return ThroughputLine(run, predicted, time.communication_share, bubble)


def model_flops_check(run: PublishedRun) -> float:
    """This project's FLOP count of the row (with recomputation) over the paper's: 1 up to the
    biases the paper leaves out."""
    from megatron_ponder.planning.planner import recompute_flops_per_token

    model = paper_model(run)
    vanilla = PonderConfig(num_latent_thoughts=0)
    ours = step_flops(model, vanilla, SEQ_LENGTH, run.batch, [0]) + run.batch * SEQ_LENGTH * \
        recompute_flops_per_token(model, vanilla, SEQ_LENGTH, [0], "full")
    return ours / paper_iteration_flops(run)


def validate_throughput(efficiency: float, runs: Sequence[PublishedRun] = MEGATRON_SC21_TABLE1,
                        printer=print) -> List[ThroughputLine]:
    lines = []
    for run in runs:
        line = predict(run, efficiency)
        printer(line.text())
        lines.append(line)
    return lines


def median_absolute_error(lines: Sequence[ThroughputLine]) -> Optional[float]:
    return statistics.median(abs(line.error) for line in lines) if lines else None
