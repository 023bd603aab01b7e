"""Functions executed on every rank by the multi-rank training tests."""

import dataclasses
import warnings


def pretrain_from_flags(flags):
    """One pretrain_ponder.py run in this process; returns its TrainingResult as a dict."""
    warnings.filterwarnings("ignore")
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import pretrain

    return dataclasses.asdict(pretrain(parse_args(flags)))


def pretrain_signalled(flags, signalled_rank, iteration):
    """``pretrain_from_flags``, with SIGTERM sent to rank ``signalled_rank`` while it runs
    iteration ``iteration`` (1-based), as a scheduler preempting one node would."""
    import os
    import signal

    import torch.distributed as dist

    from megatron_ponder.training.trainer import Trainer

    real_step = Trainer.train_step

    def train_step(self, data_iterator):
        if dist.get_rank() == signalled_rank and self.iteration + 1 == iteration:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(self, data_iterator)

    Trainer.train_step = train_step
    return pretrain_from_flags(flags)


def checkpoint_and_hf_logits(checkpoint_dir, hf_folder, token_ids):
    """Logits of the training model of a training checkpoint and of a HF folder."""
    import torch

    from megatron_ponder.hf import load_training_model

    ids = torch.tensor(token_ids)
    with torch.no_grad():
        from_checkpoint = load_training_model(checkpoint_dir)(ids)
        from_hf = load_training_model(hf_folder)(ids)
    return from_checkpoint, from_hf


def native_logits(checkpoint_dir, hf_folder, token_ids):
    """Logits of the transformers-native model of a training checkpoint (converted in memory)
    and of an exported folder."""
    import torch

    from megatron_ponder.hf import from_pretrained

    ids = torch.tensor(token_ids)
    with torch.no_grad():
        return from_pretrained(checkpoint_dir)(ids).logits, from_pretrained(hf_folder)(ids).logits


def convert(direction, source, target):
    from megatron_ponder.hf.conversion import checkpoint_to_hf, hf_to_checkpoint

    if direction == "to-hf":
        return checkpoint_to_hf(source, target)
    return hf_to_checkpoint(source, target)


def pretrain_with_nan(flags, injections):
    """``pretrain_from_flags`` with NaN injected after the backward of chosen steps:
    ``injections`` maps a 1-based iteration to (rank, "loss" or "grad"). A "grad" injection
    poisons one gradient on that rank after the data-parallel reduction, so only that rank
    sees it unless the check communicates. Returns the result, or on FatalRunError
    ``{"error": message, **result so far}``."""
    import dataclasses

    import torch.distributed as dist

    from megatron_ponder.errors import FatalRunError
    from megatron_ponder.training.trainer import Trainer

    real = Trainer.compute_gradients
    trainers = []

    def compute_gradients(self, data_iterator):
        trainers[:] = [self]
        reports = real(self, data_iterator)
        rank, what = injections.get(self.iteration + 1, (None, None))
        if dist.get_rank() == rank:
            if what == "grad":
                self.model.buffers[0].grad_data[0] = float("nan")
            elif reports:
                reports[0]["lm loss"][0] = float("inf")
        return reports

    Trainer.compute_gradients = compute_gradients
    try:
        return pretrain_from_flags(flags)
    except FatalRunError as error:
        return {"error": str(error), **dataclasses.asdict(trainers[0].result)}


def pretrain_runs_with_nan(runs):
    """Several ``pretrain_with_nan`` runs one after the other in this process (one process
    start for all): ``runs`` is a list of (flags, injections). Each result also lists, under
    ``computed``, the 1-based iteration of every forward/backward the run did."""
    import os

    from megatron.core import parallel_state

    from megatron_ponder.training.trainer import Trainer

    real = Trainer.compute_gradients
    computed = []

    def recording(self, data_iterator):
        computed.append(self.iteration + 1)
        return real(self, data_iterator)

    results = []
    base_port = int(os.environ["MASTER_PORT"])
    for index, (flags, injections) in enumerate(runs):
        # A fresh rendezvous per run: a rank that finished first must not find the previous
        # run's addresses in rank 0's store, which lives until rank 0 has finished too.
        os.environ["MASTER_PORT"] = str(base_port + index)
        computed.clear()
        Trainer.compute_gradients = recording
        try:
            result = pretrain_with_nan(flags, injections)
        finally:
            Trainer.compute_gradients = real
        # pretrain's shutdown ends the process group but leaves megatron's groups registered.
        parallel_state.destroy_model_parallel()
        results.append({**result, "computed": list(computed)})
    return results


def save_on_a_full_disk(root, how):
    """A checkpoint saved, then a save that runs out of space after writing part of the
    directory, reported ``how``: "writer" as megatron-core's writer processes report it (the
    errno's text), "torch.save" as torch.save does (no errno; the filesystem is then full);
    returns (the error line, the directories left, the tracker's text)."""
    import os
    from collections import namedtuple
    from unittest import mock

    from megatron_ponder import mcore
    from megatron_ponder.checkpoint import storage
    from megatron_ponder.checkpoint.layout import TRACKER_FILE, CheckpointError

    def full_disk(state, path, **_kwargs):
        from torch.distributed.checkpoint.api import CheckpointException

        with open(os.path.join(path, "__0_0.distcp"), "wb") as f:
            f.write(b"\0" * 100)
        if how == "torch.save":
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        # What torch.distributed.checkpoint raises (a BaseException) when a writer process of
        # megatron-core's fails.
        raise CheckpointException("write", {0: (RuntimeError(
            "Worker failure: [Errno 28] No space left on device"), None)})

    usage = namedtuple("usage", "total used free")
    free = 0 if how == "torch.save" else 2**30
    mcore.init(single_process=True)
    try:
        storage.save_state(root, 1, {"step": 1})
        with mock.patch.object(storage.dist_checkpointing, "save", full_disk), \
                mock.patch.object(storage.shutil, "disk_usage", lambda _: usage(0, 0, free)):
            try:
                storage.save_state(root, 2, {"step": 2})
                message = None
            except CheckpointError as error:
                message = str(error)
    finally:
        mcore.shutdown()
    with open(os.path.join(root, TRACKER_FILE)) as f:
        return message, sorted(os.listdir(root)), f.read()


def tokenizer_builds_and_world_check(flags):
    """(tokenizers built during one ``pretrain_from_flags`` run, the error of a session resolved
    for two processes in this one-process world). Every build from flags goes through
    ``megatron_ponder.tokenizer.build.build_tokenizer``, which calls the builder counted here
    for the flags' NullTokenizer."""
    from megatron_ponder.tokenizer import build
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import training_session

    real, builds = build.build_megatron_core_tokenizer, []

    def counted(spec):
        builds.append(spec.tokenizer_type)
        return real(spec)

    build.build_megatron_core_tokenizer = counted
    try:
        pretrain_from_flags(flags)
    finally:
        build.build_megatron_core_tokenizer = real
    try:
        with training_session(parse_args(flags), 2):
            refusal = None
    except RuntimeError as error:
        refusal = str(error)
    return builds, refusal
