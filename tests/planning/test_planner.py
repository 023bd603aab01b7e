"""The planner's formulas: FLOPs agree with training/flops.py, the bubble with parallel/bubble.py,
step time from the timing model, layouts respect divisibility, the 64-GPU plan does not tie, the
report, and one-line errors."""

import pytest

from megatron_ponder.config import ModelConfig, PonderConfig
from megatron_ponder.parallel.bubble import interleaved_idle_fraction
from megatron_ponder.planning.cli import main
from megatron_ponder.planning.hardware import GPU_SPECS, gpu_spec
from megatron_ponder.planning.planner import (
    Layout, PlanRequest, candidate_layouts, flops_per_token, format_plan, make_plan,
    plan_layout, recompute_flops_per_token, vanilla_flops_per_token,
)
from megatron_ponder.training.flops import pass_flops, step_flops


def _pythia_1_4b():
    return ModelConfig(arch="gpt_neox", num_layers=24, hidden_size=2048,
                       num_attention_heads=16)


def _request(gpus=64, **overrides):
    values = dict(model=_pythia_1_4b(),
                  ponder=PonderConfig(num_latent_thoughts=1, random_jacobi_iterations=(2, 3, 4)),
                  seq_length=2048, global_batch_size=1024, train_tokens=300e9, gpus=gpus,
                  gpu=GPU_SPECS["h100"])
    values.update(overrides)
    return PlanRequest(**values)


@pytest.fixture(scope="module")
def plan_64_gpus():
    return make_plan(_request())


def test_flops_agree_with_training_flops():
    model, ponder = _pythia_1_4b(), PonderConfig(num_latent_thoughts=1)
    for j in (2, 3, 4):
        assert flops_per_token(model, ponder, 2048, [j]) * 2048 == step_flops(
            model, ponder, 2048, 1, [j])
    mean = sum(step_flops(model, ponder, 2048, 1, [j]) for j in (2, 3, 4)) / 3 / 2048
    assert flops_per_token(model, ponder, 2048, [2, 3, 4]) == pytest.approx(mean)
    assert vanilla_flops_per_token(model, 2048) * 2048 == step_flops(
        model, PonderConfig(num_latent_thoughts=0), 2048, 1, [0])
    # Full recompute repeats the layers' forward of every pass (K=0: one pass, no output).
    assert recompute_flops_per_token(model, PonderConfig(num_latent_thoughts=0), 2048, [0],
                                     "full") * 2048 == pass_flops(model, 2048, 1, False, False)
    # Selective: the attention part only, 4 n^2 heads d per layer.
    assert recompute_flops_per_token(model, PonderConfig(num_latent_thoughts=0), 2048, [0],
                                     "selective") * 2048 == 24 * 4 * 2048 ** 2 * 2048


def test_step_time_and_bubble():
    request = _request()
    layout = Layout(tp=1, pp=1, dp=64, micro_batch_size=4, recompute="none")
    plan = plan_layout(request, layout)
    time = plan.time
    assert plan.bubble == 0 == time.bubble and time.pipeline == 0 and time.tensor_parallel == 0
    # Optimizer: the parameter shard streamed at 30 bytes per parameter.
    assert time.optimizer == pytest.approx(plan.parameters / 64 * 30 / 3.35e12)
    assert plan.step_seconds == pytest.approx(time.compute + time.gradients + time.parameters
                                              + time.optimizer)
    # Compute at most the efficiency allows: model FLOPs / (GPUs x peak x 0.5) is a floor.
    tokens = 1024 * 2048
    floor = tokens * flops_per_token(request.model, request.ponder, 2048, (2, 3, 4)) / 64 \
        / (989e12 * 0.5)
    assert floor < time.compute < 1.1 * floor
    piped = plan_layout(request, Layout(tp=2, pp=4, dp=8, micro_batch_size=4, recompute="full"))
    # M = 1024 / (4 * 8) = 32 micro-batches, V = K + E[max J over 32 draws] + 1 ~ 6 passes.
    assert piped.num_microbatches == 32 and piped.passes == 6
    assert piped.bubble == pytest.approx(interleaved_idle_fraction(4, 32, 6), rel=1e-4)
    assert piped.time.tensor_parallel > 0 and piped.time.pipeline > 0


def test_64_gpu_plan_does_not_tie(plan_64_gpus):
    fitting = plan_64_gpus.fitting
    by_tp = {}
    for p in fitting:
        by_tp.setdefault(p.layout.tp, p.step_seconds)
    # Tensor parallelism costs communication: the best layout of each TP size is slower.
    sizes = sorted(by_tp)
    assert [by_tp[t] for t in sizes] == sorted(by_tp.values()) and len(set(by_tp.values())) == \
        len(by_tp) > 2
    assert fitting[0].time.communication_share < fitting[-1].time.communication_share


def test_candidate_layouts_respect_divisibility():
    request = _request(gpus=16, global_batch_size=64)
    layouts = candidate_layouts(request)
    assert layouts
    for layout in layouts:
        assert layout.tp * layout.pp * layout.dp == 16
        assert 24 % layout.pp == 0 and 16 % layout.tp == 0
        microbatches = 64 // (layout.micro_batch_size * layout.dp)
        assert microbatches * layout.micro_batch_size * layout.dp == 64
        assert layout.pp == 1 or microbatches % layout.pp == 0


def test_plan_ranks_fitting_layouts_by_step_time(plan_64_gpus):
    plan = plan_64_gpus
    fitting = plan.fitting
    assert fitting and all(p.fits for p in fitting)
    assert [p.step_seconds for p in fitting] == sorted(p.step_seconds for p in fitting)
    assert all(p.total_gib <= 80 for p in fitting)
    assert plan.steps == -(-300e9 // (1024 * 2048))
    text = format_plan(plan, top=3)
    assert "FLOPs/token" in text and "GPU-h" in text
    assert len(text.splitlines()) == 9 + 3  # summary, table header, three layouts
    assert "comm" in text and "interconnect: 8 GPUs/node" in text


def test_errors_are_one_line(capsys):
    with pytest.raises(ValueError, match="unknown --gpu-type 'tpu'"):
        gpu_spec("tpu")
    with pytest.raises(ValueError, match="without --gpu-type give --peak-tflops"):
        gpu_spec(None, memory_gib=80, bandwidth_tbs=2)
    assert gpu_spec("a100", memory_gib=40).memory_gib == 40
    with pytest.raises(ValueError, match="--mfu must be in"):
        _request(mfu=1.5)
    with pytest.raises(ValueError, match="no layout of 7 GPUs"):
        make_plan(_request(gpus=7, global_batch_size=1))
    with pytest.raises(SystemExit):
        main(["--model-preset", "pythia-1.4b", "--gpus", "8"])
    assert "give --train-tokens and --gpus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model-preset", "pythia-1.4b", "--gpus", "8", "--train-tokens", "1e9"])
    assert "give --global-batch-size" in capsys.readouterr().err


def test_cli_prints_a_plan(capsys):
    assert main(["--model-preset", "pythia-160m", "--num-latent-thoughts", "1",
                 "--jacobi-iterations", "3", "--global-batch-size", "256",
                 "--train-tokens", "1e9", "--gpus", "8", "--gpu-type", "a100", "--top", "2"]) == 0
    out = capsys.readouterr().out
    assert "K=1, J=3" in out and "8 x A100 SXM 80GB" in out


def test_validate_refuses_unknown_parts_and_cases(capsys):
    with pytest.raises(SystemExit):
        main(["--validate", "--validate-parts", "speed"])
    assert "unknown --validate-parts ['speed']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--validate", "--validate-cases", "TP9"])
    assert "unknown validation case(s) ['TP9']" in capsys.readouterr().err


def test_validate_throughput_part(capsys):
    assert main(["--validate", "--validate-parts", "throughput"]) == 0
    out = capsys.readouterr().out
    assert "1008B TP 8 PP 64" in out and "median absolute error" in out
