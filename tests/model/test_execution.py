"""The execution path (model/execution.py): the decision for every device / availability /
flag combination, the TransformerConfig and layer specs each decision builds, and parameter
names that do not depend on the path. Transformer Engine's modules need CUDA, so its path is
checked through the specs and configs it produces; its fused cross entropy's megatron-core
twin runs on CPU and is compared with the unfused loss."""

import dataclasses

import pytest
import torch

from megatron_ponder.config import ModelConfig, PonderConfig, build_transformer_config
from megatron_ponder.model import build_model
from megatron_ponder.model.execution import CPU_PATH, Capabilities, ExecutionPath, \
    ExecutionRequest, canonical_parameter_name, choose_execution_path
from megatron_ponder.model.layer_specs import block_submodules, layer_spec
from megatron_ponder.training.arguments import parse_args

CPU = Capabilities(cuda=False, transformer_engine=True, apex_gradient_accumulation=True)
GPU_TE = Capabilities(cuda=True, transformer_engine=True, apex_gradient_accumulation=True)
GPU_TE_NO_APEX = dataclasses.replace(GPU_TE, apex_gradient_accumulation=False)
GPU_BARE = Capabilities(cuda=True, transformer_engine=False, apex_gradient_accumulation=False)
SHAPE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, vocab_size=512)


def _path(capabilities, arch="llama", **request):
    return choose_execution_path(ExecutionRequest(**request), capabilities, arch)


def test_cpu_is_todays_path_whatever_is_asked():
    for request in ({}, dict(cross_entropy_loss_fusion=True, bf16=True),
                    dict(attention_backend="flash", transformer_impl="local")):
        path = _path(CPU, **request)
        assert path == CPU_PATH and path.transformer_config_overrides() == {}
    assert not Capabilities.detect().cuda  # these machines: the CPU path is what runs


def test_cuda_with_transformer_engine_takes_every_fused_block():
    path = _path(GPU_TE, bf16=True, cross_entropy_loss_fusion=True)
    assert (path.device, path.transformer_engine, path.attention, path.attention_backend) == \
        ("cuda", True, "te", "auto")
    assert path.rope_fusion and path.cross_entropy == "native"
    assert path.bias_activation_fusion and path.bias_dropout_fusion
    assert path.gradient_accumulation_fusion and path.device_initialization
    assert path.notes == ()
    assert path.summary() == (
        "execution (cuda): linear: TE (fused norm + linear for QKV and FC1), attention: TE "
        "auto, RoPE: fused, CE: fused native, fusions: bias+activation, bias+dropout+add, "
        "gradient accumulation, init: device")
    # Megatron-LM's default: the unfused loss unless --cross-entropy-loss-fusion.
    assert _path(GPU_TE, bf16=True).cross_entropy == "unfused"


def test_cuda_without_transformer_engine_keeps_local_layers_and_says_why():
    path = _path(GPU_BARE, arch="gpt_neox", attention_backend="flash")
    assert not path.transformer_engine and path.attention == "sdpa"
    assert not path.rope_fusion and not path.gradient_accumulation_fusion
    assert path.bias_activation_fusion and path.bias_dropout_fusion and path.device_initialization
    notes = " | ".join(path.notes)
    for reason in ("Transformer Engine is not installed", "--attention-backend flash needs",
                   "RoPE fusion needs Transformer Engine", "needs apex"):
        assert reason in notes
    assert "attention: torch SDPA" in path.summary() and "init: device" in path.summary()


def test_local_impl_and_local_attention_with_transformer_engine_installed():
    local = _path(GPU_TE, transformer_impl="local")
    assert not local.transformer_engine and local.attention == "sdpa"
    assert not any("not installed" in note for note in local.notes)
    sdpa_only = _path(GPU_TE, attention_backend="local")
    assert sdpa_only.transformer_engine and sdpa_only.attention == "sdpa"
    assert _path(GPU_TE, attention_backend="fused").attention_environment() == {
        "NVTE_FLASH_ATTN": "0", "NVTE_FUSED_ATTN": "1", "NVTE_UNFUSED_ATTN": "0"}
    assert sdpa_only.attention_environment() == {}


def test_gradient_accumulation_fusion_needs_apex_and_can_be_turned_off():
    assert not _path(GPU_TE_NO_APEX).gradient_accumulation_fusion
    assert any("apex" in note for note in _path(GPU_TE_NO_APEX).notes)
    turned_off = _path(GPU_TE, gradient_accumulation_fusion=False)
    assert not turned_off.gradient_accumulation_fusion and turned_off.notes == ()


@pytest.mark.parametrize("impl, bf16, capabilities, expected", [
    ("native", True, GPU_TE, "native"),
    ("native", False, GPU_TE, "unfused"),   # native rounds gradients to bf16
    ("te", False, GPU_TE, "te"),
    ("te", True, GPU_BARE, "native"),
    ("te", False, GPU_BARE, "unfused"),
])
def test_cross_entropy_choice(impl, bf16, capabilities, expected):
    path = _path(capabilities, cross_entropy_loss_fusion=True, cross_entropy_fusion_impl=impl,
                 bf16=bf16)
    assert path.cross_entropy == expected
    assert (expected == impl) == (not any("cross" in note for note in path.notes))


def test_bias_activation_fusion_follows_the_architectures_activation():
    assert not _path(GPU_TE, arch="gpt_neox", bias_gelu_fusion=False).bias_activation_fusion
    assert _path(GPU_TE, arch="llama", bias_gelu_fusion=False).bias_activation_fusion
    assert not _path(GPU_TE, arch="llama", bias_swiglu_fusion=False).bias_activation_fusion


def test_cpu_initialization_flag():
    path = _path(GPU_TE, use_cpu_initialization=True)
    assert not path.device_initialization and "init: host" in path.summary()
    assert path.transformer_config_overrides()["use_cpu_initialization"] is True


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ValueError, match="--attention-backend sideways"):
        ExecutionRequest(attention_backend="sideways")
    with pytest.raises(ValueError, match="--cross-entropy-fusion-impl"):
        ExecutionRequest(cross_entropy_fusion_impl="apex")
    with pytest.raises(ValueError, match="--transformer-impl"):
        ExecutionRequest(transformer_impl="kitchen")


def test_megatron_lm_flags_reach_the_request():
    config = parse_args([
        "--mock-data", "--bf16", "--no-gradient-accumulation-fusion", "--no-bias-gelu-fusion",
        "--no-bias-swiglu-fusion", "--no-bias-dropout-fusion", "--no-rope-fusion",
        "--no-masked-softmax-fusion", "--no-persist-layer-norm", "--use-cpu-initialization",
        "--cross-entropy-loss-fusion", "--cross-entropy-fusion-impl", "te", "--use-flash-attn",
        "--transformer-impl", "local"])
    request = config.performance.execution_request(config.model.bf16)
    assert request == ExecutionRequest(
        transformer_impl="local", attention_backend="flash", cross_entropy_loss_fusion=True,
        cross_entropy_fusion_impl="te", use_cpu_initialization=True,
        gradient_accumulation_fusion=False, bias_gelu_fusion=False, bias_swiglu_fusion=False,
        bias_dropout_fusion=False, rope_fusion=False, bf16=True)
    defaults = parse_args(["--mock-data"])
    assert defaults.performance.execution_request() == ExecutionRequest()


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_transformer_config_of_the_cuda_paths(arch):
    model, ponder = ModelConfig(arch=arch, **SHAPE), PonderConfig()
    # Without TE the whole TransformerConfig builds here (TE's fused RoPE must be importable
    # for apply_rope_fusion, so the TE path is checked on its overrides).
    bare = _path(GPU_BARE, arch=arch, bf16=True, cross_entropy_loss_fusion=True)
    config = build_transformer_config(model, ponder, **bare.transformer_config_overrides())
    assert not config.use_cpu_initialization
    assert config.bias_activation_fusion and config.bias_dropout_fusion
    assert config.cross_entropy_loss_fusion and config.cross_entropy_fusion_impl == "native"
    assert not config.apply_rope_fusion and not config.gradient_accumulation_fusion
    te = _path(GPU_TE, arch=arch, bf16=True).transformer_config_overrides()
    assert te["apply_rope_fusion"] and te["gradient_accumulation_fusion"]
    assert te["attention_backend"].name == "auto" and not te["cross_entropy_loss_fusion"]
    cpu = build_transformer_config(model, ponder)
    assert cpu.use_cpu_initialization and not cpu.bias_activation_fusion


@pytest.mark.usefixtures("single_process")
@pytest.mark.parametrize("parallel_residual", [False, True])
def test_layer_specs_of_each_path(parallel_residual):
    from megatron.core.extensions import transformer_engine as te
    from megatron.core.tensor_parallel import ColumnParallelLinear
    from megatron.core.transformer.identity_op import IdentityOp

    from megatron_ponder.model.attention import SDPACoreAttention
    from megatron_ponder.model.norms import Norm

    local = layer_spec(parallel_residual).submodules
    assert local.input_layernorm is Norm and local.pre_mlp_layernorm is Norm
    assert local.self_attention.submodules.linear_qkv is ColumnParallelLinear
    assert local.self_attention.submodules.core_attention is SDPACoreAttention
    assert local.sharded_state_dict_keys_map == {}

    fused = layer_spec(parallel_residual, _path(GPU_TE)).submodules
    attention = fused.self_attention.submodules
    assert attention.linear_qkv is te.TELayerNormColumnParallelLinear
    assert fused.mlp.submodules.linear_fc1 is te.TELayerNormColumnParallelLinear
    assert attention.linear_proj is te.TERowParallelLinear
    assert fused.mlp.submodules.linear_fc2 is te.TERowParallelLinear
    assert attention.core_attention is te.TEDotProductAttention
    assert fused.input_layernorm is IdentityOp and fused.pre_mlp_layernorm is IdentityOp
    sdpa = layer_spec(parallel_residual, _path(GPU_TE, attention_backend="local"))
    assert sdpa.submodules.self_attention.submodules.core_attention is SDPACoreAttention

    config = build_transformer_config(ModelConfig(**SHAPE), PonderConfig())
    assert block_submodules(config, parallel_residual).layer_norm is Norm
    assert block_submodules(config, parallel_residual, _path(GPU_TE)).layer_norm is te.TENorm


@pytest.mark.usefixtures("single_process")
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_parameter_names_do_not_depend_on_the_path(arch):
    """Checkpoints (megatron's key map of the TE spec) and the initialization (canonical
    names) see a TE model's fused norm weights under the CPU model's names."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.utils import apply_prefix_mapping

    model = build_model(ModelConfig(arch=arch, **SHAPE), PonderConfig())
    names = [name for name, _ in model.named_parameters()]
    assert all(canonical_parameter_name(name) == name for name in names)
    # What TE's fused norm + linear calls the same weights.
    fused_names = [name.replace("input_layernorm.", "self_attention.linear_qkv.layer_norm_")
                   .replace("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_")
                   for name in names]
    assert fused_names != names
    assert [canonical_parameter_name(name) for name in fused_names] == names
    keys_map = layer_spec(arch == "gpt_neox", _path(GPU_TE)).submodules \
        .sharded_state_dict_keys_map
    prefix = "decoder.layers.0."
    layer_keys = [name for name in fused_names if name.startswith(prefix)]
    state = {key: ShardedObject(key, None, (1,), (0,)) for key in layer_keys}
    apply_prefix_mapping(state, {prefix + old: prefix + new for old, new in keys_map.items()})
    assert sorted(item.key for item in state.values()) == \
        sorted(name for name in names if name.startswith(prefix))


@pytest.mark.usefixtures("single_process")
def test_gated_fc1_is_sliced_as_gate_and_up_whatever_marks_it():
    from megatron_ponder.model.init import _partition_stride

    llama = build_transformer_config(ModelConfig(**SHAPE), PonderConfig())
    neox = build_transformer_config(ModelConfig(arch="gpt_neox", **SHAPE), PonderConfig())
    unmarked = torch.nn.Parameter(torch.empty(2))  # as Transformer Engine's linears leave it
    assert _partition_stride(llama, "decoder.layers.0.mlp.linear_fc1.weight", unmarked) == 2
    assert _partition_stride(neox, "decoder.layers.0.mlp.linear_fc1.weight", unmarked) == 1
    assert _partition_stride(llama, "decoder.layers.0.mlp.linear_fc2.weight", unmarked) == 1


@pytest.mark.usefixtures("single_process")
def test_fused_cross_entropy_matches_the_unfused_loss():
    """megatron-core's native fused cross entropy (what --cross-entropy-loss-fusion picks on
    GPUs) through the model's loss: the same losses, gradients within bf16 rounding."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SHAPE), PonderConfig(num_latent_thoughts=0), seed=1)
    hidden = torch.randn(6, 2, SHAPE["hidden_size"])
    labels = torch.randint(0, SHAPE["vocab_size"], (2, 6))

    def losses_and_grad(path):
        model.execution_path = path
        inputs = hidden.clone().requires_grad_()
        losses = model.token_losses(inputs, labels)
        (grad,) = torch.autograd.grad(losses.sum(), inputs)
        return losses.detach(), grad

    unfused = losses_and_grad(CPU_PATH)
    fused = losses_and_grad(dataclasses.replace(CPU_PATH, cross_entropy="native"))
    model.execution_path = CPU_PATH
    torch.testing.assert_close(fused[0], unfused[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused[1], unfused[1], rtol=2e-2, atol=1e-3)


def test_start_up_notes_on_a_cuda_machine_name_every_feature_that_is_off(monkeypatch):
    """What a run prints once at start on a CUDA machine without Transformer Engine and apex
    (simulated: this machine has no GPU)."""
    from megatron_ponder.training import resolve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(Capabilities, "detect", classmethod(lambda cls: GPU_BARE))
    config = parse_args(["--mock-data", "--no-masked-softmax-fusion",
                         "--cross-entropy-loss-fusion"])
    notes = []
    resolve._note_performance_flags(config, notes.append)
    text = "\n".join(notes)
    for reason in ("Transformer Engine is not installed", "RoPE fusion needs",
                   "needs apex", "rounds the logit gradients to bf16",
                   "no effect: --no-masked-softmax-fusion"):
        assert reason in text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    notes.clear()
    resolve._note_performance_flags(config, notes.append)
    assert notes == ["GPU performance flags have no effect on CPU: "
                     "--cross-entropy-loss-fusion, --no-masked-softmax-fusion"]
