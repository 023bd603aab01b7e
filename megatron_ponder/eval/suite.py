"""Run the paper's downstream suite through lm-eval and turn the results into a table.

``run_suite`` maps each requested paper task to its offline version (``offline_tasks``) unless
``data_source="hub"``; any other lm-eval task name is passed through unchanged (it then needs
its dataset from the hub or the local HF cache).
"""

import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Union

from megatron_ponder.eval.offline_tasks import OFFLINE_SUFFIX, PAPER_TASKS, build_offline_tasks

DATA_SOURCES = ("offline", "hub")
# lm-eval's stock splits, for tasks run from the hub.
STOCK_SPLITS = {"lambada_openai": "test", "arc_easy": "test", "arc_challenge": "test",
                "piqa": "validation", "hellaswag": "validation", "winogrande": "validation",
                "sciq": "test"}


@dataclass
class ResultRow:
    task: str
    split: str
    metric: str
    value: float
    stderr: Optional[float]
    samples: Optional[int] = None


def run_suite(lm, tasks: Sequence[str] = tuple(PAPER_TASKS), data_source: str = "offline",
              task_cache: Optional[str] = None, limit: Optional[Union[int, float]] = None,
              seed: int = 1234, bootstrap_iters: int = 1000,
              include_path: Optional[str] = None, log_samples: bool = False) -> dict:
    """lm-eval ``simple_evaluate`` of ``lm`` (an lm-eval LM) on ``tasks``; returns its result
    dict. Offline data is written under ``task_cache`` on first use. ``include_path``: a folder
    of extra task YAMLs (lm_eval's ``--include_path``); its tasks need no stock index."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if data_source not in DATA_SOURCES:
        raise ValueError(f"data_source must be one of {DATA_SOURCES}, got {data_source!r}")
    if include_path is not None and not os.path.isdir(include_path):
        raise FileNotFoundError(f"include_path {include_path!r} is not a folder")
    offline = [t for t in tasks if t in PAPER_TASKS] if data_source == "offline" else []
    paths = [build_offline_tasks(task_cache, offline)] if offline else []
    if include_path is not None:
        paths.append(include_path)
    others = [t for t in tasks if t not in offline]
    if include_path is not None:
        local = set(TaskManager(include_path=include_path, include_defaults=False).all_tasks)
        others = [t for t in others if t not in local]
    # Our offline YAMLs include the stock ones by absolute path, so the (slow, ~10 s) index of
    # every stock task is only needed for tasks we pass through.
    manager = TaskManager(include_path=paths or None, include_defaults=bool(others))
    names = [PAPER_TASKS[t].offline_name if t in offline else t for t in tasks]
    return lm_eval.simple_evaluate(
        model=lm, tasks=names, task_manager=manager, limit=limit, bootstrap_iters=bootstrap_iters,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, log_samples=log_samples)


def result_rows(results: dict) -> List[ResultRow]:
    """One row per (task, metric) of an lm-eval result dict; offline tasks under their stock
    names, with the split they were scored on."""
    rows = []
    samples = results.get("n-samples", {})
    for name, metrics in results["results"].items():
        offline = name.endswith(OFFLINE_SUFFIX) and name[:-len(OFFLINE_SUFFIX)] in PAPER_TASKS
        task = name[:-len(OFFLINE_SUFFIX)] if offline else name
        split = PAPER_TASKS[task].split if offline else STOCK_SPLITS.get(task, "?")
        count = samples.get(name, {}).get("effective")
        for key, value in metrics.items():
            # Metrics are "name,filter"; other keys (alias, sample_len) are bookkeeping.
            metric, comma, filter_name = key.partition(",")
            if not comma or metric.endswith("_stderr") or not _is_number(value):
                continue
            stderr = metrics.get(f"{metric}_stderr,{filter_name}")
            rows.append(ResultRow(task, split, metric, float(value),
                                  float(stderr) if _is_number(stderr) else None, count))
    return rows


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def format_table(rows: Sequence[ResultRow]) -> str:
    """A markdown table: task, split, metric, value, stderr, samples."""
    lines = ["| Task | Split | Metric | Value | Stderr | Samples |",
             "|---|---|---|---:|---:|---:|"]
    for row in rows:
        stderr = "-" if row.stderr is None else f"{row.stderr:.4f}"
        samples = "-" if row.samples is None else str(row.samples)
        lines.append(f"| {row.task} | {row.split} | {row.metric} | {row.value:.4f} | "
                     f"{stderr} | {samples} |")
    return "\n".join(lines)


def rows_as_json(rows: Sequence[ResultRow]) -> List[Dict]:
    return [asdict(row) for row in rows]
