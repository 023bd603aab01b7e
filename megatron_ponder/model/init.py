"""Initial weights that depend on the seed only, not on the parallel layout.

megatron-core draws each weight from the process's running RNG in construction order, so a
pipeline stage (which builds only its own layers) or a different vocabulary split starts from
different numbers than one process would. Here every parameter is drawn in full from its own
generator, seeded by (seed, the parameter's layout-independent name: global layer numbers, not
this stage's indices), with the distribution megatron-core would use for it, and this rank keeps
its tensor-parallel slice exactly as megatron-core splits a full weight. Any TP x PP x DP layout
therefore starts from the weights of one process, shard for shard.
"""

import contextlib
import hashlib
from typing import Callable, Dict, Optional

import torch
from megatron.core import parallel_state

from megatron_ponder.model.execution import canonical_parameter_name

# Weights whose output is added to the residual stream: megatron-core initialises them with
# ``output_layer_init_method`` (the std scaled down by the number of residual adds).
_RESIDUAL_OUTPUT_WEIGHTS = ("self_attention.linear_proj.weight", "mlp.linear_fc2.weight")
_INPUT_WEIGHTS = ("self_attention.linear_qkv.weight", "mlp.linear_fc1.weight",
                  "output_layer.weight", "pause_embedding")
_EMBEDDING_WEIGHTS = ("embedding.word_embeddings.weight",)


def layout_independent_names(model: torch.nn.Module) -> Dict[str, str]:
    """Local parameter name -> its name in the one-stage model of the CPU path (decoder layers
    renumbered from this stage's index to the global layer number; Transformer Engine's fused
    norm weights under the separate norms' names)."""
    prefixes = {f"decoder.layers.{index}.": f"decoder.layers.{layer.layer_number - 1}."
                for index, layer in enumerate(model.decoder.layers)}
    names = {}
    for name, _ in model.named_parameters():
        renamed = name
        for local, global_ in prefixes.items():
            if name.startswith(local):
                renamed = global_ + name[len(local):]
        names[name] = canonical_parameter_name(renamed)
    return names


def parameter_seed(seed: int, name: str) -> int:
    """A 63-bit seed for one parameter, from the run's seed and its layout-independent name."""
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _init_method(config, name: str) -> Callable[[torch.Tensor], None]:
    """How megatron-core initialises the parameter called ``name`` (our layer specs and model):
    norms to one, every bias to zero, weights by the configured normal init methods."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias":
        return torch.nn.init.zeros_
    if name.endswith("layernorm.weight"):
        return torch.nn.init.ones_
    if name.endswith(_RESIDUAL_OUTPUT_WEIGHTS):
        return config.output_layer_init_method
    if name.endswith(_EMBEDDING_WEIGHTS):
        return config.embedding_init_method
    if name.endswith(_INPUT_WEIGHTS):
        return config.init_method
    raise ValueError(f"no initialisation rule for parameter {name!r}; add it to "
                     f"megatron_ponder/model/init.py")


def _full_shape(param: torch.nn.Parameter, tp_size: int) -> torch.Size:
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp_size
    return torch.Size(shape)


def _partition_stride(config, name: str, param: torch.nn.Parameter) -> int:
    """How many interleaved parts each rank's shard has. A gated MLP's FC1 holds [gate; up] on
    every rank whichever linear class built it (Transformer Engine's do not mark it)."""
    if config.gated_linear_unit and name.endswith(("mlp.linear_fc1.weight",
                                                   "mlp.linear_fc1.bias")):
        return 2
    return getattr(param, "partition_stride", 1)


def _local_slice(full: torch.Tensor, param: torch.nn.Parameter, stride: int, tp_rank: int,
                 tp_size: int) -> torch.Tensor:
    """This rank's part of ``full``, split as megatron-core splits a full weight: into
    ``partition_stride x TP`` equal chunks along ``partition_dim``, rank r keeping chunks
    r, r + TP, ... (stride 2 is SwiGLU's fused [gate; up]: each rank holds its gate rows then
    its up rows)."""
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim = param.partition_dim
    chunks = full.chunk(stride * tp_size, dim=dim)
    return torch.cat(chunks[tp_rank::tp_size], dim=dim)


@torch.no_grad()
def initialize_weights(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter of ``model`` (a PonderGPTModel stage) from ``seed`` alone.

    Each full tensor is drawn in float32 where the parameter lives (one at a time: the peak
    extra memory is the largest full weight), under its own generator, then cast to the
    parameter's dtype and sliced. On the host this is torch's CPU generator; parameters
    allocated on a GPU are drawn there by the GPU's generator from the same per-parameter seeds
    (seconds instead of minutes for a billion-parameter model; the numbers differ from the
    host's, but not between layouts or execution paths). The process's RNG state is left
    untouched.
    """
    config = model.config
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    names = layout_independent_names(model)
    for local_name, param in model.named_parameters():
        name = names[local_name]
        init_method = _init_method(config, name)
        device = param.device
        full = torch.empty(_full_shape(param, tp_size), dtype=torch.float32, device=device)
        # The configured init methods draw from the device's default generator: seed it for
        # this parameter alone and restore the process's state afterwards.
        on_gpu = device.type == "cuda"
        with torch.random.fork_rng(devices=[device] if on_gpu else [],
                                   device_type=device.type if on_gpu else "cuda"):
            if on_gpu:
                torch.cuda.manual_seed(parameter_seed(seed, name))
            else:
                torch.default_generator.manual_seed(parameter_seed(seed, name))
            init_method(full)
        stride = _partition_stride(config, name, param)
        param.data.copy_(_local_slice(full.to(param.dtype), param, stride, tp_rank, tp_size))


_DRAWN_INIT_METHODS = ("init_method", "output_layer_init_method", "embedding_init_method")


def _draw_nothing(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@contextlib.contextmanager
def seed_only_initialization(model: torch.nn.Module, seed: Optional[int]):
    """Build ``model``'s layers inside this block: megatron-core's layers then draw nothing
    (their init methods are swapped for a no-op while they are built: drawing every weight
    twice would double the start-up time), and on leaving it every parameter is drawn by
    ``initialize_weights`` from ``seed`` (None: the seed torch was last seeded with). Does
    nothing but build when ``config.perform_initialization`` is off (weights about to be
    loaded)."""
    config = model.config
    if not config.perform_initialization:
        yield
        return
    configured = {name: getattr(config, name) for name in _DRAWN_INIT_METHODS}
    for name in _DRAWN_INIT_METHODS:
        setattr(config, name, _draw_nothing)
    try:
        yield
    finally:
        for name, method in configured.items():
            setattr(config, name, method)
    initialize_weights(model, torch.initial_seed() if seed is None else seed)
