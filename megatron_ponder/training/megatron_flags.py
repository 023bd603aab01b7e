"""Megatron-LM's flags beyond the ones our config dataclasses already spell its way, so that a
pretrain_gpt.py command line runs here as it is.

Three kinds:

* ``MegatronModelFlags``: flags that describe the transformer piece by piece (``--swiglu``,
  ``--normalization``, ...). Here ``--model-arch`` fixes those choices, so each is checked
  against it: one that agrees is accepted, one that contradicts it is an error naming the flag;
  flags that only restate what this project always does (``--use-mcore-models``, untied
  embeddings, per-token loss) are accepted silently.
* ``PerformanceConfig`` (training/config.py): GPU performance knobs, honoured where megatron-core
  can with our layer spec, noted once where they do nothing.
* ``UNSUPPORTED``: features this project does not have; each fails with one line naming the
  flag, never argparse's "unrecognized arguments".
"""

import argparse
from dataclasses import dataclass
from typing import Optional

from megatron_ponder.config import ModelConfig
from megatron_ponder.flags import Freezable, option

# What each --model-arch is, in Megatron-LM's terms.
_ARCH_TRAITS = {
    "llama": dict(normalization="RMSNorm", swiglu=True, bias_linear=False),
    "gpt_neox": dict(normalization="LayerNorm", swiglu=False, bias_linear=True),
}


@dataclass
class MegatronModelFlags(Freezable):
    """Megatron-LM's flags for choices that --model-arch makes here (checked against it)."""

    use_mcore_models: bool = option(False, "accepted: the model is always megatron-core's")
    max_position_embeddings: Optional[int] = option(
        None, "accepted (rotary embeddings need no table); must be >= --seq-length")
    position_embedding_type: str = option(
        "rope", "rope only (Megatron-LM's default is learned_absolute: PonderLM-2 models use "
        "rotary embeddings)", choices=("learned_absolute", "rope", "yarn", "mrope", "relative",
                                      "none"))
    swiglu: bool = option(False, "SwiGLU MLP: --model-arch llama has it, gpt_neox has GeLU")
    normalization: Optional[str] = option(
        None, "RMSNorm (llama) or LayerNorm (gpt_neox) (default: the architecture's)",
        choices=("LayerNorm", "RMSNorm"))
    disable_bias_linear: bool = option(
        False, "no biases in the linear layers: --model-arch llama has none, gpt_neox has them")
    untie_embeddings_and_output_weights: bool = option(
        False, "accepted: input embeddings and output layer are always separate here "
        "(Megatron-LM ties them unless this flag is given)")
    group_query_attention: bool = option(
        False, "accepted: --num-query-groups alone sets grouped-query attention")
    attention_dropout: float = option(
        0.0, "attention dropout: 0 only (Megatron-LM's default is 0.1; PonderLM-2 trains "
        "without dropout)")
    hidden_dropout: float = option(0.0, "hidden-state dropout: 0 only (as --attention-dropout)")
    calculate_per_token_loss: bool = option(
        False, "accepted: the loss is always the mean over all tokens of the global batch")
    ckpt_format: str = option("torch_dist", "checkpoint format: torch_dist only",
                              choices=("torch", "torch_dist", "zarr", "fsdp_dtensor"))
    context_parallel_size: int = option(1, "context-parallel size: 1 only")
    log_throughput: bool = option(False, "accepted: every log line has the throughput")
    manual_gc: bool = option(False, "accepted, no effect (Python's garbage collector runs as "
                             "usual)")
    empty_unused_memory_level: int = option(0, "accepted, no effect", choices=(0, 1, 2))
    distributed_timeout_minutes: int = option(10, "accepted, no effect (torch's default "
                                              "timeout applies)")

    def check(self, model: ModelConfig, seq_length: int) -> None:
        """ValueError naming the first flag that this project cannot honour as given."""
        traits = _ARCH_TRAITS[model.arch]
        if self.position_embedding_type != "rope":
            raise ValueError(f"--position-embedding-type {self.position_embedding_type} is "
                             "not supported: PonderLM-2 models use rope")
        if self.normalization not in (None, traits["normalization"]):
            raise ValueError(f"--normalization {self.normalization} does not match --model-arch "
                             f"{model.arch} ({traits['normalization']}); pick the architecture "
                             "with --model-arch llama (RMSNorm) or gpt_neox (LayerNorm)")
        if self.swiglu and not traits["swiglu"]:
            raise ValueError(f"--swiglu does not match --model-arch {model.arch} (GeLU MLP); "
                             "--model-arch llama has SwiGLU")
        if self.disable_bias_linear and traits["bias_linear"]:
            raise ValueError(f"--disable-bias-linear does not match --model-arch {model.arch} "
                             "(biased linear layers); --model-arch llama has no biases")
        for flag, value in (("--attention-dropout", self.attention_dropout),
                            ("--hidden-dropout", self.hidden_dropout)):
            if value != 0:
                raise ValueError(f"{flag} {value} is not supported: PonderLM-2 trains without "
                                 "dropout (0 is accepted)")
        if self.ckpt_format != "torch_dist":
            raise ValueError(f"--ckpt-format {self.ckpt_format} is not supported: checkpoints "
                             "are torch_dist (megatron-core dist_checkpointing)")
        if self.context_parallel_size != 1:
            raise ValueError(f"--context-parallel-size {self.context_parallel_size} is not "
                             "supported: context parallelism is not implemented (use tensor, "
                             "pipeline and data parallelism)")
        if self.max_position_embeddings is not None and self.max_position_embeddings < seq_length:
            raise ValueError(f"--max-position-embeddings {self.max_position_embeddings} is "
                             f"less than --seq-length {seq_length}")


# Flags of features this project does not have: flag -> the feature, for the error line.
UNSUPPORTED = {
    **{flag: "fp8 training" for flag in (
        "--fp8-format", "--fp8", "--fp8-recipe", "--fp8-margin", "--fp8-interval",
        "--fp8-amax-history-len", "--fp8-amax-compute-algo", "--fp8-param-gather",
        "--fp8-wgrad", "--first-last-layers-bf16", "--fp4-format", "--fp4")},
    **{flag: "mixture of experts" for flag in (
        "--num-experts", "--moe-router-topk", "--moe-ffn-hidden-size", "--moe-grouped-gemm",
        "--moe-aux-loss-coeff", "--moe-router-load-balancing-type", "--moe-token-dispatcher-type",
        "--moe-layer-freq", "--moe-shared-expert-intermediate-size",
        "--expert-model-parallel-size", "--expert-tensor-parallel-size")},
    **{flag: "multi-latent attention" for flag in (
        "--multi-latent-attention", "--q-lora-rank", "--kv-lora-rank", "--qk-head-dim",
        "--qk-pos-emb-head-dim", "--v-head-dim")},
    "--apply-layernorm-1p": "zero-centred norm weights",
    "--qk-layernorm": "query/key normalization",
    "--decoupled-lr": "a separate learning rate for the embedding and output layers",
    "--decoupled-min-lr": "a separate learning rate for the embedding and output layers",
    "--mtp-num-layers": "multi-token prediction",
    "--num-layers-per-virtual-pipeline-stage":
        "virtual pipeline stages (the ponder passes are the pipeline's interleaving)",
    "--virtual-pipeline-model-parallel-size":
        "virtual pipeline stages (the ponder passes are the pipeline's interleaving)",
    "--tp-comm-overlap": "Transformer Engine's tensor-parallel communication overlap",
    "--use-torch-fsdp2": "FSDP (use --use-distributed-optimizer)",
    "--use-megatron-fsdp": "FSDP (use --use-distributed-optimizer)",
    "--step-batch-size-schedule": "batch-size schedules (--rampup-batch-size is supported)",
    "--spec": "custom layer specs",
    "--yaml-cfg": "YAML configs (pass flags)",
    "--use-legacy-models": "the legacy (non-megatron-core) models",
    "--retro-add-retriever": "Retro",
    "--num-experts-per-token": "mixture of experts",
}


class _Unsupported(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is not supported here ({UNSUPPORTED[option_string]})")


def add_unsupported_arguments(parser: argparse.ArgumentParser) -> None:
    """Each flag of ``UNSUPPORTED`` (with or without values) fails with one line naming it."""
    group = parser.add_argument_group(
        "not supported", "Megatron-LM flags of features this project does not have; each is "
        "rejected with a message naming it")
    for flag in UNSUPPORTED:
        group.add_argument(flag, nargs="*", action=_Unsupported, help=argparse.SUPPRESS)
