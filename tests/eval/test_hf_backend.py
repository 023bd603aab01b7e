"""lm-eval's stock ``hf`` backend on an exported folder (AutoModelForCausalLM with
trust_remote_code, AutoTokenizer) scores local tasks exactly as our evaluator (``PonderHFLM``:
our loader and tokenizer) does on the same folder: every request's log-likelihood within 1e-4,
accuracies equal. The quick test runs both in this process; the slow one runs the two command
lines (``lm_eval --model hf ...`` and ``tools/evaluate.py``)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from megatron_ponder.eval.lm_eval_model import PonderHFLM
from megatron_ponder.eval.suite import run_suite
from tests.eval.hf_backend import TASKS, assert_same_scores, export_tiny, metrics, write_tasks

pytestmark = pytest.mark.usefixtures("single_process")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _responses(results: dict) -> dict:
    """{(task, doc_id): [log-likelihood of each request]} from logged samples."""
    out = {}
    for task, samples in results["samples"].items():
        for sample in samples:
            out[(task, sample["doc_id"])] = [
                float(r[0]) if isinstance(r, (list, tuple)) else float(r)
                for r in sample["filtered_resps"]]
    return out


def test_hf_backend_equals_our_evaluator(tmp_path):
    import lm_eval
    import lm_eval.models  # noqa: F401  (registers "hf")
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    _, folder = export_tiny(tmp_path / "model")
    tasks = write_tasks(tmp_path)
    ours = run_suite(PonderHFLM(folder, batch_size=3, device="cpu"),
                     TASKS, include_path=tasks, bootstrap_iters=0, log_samples=True)
    # What `lm_eval --model hf --model_args pretrained=FOLDER,trust_remote_code=True` builds.
    hf = get_model("hf").create_from_arg_string(
        f"pretrained={folder},trust_remote_code=True", {"batch_size": 3, "device": "cpu"})
    assert type(hf.model).__name__ == "PonderLM2ForCausalLM"
    theirs = lm_eval.simple_evaluate(
        model=hf, tasks=TASKS, log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=tasks, include_defaults=False))

    expected, got = _responses(ours), _responses(theirs)
    assert sorted(expected) == sorted(got) and len(expected) == 13
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, abs=1e-4), key
    assert_same_scores(metrics(ours), metrics(theirs))
    accuracies = [v for (_, m), v in metrics(ours).items() if m.startswith("acc")]
    assert any(0.0 < a < 1.0 for a in accuracies)  # the comparison can tell scores apart


def test_same_scores_check_catches_differences():
    base = {("t", "acc"): 0.5, ("t", "perplexity"): 12.0}
    assert_same_scores(base, dict(base))
    with pytest.raises(AssertionError):
        assert_same_scores(base, {("t", "acc"): 0.5 + 1e-9, ("t", "perplexity"): 12.0})
    with pytest.raises(AssertionError):
        assert_same_scores(base, {("t", "acc"): 0.5, ("t", "perplexity"): 12.01})
    with pytest.raises(AssertionError):
        assert_same_scores(base, {("t", "acc"): 0.5})


@pytest.mark.slow
def test_lm_eval_cli_equals_tools_evaluate(tmp_path):
    """The two command lines on the same exported folder and task folder."""
    _, folder = export_tiny(tmp_path / "model")
    tasks = write_tasks(tmp_path)
    path = [REPO] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    ours_json = tmp_path / "ours.json"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "evaluate.py"), "--hf", folder,
                    "--tasks", ",".join(TASKS), "--include-path", tasks, "--batch-size", "3",
                    "--bootstrap-iters", "0", "--output", str(ours_json)],
                   check=True, env=env, cwd=str(tmp_path))
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={folder},trust_remote_code=True", "--tasks", ",".join(TASKS),
                    "--include_path", tasks, "--batch_size", "3", "--device", "cpu",
                    "--output_path", str(tmp_path / "lm_eval")],
                   check=True, env=env, cwd=str(tmp_path))
    [path] = glob.glob(str(tmp_path / "lm_eval" / "**" / "results_*.json"), recursive=True)
    with open(path) as f:
        theirs = metrics(json.load(f))
    with open(ours_json) as f:
        ours = {(row["task"], row["metric"]): row["value"] for row in json.load(f)["rows"]}
    assert_same_scores(ours, theirs)
