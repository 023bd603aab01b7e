"""Checkpoint manifests: damaged or incomplete checkpoints are found before anything is loaded,
the run falls back to the newest intact one and continues bit-identically, an explicit
--ckpt-step of a damaged one fails in one line, --save-retain keeps the newest N, and nothing
in a checkpoint is unpickled without restrictions."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

from megatron_ponder.checkpoint.discovery import checkpoint_problem, find_checkpoint
from megatron_ponder.checkpoint.integrity import (MANIFEST_FILE, check_pickles, checkpoint_files,
                                                  file_crc32, verify_checkpoint)
from megatron_ponder.checkpoint.layout import TRACKER_FILE, CheckpointError, checkpoint_dir
from tests.distributed import run_ranks
from tests.training.runs import pretrain_from_flags, save_on_a_full_disk
from tests.training.test_pretrain import FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(root, losses): a 5-iteration run saving every iteration, keeping the newest 3."""
    root = str(tmp_path_factory.mktemp("integrity") / "ckpt")
    result = run_ranks(pretrain_from_flags, 1, FLAGS + [
        "--train-iters", "5", "--save", root, "--save-interval", "1", "--save-retain", "3"])[0]
    return root, result["train_losses"]


def _copy(saved, tmp_path):
    target = str(tmp_path / "ckpt")
    shutil.copytree(saved[0], target)
    return target


def _largest_shard(path):
    shards = [name for name in os.listdir(path) if name.endswith(".distcp")]
    return os.path.join(path, max(shards, key=lambda n: os.path.getsize(os.path.join(path, n))))


def _flip_a_bit(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def _make_pre_manifest(path):
    """Turn a checkpoint into one saved before manifests existed (version 1, no manifest)."""
    if os.path.exists(os.path.join(path, MANIFEST_FILE)):
        os.remove(os.path.join(path, MANIFEST_FILE))
    common = torch.load(os.path.join(path, "common.pt"), weights_only=True)
    common["checkpoint_version"] = 1
    torch.save(common, os.path.join(path, "common.pt"))


def test_save_writes_manifests_and_save_retain_keeps_the_newest(saved):
    root, losses = saved
    assert len(losses) == 5
    assert sorted(os.listdir(root)) == ["iter_0000003", "iter_0000004", "iter_0000005",
                                        TRACKER_FILE]
    for iteration in (3, 4, 5):
        path = checkpoint_dir(root, iteration)
        with open(os.path.join(path, MANIFEST_FILE)) as f:
            manifest = json.load(f)
        assert manifest["checksum"] == "crc32"
        assert sorted(manifest["files"]) == checkpoint_files(path)
        assert {".metadata", "common.pt", "metadata.json"} <= set(manifest["files"])
        assert verify_checkpoint(path) is None


def test_verification_names_the_damaged_file_and_the_problem(saved, tmp_path):
    root = _copy(saved, tmp_path)
    path = checkpoint_dir(root, 5)
    shard = _largest_shard(path)
    size = os.path.getsize(shard)
    _flip_a_bit(shard, size // 2)
    with open(os.path.join(path, MANIFEST_FILE)) as f:
        expected = json.load(f)["files"][os.path.basename(shard)]["crc32"]
    assert verify_checkpoint(path) == (f"{shard}: CRC32 {file_crc32(shard)}, the manifest says "
                                       f"{expected} (corrupted)")
    _flip_a_bit(shard, size // 2)
    assert verify_checkpoint(path) is None
    with open(shard, "r+b") as f:
        f.truncate(size - 100)
    assert verify_checkpoint(path) == (f"{shard}: {size - 100} bytes, the manifest says {size} "
                                       f"(truncated or altered)")
    path = checkpoint_dir(root, 4)
    os.remove(os.path.join(path, "common.pt"))
    assert verify_checkpoint(path) == f"{os.path.join(path, 'common.pt')}: missing"
    path = checkpoint_dir(root, 3)
    open(os.path.join(path, "stray"), "w").close()
    assert verify_checkpoint(path) == f"{os.path.join(path, 'stray')}: not in the manifest"
    os.remove(os.path.join(path, "stray"))
    os.remove(os.path.join(path, MANIFEST_FILE))  # a version-2 checkpoint must have one
    assert checkpoint_problem(root, 3) == f"{os.path.join(path, MANIFEST_FILE)}: missing"
    _make_pre_manifest(path)  # saved before manifests: loads unverified
    assert checkpoint_problem(root, 3) is None


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickles_beyond_plain_data_are_refused(saved, tmp_path):
    root = _copy(saved, tmp_path)
    path = checkpoint_dir(root, 5)
    assert check_pickles(path) is None
    metadata = os.path.join(path, ".metadata")
    shutil.copy(metadata, metadata + ".orig")
    with open(metadata, "wb") as f:
        pickle.dump(_Payload(), f)
    problem = check_pickles(path)
    assert problem.startswith(f"{metadata}: not loadable safely") and "posix.system" in problem
    shutil.move(metadata + ".orig", metadata)
    torch.save({"x": _Payload()}, os.path.join(path, "common.pt"))
    assert check_pickles(path).startswith(
        f"{os.path.join(path, 'common.pt')}: not loadable safely (UnpicklingError")


def test_damaged_newest_checkpoint_falls_back_and_continues_bit_identically(
        saved, tmp_path, capfd):
    root = _copy(saved, tmp_path)
    shard = _largest_shard(checkpoint_dir(root, 5))
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:  # a full disk: the end of a shard is missing
        f.truncate(size // 2)
    _make_pre_manifest(checkpoint_dir(root, 4))  # and the fallback was saved before manifests
    resumed = run_ranks(pretrain_from_flags, 1, FLAGS + ["--train-iters", "5", "--load", root])
    assert resumed[0]["train_losses"] == saved[1][4:]
    out = capfd.readouterr().out
    assert out.count(f"checkpoint at iteration 5 is damaged: {shard}: {size // 2} bytes, the "
                     f"manifest says {size} (truncated or altered)\n") == 1
    assert "falling back to the checkpoint at iteration 4: the newest complete one" in out
    assert f"{checkpoint_dir(root, 4)} has no manifest (saved before checkpoint manifests " \
           f"existed): loading it unverified" in out


def test_deleted_tracker_and_flipped_bit_fall_back_to_the_newest_intact(saved, tmp_path, capfd):
    root = _copy(saved, tmp_path)
    os.remove(os.path.join(root, TRACKER_FILE))
    shard = _largest_shard(checkpoint_dir(root, 5))
    _flip_a_bit(shard, os.path.getsize(shard) // 3)
    resumed = run_ranks(pretrain_from_flags, 1, FLAGS + ["--train-iters", "5", "--load", root])
    assert resumed[0]["train_losses"] == saved[1][4:]
    out = capfd.readouterr().out
    assert f"{os.path.join(root, TRACKER_FILE)} is missing: looking for the newest complete " \
           f"checkpoint" in out
    assert f"checkpoint at iteration 5 is damaged: {shard}: CRC32 " in out


def test_ckpt_step_of_a_damaged_checkpoint_fails_with_one_line(saved, tmp_path):
    root = _copy(saved, tmp_path)
    shard = _largest_shard(checkpoint_dir(root, 4))
    with open(shard, "r+b") as f:
        f.truncate(10)
    env = dict(os.environ, PYTHONPATH=REPO)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    run = subprocess.run([sys.executable, os.path.join(REPO, "pretrain_ponder.py"), *FLAGS,
                          "--train-iters", "5", "--load", root, "--ckpt-step", "4"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    size = os.path.getsize(_largest_shard(checkpoint_dir(saved[0], 4)))
    assert errors == [f"error: checkpoint at iteration 4 is damaged: {shard}: 10 bytes, the "
                      f"manifest says {size} (truncated or altered)"]


def test_a_first_save_interrupted_before_any_tracker_means_starting_from_scratch(
        saved, tmp_path, capsys):
    # A job killed inside its first save: a directory without manifest, no tracker file.
    root = str(tmp_path / "ckpt")
    os.makedirs(checkpoint_dir(root, 1))
    with open(os.path.join(checkpoint_dir(root, 1), "__0_0.distcp"), "wb") as f:
        f.write(b"\0" * 100)
    assert find_checkpoint(root) is None
    assert (f"no complete checkpoint in {root} (no {TRACKER_FILE}; iter_0000001 never completed): "
            f"starting from scratch") in capsys.readouterr().out
    # The same with a finished but unverifiable save of this version (killed before its
    # manifest): no save completed either.
    shutil.copytree(checkpoint_dir(saved[0], 3), checkpoint_dir(root, 2))
    os.remove(os.path.join(checkpoint_dir(root, 2), MANIFEST_FILE))
    assert find_checkpoint(root) is None
    # A checkpoint saved before manifests existed is complete: a person must choose.
    _make_pre_manifest(checkpoint_dir(root, 2))
    with pytest.raises(CheckpointError, match="none has a manifest .* pick one with --ckpt-step"):
        find_checkpoint(root)
    # A tracker names a completed save: damage there is never silently ignored.
    with open(os.path.join(root, TRACKER_FILE), "w") as f:
        f.write("1")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        find_checkpoint(root)


@pytest.mark.parametrize("how", ["writer", "torch.save"])
def test_a_full_disk_during_a_save_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, how):
    root = str(tmp_path / "ckpt")
    (message, left, tracker), = run_ranks(save_on_a_full_disk, 1, root, how)
    free = "0.0" if how == "torch.save" else "1024.0"
    assert message == (
        f"no space left on the device of {root} while saving iteration 2 ({free} MiB free); "
        f"the partial iter_0000002 was removed, the newest complete checkpoint is iteration 1 "
        f"({checkpoint_dir(root, 1)}): free space (or --save elsewhere, --save-retain N) and "
        f"resume")
    assert left == ["iter_0000001", TRACKER_FILE] and tracker == "1"


def test_a_save_is_warned_of_when_the_last_checkpoint_no_longer_fits(tmp_path, monkeypatch,
                                                                      capsys):
    from collections import namedtuple

    from megatron_ponder.checkpoint import storage

    root = str(tmp_path / "ckpt")
    os.makedirs(checkpoint_dir(root, 1))
    with open(os.path.join(checkpoint_dir(root, 1), "__0_0.distcp"), "wb") as f:
        f.write(b"\0" * 3 * 2**20)
    with open(os.path.join(root, TRACKER_FILE), "w") as f:
        f.write("1")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda _path: usage(0, 0, 2**20))
    storage._warn_if_the_last_size_does_not_fit(root, 2)
    assert capsys.readouterr().out == (
        f"warning: {root} has 1.0 MiB free and the checkpoint of iteration 1 took 3.0 MiB: "
        f"the save of iteration 2 may not fit\n")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda _path: usage(0, 0, 4 * 2**20))
    storage._warn_if_the_last_size_does_not_fit(root, 2)
    assert capsys.readouterr().out == ""
