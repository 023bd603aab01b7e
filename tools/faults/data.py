"""Bad data: training on .bin/.idx pairs that are missing, disagree or cannot be read, and
tools/preprocess_data.py on malformed, non-UTF-8, empty or binary input. Each must stop with
one error line naming the file and write nothing.
"""

import os
import random
import shutil
import sys
from typing import Callable, List, Optional, Tuple

from tools.faults.harness import PREPROCESS, TINY_RUN, Outcome, Workspace, clean_stop


def data_fault(make: Callable[[str, str, str], Tuple[str, str, List[str]]]):
    """Train on a dataset broken by ``make(folder, first prefix, second prefix)`` (returns
    what it did, the prefix to train on and the texts the error line must name)."""

    def inject(ws: Workspace, name: str) -> Outcome:
        first, second = ws.dataset()
        folder = ws.folder(name)
        tried, prefix, named = make(folder, first, second)
        save = os.path.join(folder, "ckpt")
        flags = [flag for flag in TINY_RUN if flag not in ("--mock-data",)]
        flags = _replace(flags, "--tokenizer-type", "HuggingFaceTokenizer")
        flags = [f for i, f in enumerate(flags)
                 if f != "--vocab-size" and (i == 0 or flags[i - 1] != "--vocab-size")]
        run = ws.pretrain(flags + ["--data-path", prefix, "--split", "90,10,0", "--save", save])
        survived, detail = clean_stop(run, *named)
        lost = os.path.exists(save) and bool(os.listdir(save))
        if lost:
            survived, detail = False, "a checkpoint was written"
        return Outcome(name, tried, survived, lost, detail)

    return inject


def _replace(flags: List[str], flag: str, value: str) -> List[str]:
    flags = list(flags)
    flags[flags.index(flag) + 1] = value
    return flags


def _copy_pair(folder: str, bin_from: str, idx_from: str) -> str:
    prefix = os.path.join(folder, "data_text_document")
    shutil.copyfile(bin_from + ".bin", prefix + ".bin")
    shutil.copyfile(idx_from + ".idx", prefix + ".idx")
    return prefix


def missing_path(folder, first, second):
    prefix = os.path.join(folder, "nowhere_text_document")
    return "--data-path naming no files", prefix, ["nowhere_text_document", "missing"]


def missing_bin(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.remove(prefix + ".bin")
    return "a dataset whose .bin is missing", prefix, [prefix + ".bin", "missing"]


def mismatched_pair(folder, first, second):
    prefix = _copy_pair(folder, first, second)
    return ("a .bin with the .idx of another dataset", prefix,
            [prefix + ".bin", "do not belong together"])


def truncated_bin(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 7)
    return "a .bin truncated by 7 bytes", prefix, [prefix + ".bin", "do not belong together"]


def garbage_idx(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    with open(prefix + ".idx", "wb") as f:
        f.write(random.Random(1).randbytes(4096))
    return "an unreadable .idx (random bytes)", prefix, [prefix + ".idx",
                                                         "not a Megatron index"]


def idx_is_directory(folder, first, second):
    prefix = _copy_pair(folder, first, first)
    os.remove(prefix + ".idx")
    os.mkdir(prefix + ".idx")
    return "an unreadable .idx (a directory)", prefix, [prefix + ".idx", "missing"]


def preprocess_fault(content: Callable[[random.Random], bytes], named: List[str],
                     tried: str, line: Optional[int] = None, extra: Tuple[str, ...] = ()):
    """tools/preprocess_data.py on one bad input: one error line naming the input (and
    ``line``) and ``named``, and no output at all."""

    def inject(ws: Workspace, name: str) -> Outcome:
        folder = ws.folder(name)
        source = os.path.join(folder, "input.jsonl")
        data = content(ws.rng)
        if data is not None:
            with open(source, "wb") as f:
                f.write(data)
        out = ws.folder(name, "out")
        run = ws.run([sys.executable, PREPROCESS, "--input", source, "--output-prefix",
                      os.path.join(out, "data"), "--workers", "1", *extra])
        location = source if line is None else f"{source}:{line}"
        survived, detail = clean_stop(run, location, *named)
        left = os.listdir(out) if os.path.isdir(out) else []
        if left:
            survived, detail = False, f"files left in the output folder: {left}"
        return Outcome(name, tried, survived, bool(left), detail)

    return inject


def binary_input(rng: random.Random) -> bytes:
    """A PNG signature (not UTF-8 from its first byte), then random bytes."""
    return b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(4096))
