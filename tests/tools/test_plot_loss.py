"""tools/plot_loss.py reads the log lines the trainer prints and draws several runs."""

import pytest

from megatron_ponder.training.logger import TrainingLogger
from tests.tools.conftest import load_tool


def _write_log(path, capsys, losses, validation):
    logger = TrainingLogger(train_iters=len(losses), log_interval=1, world_size=1,
                            global_batch_size=4, seq_length=16, enabled=True)
    for iteration, loss in enumerate(losses, start=1):
        logger.record_step(0.1, 1e9, loss, [3], skipped=False)
        logger.maybe_log(iteration, iteration * 4, 1e-3, 1.0)
        if iteration in validation:
            logger.log_validation(iteration, validation[iteration])
    path.write_text(capsys.readouterr().out)


def test_parses_trainer_logs_and_writes_png(tmp_path, capsys):
    plot_loss = load_tool("plot_loss")
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    _write_log(first, capsys, [9.5, 8.25, 7.125], {2: 8.5, 3: 7.5})
    _write_log(second, capsys, [9.0, 8.0], {2: 8.75})
    curves = plot_loss.parse_log(str(first))
    assert curves["train"] == [(1, 9.5), (2, 8.25), (3, 7.125)]
    assert curves["valid"] == [(2, 8.5), (3, 7.5)]
    output = tmp_path / "out" / "loss.png"
    assert plot_loss.main([str(first), str(second), "--labels", "a", "b",
                           "--output", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a: 3 train / 2 validation points" in capsys.readouterr().out


def test_bad_inputs(tmp_path, capsys):
    plot_loss = load_tool("plot_loss")
    empty = tmp_path / "empty.log"
    empty.write_text("nothing here\n")
    with pytest.raises(SystemExit):
        plot_loss.main([str(empty), "--output", str(tmp_path / "x.png")])
    assert "no Megatron-format loss lines" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        plot_loss.main([str(tmp_path / "missing.log")])
    with pytest.raises(SystemExit):
        plot_loss.main([str(empty), "--labels", "a", "b"])


def test_compare_checks_training_losses_iteration_by_iteration(tmp_path, capsys):
    plot_loss = load_tool("plot_loss")
    first, close, far = tmp_path / "a.log", tmp_path / "b.log", tmp_path / "c.log"
    _write_log(first, capsys, [9.5, 8.25, 7.125], {})
    _write_log(close, capsys, [9.52, 8.2, 7.1], {})
    _write_log(far, capsys, [9.5, 8.25, 7.9], {})
    assert plot_loss.main([str(first), str(close), "--compare", "--rtol", "0.01"]) == 0
    assert "agree within rtol 0.01 over 3 shared iterations" in capsys.readouterr().out
    assert plot_loss.main([str(first), str(far), "--compare", "--rtol", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "| 3 | 7.125000 | 7.900000 | 1.09e-01 over rtol |" in out and "DIFFER" in out
    lines, agree = plot_loss.compare([(1, 2.0)], [(2, 2.0)], 0.1)
    assert not agree  # nothing in common is no evidence
    with pytest.raises(SystemExit):
        plot_loss.main([str(first), "--compare"])
