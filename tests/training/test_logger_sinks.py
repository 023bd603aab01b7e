"""The logging rank sends its scalars to W&B (--wandb-*) as it does to TensorBoard.

wandb is not installed here (nor needed): a stand-in module records what the logger asks of it,
which is the whole of the W&B API the logger uses (init, run.log, run.finish).
"""

import importlib.util
import sys
import types

import pytest

from megatron_ponder.training.arguments import parse_args
from megatron_ponder.training.logger import TrainingLogger, WandbSettings
from megatron_ponder.training.resolve import ConfigError, resolve_config


class FakeRun:
    def __init__(self, **init_kwargs):
        self.init_kwargs, self.logged, self.finished = init_kwargs, [], False

    def log(self, scalars, step):
        self.logged.append((step, dict(scalars)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.SimpleNamespace(runs=[])

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def test_scalars_and_validation_reach_the_wandb_run(tmp_path, fake_wandb, capsys):
    settings = WandbSettings(project="ponder", exp_name="k1", save_dir=str(tmp_path / "w"),
                             config={"model": {"hidden_size": 64}})
    logger = TrainingLogger(train_iters=2, log_interval=1, world_size=1, global_batch_size=4,
                            seq_length=16, enabled=True, wandb=settings)
    for iteration, loss in ((1, 5.0), (2, 4.0)):
        logger.record_step(0.5, 1e9, loss, [3], skipped=False)
        logger.maybe_log(iteration, 4 * iteration, 1e-3, 0.5, 1.0, 12.5 if iteration == 2 else None)
    logger.log_validation(2, 4.5)
    logger.close()

    run, = fake_wandb.runs
    assert run.init_kwargs == dict(project="ponder", name="k1", entity=None,
                                   dir=str(tmp_path / "w"), config={"model": {"hidden_size": 64}})
    assert (tmp_path / "w").is_dir()
    steps = [step for step, _ in run.logged]
    assert steps == [1, 2, 2]
    first, second, validation = (scalars for _, scalars in run.logged)
    assert first["lm loss"] == 5.0 and first["learning-rate"] == 1e-3
    assert "params-norm" not in first and second["params-norm"] == 12.5
    assert first["tokens-per-second"] == pytest.approx(4 * 16 / 0.5)
    assert validation == {"lm loss validation": 4.5}
    assert run.finished
    assert "iteration        2/       2" in capsys.readouterr().out  # the log line is unchanged


def test_only_the_logging_rank_opens_a_run(fake_wandb):
    TrainingLogger(train_iters=1, log_interval=1, world_size=2, global_batch_size=4,
                   seq_length=16, enabled=False, wandb=WandbSettings(project="p")).close()
    assert fake_wandb.runs == []


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_flag_without_the_package_says_how_to_get_it():
    config = parse_args(["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size",
                         "100", "--wandb-project", "ponder"])
    assert config.logging.wandb_project == "ponder"
    with pytest.raises(ConfigError, match="pip install wandb"):
        resolve_config(config, 1)


def test_wandb_flags_become_settings_with_the_whole_config():
    from megatron_ponder.training.trainer import _wandb_settings

    config = parse_args(["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size",
                         "100", "--wandb-project", "ponder", "--wandb-exp-name", "k1",
                         "--wandb-save-dir", "/tmp/w", "--num-latent-thoughts", "2"])
    settings = _wandb_settings(config)
    assert (settings.project, settings.exp_name, settings.entity, settings.save_dir) == \
        ("ponder", "k1", None, "/tmp/w")
    assert settings.config["ponder"]["num_latent_thoughts"] == 2
    assert _wandb_settings(parse_args(["--mock-data", "--tokenizer-type", "NullTokenizer",
                                       "--vocab-size", "100"])) is None
