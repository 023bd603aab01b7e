"""Every fault by name, and which ones ``--quick`` runs."""

import dataclasses
import random
import signal
from typing import Callable, List

from tools.faults.checkpoints import ckpt_step_damaged, damage_fault, delete_manifest, \
    delete_shard, delete_tracker, every_checkpoint_damaged, flip_common, flip_shard, \
    garbage_tracker, half_written_save, truncate_metadata, truncate_shard
from tools.faults.data import binary_input, data_fault, garbage_idx, idx_is_directory, \
    mismatched_pair, missing_bin, missing_path, preprocess_fault, truncated_bin
from tools.faults.disk import disk_full
from tools.faults.harness import TRAIN_ITERS, Outcome, Workspace
from tools.faults.layouts import LAYOUTS, layout_fault
from tools.faults.numerics import nan_rollback, nan_skip, nan_stop
from tools.faults.processes import kill_fault, preprocess_kill


@dataclasses.dataclass
class Fault:
    name: str
    inject: Callable[[Workspace, str], Outcome]
    quick: bool


def build_faults(full: bool, rng: random.Random) -> List[Fault]:
    """Every fault; ``quick`` marks the --quick subset. Kill moments come from ``rng``."""
    faults: List[Fault] = []
    random_kills = 8 if full else 2
    for index in range(random_kills):
        faults.append(Fault(f"kill-9-random-{index + 1}",
                            kill_fault(rng.randrange(0, TRAIN_ITERS - 1), rng.random()),
                            quick=index < 2))
    for index in range(5 if full else 2):
        faults.append(Fault(f"kill-9-in-save-{index + 1}",
                            kill_fault(None, rng.random(), in_save=rng.randrange(1, TRAIN_ITERS)),
                            quick=index < 2))
    faults.append(Fault("sigterm-exit-signal-handler",
                        kill_fault(rng.randrange(1, TRAIN_ITERS - 1), rng.random(),
                                   sig=signal.SIGTERM, handler=True), quick=True))
    faults.append(Fault("sigterm-no-handler",
                        kill_fault(rng.randrange(0, TRAIN_ITERS - 1), rng.random(),
                                   sig=signal.SIGTERM), quick=False))
    faults.append(Fault("kill-9-async-save",
                        kill_fault(None, rng.random(), in_save=rng.randrange(1, TRAIN_ITERS),
                                   async_save=True), quick=False))
    damaged = "checkpoint at iteration 4 is damaged"
    fallback = "falling back to the checkpoint at iteration 3"
    faults += [
        Fault("ckpt-truncated-shard", damage_fault(truncate_shard, 3, fallback), True),
        Fault("ckpt-bit-flip-shard", damage_fault(flip_shard, 3, fallback), True),
        Fault("ckpt-truncated-metadata", damage_fault(truncate_metadata, 3, fallback), True),
        Fault("ckpt-bit-flip-common", damage_fault(flip_common, 3, fallback), False),
        Fault("ckpt-deleted-shard", damage_fault(delete_shard, 3, damaged), False),
        Fault("ckpt-deleted-manifest", damage_fault(delete_manifest, 3, fallback), False),
        Fault("ckpt-deleted-tracker", damage_fault(delete_tracker, 4, "is missing"), True),
        Fault("ckpt-garbage-tracker", damage_fault(garbage_tracker, 4, "should hold an "
                                                   "iteration number"), False),
        Fault("ckpt-half-written-save", damage_fault(half_written_save, 4, ""), False),
        Fault("ckpt-step-damaged", ckpt_step_damaged, True),
        Fault("ckpt-all-damaged", every_checkpoint_damaged, True),
        Fault("nan-rollback", nan_rollback, True),
        Fault("nan-stop", nan_stop, True),
        Fault("nan-skip", nan_skip, False),
        Fault("disk-full-save", disk_full, True),
        Fault("data-missing-path", data_fault(missing_path), True),
        Fault("data-missing-bin", data_fault(missing_bin), False),
        Fault("data-bin-idx-mismatch", data_fault(mismatched_pair), True),
        Fault("data-truncated-bin", data_fault(truncated_bin), False),
        Fault("data-unreadable-idx", data_fault(garbage_idx), True),
        Fault("data-idx-is-directory", data_fault(idx_is_directory), False),
    ]
    quick_layouts = {"layout-world-size", "layout-tp-heads", "layout-pp-microbatches",
                     "rollback-without-save"}
    for name, (world, flags, named) in LAYOUTS.items():
        faults.append(Fault(name, layout_fault(world, flags, named), name in quick_layouts))
    faults += [
        Fault("preprocess-malformed-json", preprocess_fault(
            lambda rng: b'{"text": "fine"}\n{"text": "broken\n', ["malformed JSON"],
            "a JSONL line cut in the middle", line=2), True),
        Fault("preprocess-non-utf8", preprocess_fault(
            lambda rng: b'{"text": "ok"}\n{"text": "caf\xe9"}\n', ["invalid UTF-8"],
            "Latin-1 bytes in a JSONL line", line=2), True),
        Fault("preprocess-empty-input", preprocess_fault(
            lambda rng: b"", ["no documents", "nothing written"], "an empty input file"), True),
        Fault("preprocess-binary-input", preprocess_fault(
            binary_input, [], "4 KiB of random bytes as input", line=1), True),
        Fault("preprocess-missing-input", preprocess_fault(
            lambda rng: None, ["input file not found"], "an input path that does not exist"),
            True),
        Fault("preprocess-missing-key", preprocess_fault(
            lambda rng: b'{"body": "x"}\n', ["missing key 'text'"], "JSON without the key",
            line=1), False),
        Fault("preprocess-non-string", preprocess_fault(
            lambda rng: b'{"text": 12}\n', ["holds a number"], "a number as the text",
            line=1), False),
        Fault("preprocess-only-empty-documents", preprocess_fault(
            lambda rng: b'{"text": ""}\n\n', ["no documents", "nothing written"],
            "only empty documents"), False),
        Fault("preprocess-kill-9", preprocess_kill, False),
    ]
    return faults
