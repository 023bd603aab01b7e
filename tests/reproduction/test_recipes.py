"""The reproduction's arms, their flags, resume rules and cost accounting (no training)."""

import os

import pytest

from megatron_ponder.reproduction.accounting import cumulative_training_flops
from megatron_ponder.checkpoint.layout import TRACKER_FILE
from megatron_ponder.methods import LOOP, PAUSE
from megatron_ponder.reproduction.recipes import RECIPES, arms_for, default_arm_names, \
    find_arm, select_arms
from megatron_ponder.reproduction.report import markdown_table, plot_curves
from megatron_ponder.reproduction.runner import Setup, arm_train_iters, \
    resume_flags, training_flags, validation_curve
from megatron_ponder.training.arguments import parse_args

SMALL = RECIPES["small"]


def _setup(tmp_path, recipe=SMALL):
    return Setup(recipe=recipe, output_dir=str(tmp_path),
                 data_flags=["--mock-data", "--tokenizer-type", "NullTokenizer",
                             "--vocab-size", "256"])


def test_default_arms_cover_the_issue_and_leave_out_the_optional_ones():
    names = default_arm_names(SMALL)
    assert names == ["vanilla", "vanilla-seed2", "vanilla-2x-depth", "ponderlm2-k1",
                     "ponderlm2-k1-seed2", "pause-k1", "loop-k1", "vanilla-compute-matched",
                     "ponderlm2-k1-grad2", "ponderlm2-k1-warmup", "vanilla-continued",
                     "ponderlm2-k1-continued"]
    assert "ponderlm2-k2" in [arm.name for arm in arms_for(SMALL)]


def test_selecting_a_continued_arm_brings_its_source_first():
    assert [arm.name for arm in select_arms(SMALL, ["ponderlm2-k1-continued"])] == \
        ["vanilla", "ponderlm2-k1-continued"]
    # the compute-matched arm needs only the other arm's definition, not its run
    assert [arm.name for arm in select_arms(SMALL, ["vanilla-compute-matched"])] == \
        ["vanilla-compute-matched"]
    with pytest.raises(ValueError, match="unknown arm.*known: vanilla"):
        select_arms(SMALL, ["vanila"])


def test_learning_rate_sweep_names_each_rate_and_keeps_sources_at_the_same_rate(tmp_path):
    arms = select_arms(SMALL, ["vanilla", "ponderlm2-k1-continued"], [0.004, SMALL.lr])
    assert [arm.name for arm in arms] == ["vanilla", "ponderlm2-k1-continued",
                                          "vanilla-lr0.004", "ponderlm2-k1-continued-lr0.004"]
    swept = arms[3]
    assert (swept.family, swept.init_from, swept.lr) == ("ponderlm2-k1-continued",
                                                         "vanilla-lr0.004", 0.004)
    setup = _setup(tmp_path)
    assert parse_args(training_flags(setup, swept, 10)).optim.lr == 0.004
    assert parse_args(training_flags(setup, arms[0], 10)).optim.lr == SMALL.lr
    assert arms[0].family == "vanilla" and arms[0].learning_rate(SMALL) == SMALL.lr
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="--lr must be positive"):
            select_arms(SMALL, ["vanilla"], [bad])


def test_best_learning_rate_is_read_from_the_finished_runs_of_the_tuning_arm(tmp_path):
    from megatron_ponder.reproduction.recipes import best_learning_rate
    from megatron_ponder.reproduction.runner import read_json, write_json

    for name, lr, loss in (("ponderlm2-k1", 0.002, 4.10), ("ponderlm2-k1-lr0.004", 0.004, 4.05),
                           ("ponderlm2-k1-lr0.008", 0.008, 4.20), ("vanilla", 0.002, 4.3)):
        (tmp_path / name).mkdir()
        write_json(str(tmp_path / name / "result.json"), dict(lr=lr, valid_loss=loss))
    (tmp_path / "ponderlm2-k1-lr0.016").mkdir()  # not finished: not a candidate
    (tmp_path / "ponderlm2-k1-grad2").mkdir()   # another arm, not a rate of ponderlm2-k1

    def read(run):
        return read_json(os.path.join(run, "result.json"))

    for name in ("ponderlm2-k1", "ponderlm2-k1-seed2", "loop-k1", "ponderlm2-k1-grad2-warmup"):
        assert best_learning_rate(str(tmp_path), find_arm(SMALL, name), read) == 0.004
    assert best_learning_rate(str(tmp_path), find_arm(SMALL, "vanilla-seed2"), read) == 0.002
    with pytest.raises(ValueError, match="no finished run of vanilla-2x-depth"):
        best_learning_rate(str(tmp_path), find_arm(SMALL, "vanilla-2x-depth-seed2"), read)


def test_arm_flags_differ_only_where_the_arm_does(tmp_path):
    setup = _setup(tmp_path)
    configs = {arm.name: parse_args(training_flags(setup, arm, 300)) for arm in arms_for(SMALL)}
    vanilla, ponder = configs["vanilla"], configs["ponderlm2-k1"]
    assert vanilla.ponder.thoughts == 0 and ponder.ponder.thoughts == 1
    assert ponder.ponder.random_jacobi_iterations == (2, 3, 4)  # the GPT-NeoX recipe
    assert configs["vanilla-2x-depth"].model.num_layers == 2 * vanilla.model.num_layers
    assert configs["vanilla-seed2"].train.seed != vanilla.train.seed
    assert configs["pause-k1"].ponder.method is PAUSE
    assert configs["loop-k1"].ponder.method is LOOP
    assert configs["ponderlm2-k1-grad2"].ponder.ponder_grad_passes == 2
    assert configs["ponderlm2-k1-warmup"].ponder.ponder_warmup_iters == SMALL.train_iters // 2
    for config in configs.values():  # same schedule shape, batch and data everywhere
        assert (config.optim.lr, config.train.global_batch_size, config.data.seq_length) == \
            (SMALL.lr, SMALL.global_batch_size, SMALL.seq_length)
        assert config.checkpoint.save_interval == 50


def test_compute_matched_iterations_divide_the_flops(tmp_path):
    setup = _setup(tmp_path)
    costs = {"ponderlm2-k1": 900.0, "vanilla-compute-matched": 1.0}

    def flops_of(arm, iterations):
        return costs[arm.name] * (iterations if arm.name != "ponderlm2-k1" else 1)

    matched = find_arm(SMALL, "vanilla-compute-matched")
    assert arm_train_iters(setup, matched, flops_of) == 900
    continued = find_arm(SMALL, "vanilla-continued")
    assert arm_train_iters(setup, continued, flops_of) == SMALL.train_iters // 2


def test_cumulative_flops_use_the_training_j_draws():
    from megatron_ponder.model.ponder import draw_jacobi_iterations
    from megatron_ponder.training.flops import step_flops

    config = parse_args(["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads",
                         "4", "--seq-length", "8", "--micro-batch-size", "2",
                         "--global-batch-size", "6", "--random-jacobi-iterations", "1", "5",
                         "--ponder-warmup-iters", "1", "--seed", "9", "--mock-data"])
    curve = cumulative_training_flops(config, 3)
    first = step_flops(config.model, config.ponder, 8, 2, [3, 3, 3], num_latent_thoughts=0)
    second = step_flops(config.model, config.ponder, 8, 2,
                        [draw_jacobi_iterations((1, 5), 9, 1, m) for m in range(3)])
    assert curve[0] == first and curve[1] == first + second
    assert curve[2] > curve[1]


def test_resume_flags(tmp_path):
    setup = _setup(tmp_path)
    continued = find_arm(SMALL, "ponderlm2-k1-continued")
    with pytest.raises(RuntimeError, match="continues vanilla, which has no checkpoint"):
        resume_flags(setup, continued)
    source = tmp_path / "vanilla" / "checkpoints"
    source.mkdir(parents=True)
    (source / TRACKER_FILE).write_text("300")
    assert resume_flags(setup, continued) == ["--load", str(source), "--finetune"]
    own = tmp_path / continued.name / "checkpoints"
    own.mkdir(parents=True)
    (own / TRACKER_FILE).write_text("50")
    assert resume_flags(setup, continued) == ["--load", str(own)]
    vanilla = find_arm(SMALL, "vanilla")
    assert resume_flags(setup, vanilla) == ["--load", str(source)]


def test_validation_curve_keeps_the_last_value_per_iteration(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        " validation loss at iteration 0 | lm loss value: 7.5E+00 | lm loss PPL: 1 |\n"
        " iteration 10/ 20 | lm loss: 6.0E+00 |\n"
        " validation loss at iteration 10 | lm loss value: 6.25E+00 | lm loss PPL: 1 |\n"
        " validation loss at iteration 10 | lm loss value: 6.5E+00 | lm loss PPL: 1 |\n")
    assert validation_curve(str(log)) == [[0, 7.5], [10, 6.5]]
    assert validation_curve(str(tmp_path / "missing.log")) == []


def test_report_table_and_plots(tmp_path):
    results = [dict(arm=name, group="baseline", parameters=1.2e6, training_tokens=6.1e5,
                    training_flops=4.3e12, inference_flops_per_token=2.5e6,
                    train_seconds=75.0, valid_loss=loss, heldout_loss=None,
                    curve=[dict(tokens=1e4, flops=1e11, loss=6.0),
                           dict(tokens=6.1e5, flops=4.3e12, loss=loss)])
               for name, loss in (("vanilla", 4.6), ("ponderlm2-k1", 4.5))]
    table = markdown_table(results)
    assert table.splitlines()[2] == ("| vanilla | - | 1.2M | 610k | 4.3T | 2.5M | 1m15s | "
                                     "4.6000 | 99.48 | - | - |")
    paths = plot_curves(results, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["valid_loss_vs_tokens.png",
                                                    "valid_loss_vs_flops.png"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_each_arm_is_compared_at_its_best_learning_rate():
    from megatron_ponder.reproduction.report import at_best_rates, learning_rate_table

    def run(arm, family, lr, loss):
        return dict(arm=arm, family=family, lr=lr, valid_loss=loss)

    runs = [run("vanilla", "vanilla", 0.002, 4.15),
            run("ponderlm2-k1", "ponderlm2-k1", 0.002, 4.10),
            run("vanilla-lr0.004", "vanilla", 0.004, 4.05),
            run("ponderlm2-k1-lr0.004", "ponderlm2-k1", 0.004, 3.94),
            run("ponderlm2-k1-lr0.008", "ponderlm2-k1", 0.008, 4.00),
            run("vanilla-seed2", "vanilla-seed2", 0.004, 4.07)]
    best = at_best_rates(runs)
    assert [(r["arm"], r["lr"], r["valid_loss"]) for r in best] == [
        ("vanilla", 0.004, 4.05), ("ponderlm2-k1", 0.004, 3.94), ("vanilla-seed2", 0.004, 4.07)]
    assert learning_rate_table(runs).splitlines() == [
        "| arm | lr 0.002 | lr 0.004 | lr 0.008 |", "|---|---:|---:|---:|",
        "| vanilla | 4.1500 | **4.0500** | - |",
        "| ponderlm2-k1 | 4.1000 | **3.9400** | 4.0000 |"]
    assert learning_rate_table(best) is None  # one rate per arm: no sweep to show


def test_claims_table_compares_seed_means_against_the_seed_spread():
    from megatron_ponder.reproduction.report import claims_table, seed_spread

    def row(arm, loss, flops=1.0):
        return dict(arm=arm, valid_loss=loss, heldout_loss=loss + 1, training_flops=flops)

    results = [row("vanilla", 4.60), row("vanilla-seed2", 4.62), row("vanilla-2x-depth", 4.50),
               row("ponderlm2-k1", 4.59, 8.0), row("ponderlm2-k1-seed2", 4.55, 8.0),
               row("loop-k1", 4.40, 2.0)]
    assert seed_spread(results) == pytest.approx(0.04)
    lines = claims_table(results).splitlines()
    # means: vanilla 4.61, K=1 4.57; judged against the larger of the two arms' own spreads
    assert lines[2] == ("| one thought beats vanilla of the same size | ponderlm2-k1 vs vanilla "
                        "| 2 vs 2 | +0.0400 | +0.0400 | 8.00x | 0.0400 | no |")
    assert lines[3] == ("| one thought beats 2x depth (equal inference FLOPs) | ponderlm2-k1 vs "
                        "vanilla-2x-depth | 2 vs 1 | -0.0700 | -0.0700 | 8.00x | 0.0400 | no |")
    assert lines[4].endswith("| 2 vs 1 | -0.1700 | -0.1700 | 4.00x | 0.0400 | yes |")
    assert any(line.startswith("| 2x depth beats vanilla") and "+0.1100" in line
               for line in lines)
    assert not any("Pause" in line for line in lines)  # arms that did not run are left out


def test_cheaper_table_reports_the_share_of_the_gain_kept_on_the_first_seed():
    from megatron_ponder.reproduction.report import cheaper_table

    def row(arm, loss, flops):
        return dict(arm=arm, valid_loss=loss, heldout_loss=None, training_flops=flops)

    results = [row("vanilla", 4.00, 1.0), row("vanilla-seed2", 3.00, 1.0),
               row("ponderlm2-k1", 3.90, 8.0), row("ponderlm2-k1-grad2", 3.95, 4.0),
               row("ponderlm2-k1-grad2-warmup", 4.02, 2.0)]
    lines = cheaper_table(results).splitlines()
    assert lines[2] == "| full K=1 | ponderlm2-k1 | 3.9000 | +0.1000 | 100% | - | 1.00x |"
    assert lines[3] == ("| last 2 passes' gradients | ponderlm2-k1-grad2 | 3.9500 | +0.0500 | 50% "
                        "| - | 0.50x |")
    assert lines[4] == "| both | ponderlm2-k1-grad2-warmup | 4.0200 | -0.0200 | -20% | - | 0.25x |"
    assert len(lines) == 5  # the warm-up alone did not run
    no_gain = [row("vanilla", 3.8, 1.0), row("ponderlm2-k1", 3.9, 8.0)]
    assert "- (no gain)" in cheaper_table(no_gain)
    assert cheaper_table([row("vanilla", 3.8, 1.0)]) == ""


def _curve_row(arm, losses, tokens_per_iteration=100):
    return dict(arm=arm, training_tokens=tokens_per_iteration * 10 * (len(losses) - 1),
                curve=[dict(iteration=i * 10, tokens=i * 10 * tokens_per_iteration,
                            flops=i * 1e9, loss=loss) for i, loss in enumerate(losses)])


def test_gap_table_subtracts_each_arm_from_the_mean_vanilla_curve():
    from megatron_ponder.reproduction.report import gap_points, gap_table

    results = [_curve_row("vanilla", [7.0, 5.0, 4.0]), _curve_row("vanilla-seed2", [7.0, 5.2, 4.2]),
               _curve_row("ponderlm2-k1", [7.0, 5.3, 4.0]),
               _curve_row("ponderlm2-k1-seed2", [7.0, 5.1, 4.0]),
               _curve_row("loop-k1", [7.0, 4.9])]
    lines = gap_table(results).splitlines()
    assert lines[0] == "| iteration | 10 | 20 |"
    assert lines[2] == "| PonderLM-2 K=1 | -0.100 | +0.100 |"
    assert lines[3] == "| Loop K=1 | +0.200 | - |"
    assert len(lines) == 4  # no 2x-depth arm ran
    assert gap_table([_curve_row("loop-k1", [7.0, 4.9])]) == ""
    # the spread: every pairing of a vanilla seed with a K=1 seed
    (x1, gap1, low1, high1), (x2, gap2, low2, high2) = gap_points(results, "ponderlm2-k1",
                                                                    key="tokens")
    assert (x1, x2) == (1000, 2000)
    assert (gap1, low1, high1) == pytest.approx((-0.1, -0.3, 0.1))
    assert (gap2, low2, high2) == pytest.approx((0.1, 0.0, 0.2))


def test_gap_plot_draws_every_scale_and_needs_vanilla(tmp_path):
    from megatron_ponder.reproduction.report import plot_gap

    long = [_curve_row("vanilla", [7.0, 5.0, 4.0, 3.8]),
            _curve_row("ponderlm2-k1", [7.0, 5.3, 4.0, 3.7]),
            _curve_row("ponderlm2-k1-grad2-warmup", [7.0, 6.0, 4.1, 3.75])]
    small = [_curve_row("vanilla", [7.0, 5.0]), _curve_row("vanilla-2x-depth", [7.0, 4.9])]
    path = plot_gap([("long", long), ("small", small)], str(tmp_path / "gap.png"))
    assert os.path.getsize(path) > 1000
    assert plot_gap([("small", small[1:])], str(tmp_path / "none.png")) is None
    only_second_seeds = [_curve_row("vanilla-seed2", [7.0, 5.0]),
                         _curve_row("ponderlm2-k1-seed2", [7.0, 4.9])]
    assert plot_gap([("small", only_second_seeds)], str(tmp_path / "seed2.png"))
    assert not os.path.exists(tmp_path / "none.png")


def test_report_only_rewrites_the_report_from_finished_runs(tmp_path, capsys):
    import json
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "reproduce_tool", os.path.join(os.path.dirname(__file__), "..", "..", "tools",
                                       "reproduce.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)

    def finish(directory, arm, family, lr, loss):
        os.makedirs(directory / arm)
        run = dict(_curve_row(arm, [7.0, 5.0, loss]), family=family, lr=lr, parameters=1e6,
                   training_flops=1e12, inference_flops_per_token=1e6, train_seconds=60.0,
                   valid_loss=loss, heldout_loss=None)
        (directory / arm / "result.json").write_text(json.dumps(run))

    long, small = tmp_path / "long", tmp_path / "small"
    finish(long, "ponderlm2-k1-lr0.004", "ponderlm2-k1", 0.004, 3.9)
    finish(long, "vanilla-lr0.008", "vanilla", 0.008, 4.0)
    finish(long, "vanilla", "vanilla", 0.002, 4.1)
    os.makedirs(long / "unfinished-arm")
    finish(small, "vanilla", "vanilla", 0.002, 4.5)
    finish(small, "ponderlm2-k1", "ponderlm2-k1", 0.002, 4.4)
    assert tool.main(["--scale", "long", "--output-dir", str(long), "--report-only",
                      "--gap-plot-with", str(small)]) == 0
    table = (long / "table.md").read_text()
    assert table.splitlines()[2].startswith("| vanilla | 0.008 |")  # recipe order, best rate
    assert "| vanilla | **4.0000** | - |" not in table and "| vanilla | 4.1000 | **4.0000** |" \
        in table
    assert [run["arm"] for run in json.loads((long / "results.json").read_text())] == [
        "vanilla", "vanilla-lr0.008", "ponderlm2-k1-lr0.004"]
    assert all(os.path.getsize(long / name) > 1000 for name in
               ("valid_loss_vs_tokens.png", "valid_loss_vs_flops.png", "gap_vs_tokens.png"))
    assert tool.main(["--output-dir", str(tmp_path / "empty"), "--report-only"]) == 2
    assert "no finished run" in capsys.readouterr().err
    assert tool.main(["--output-dir", str(long), "--gap-plot-with", str(small)]) == 2
