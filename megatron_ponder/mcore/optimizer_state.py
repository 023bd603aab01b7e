"""Optimizer state around checkpoints: megatron-core's distributed-optimizer formats and the
edge cases of megatron-core 0.16 with torch's AdamW (the optimizer used without TE/apex, e.g. on
CPU), each worked around here, next to the reason, so that training/checkpointing.py stays
about files. Checkpointing calls ``materialize_adam_state`` before saving, and
``prime_distributed_optimizer`` then ``load_optimizer_state`` to load.

Every function takes megatron's optimizer (possibly a ChainedOptimizer) and leaves optimizers it
does not concern untouched.
"""

import contextlib
from typing import Optional

import torch

# The distributed optimizer's state formats (megatron-core's names). "dp_reshardable" (default,
# as in Megatron-LM): each rank writes its own buckets, fully parallel, reloadable at another DP
# size only. "fully_reshardable" (--dist-ckpt-optim-fully-reshardable): gathered per parameter on
# data-parallel rank 0 at save time, reloadable at any TP/PP/DP layout.
DP_RESHARDABLE = "dp_reshardable"
FULLY_RESHARDABLE = "fully_reshardable"


def _optimizers(optimizer) -> list:
    """The optimizers inside a ChainedOptimizer, or ``[optimizer]``."""
    return getattr(optimizer, "chained_optimizers", [optimizer])


def _with_loaded_states(optimizer, loaded_state):
    """(optimizer, its part of ``loaded_state``) pairs: a ChainedOptimizer's state dict holds
    one entry per optimizer, a single optimizer's is the entry itself."""
    chained = _optimizers(optimizer)
    if len(chained) == 1:
        return [(chained[0], loaded_state)]
    return [(opt, loaded_state[index]) for index, opt in enumerate(chained)]


def uses_distributed_optimizer(optimizer) -> bool:
    return any(getattr(opt, "ddp_config", None) is not None and
               opt.ddp_config.use_distributed_optimizer for opt in _optimizers(optimizer))


def optimizer_metadata(optimizer, sharding_type: str = DP_RESHARDABLE) -> Optional[dict]:
    """megatron's ``metadata`` argument of ``sharded_state_dict`` (None: not distributed)."""
    if not uses_distributed_optimizer(optimizer):
        return None
    return {"distrib_optim_sharding_type": sharding_type}


def prime_distributed_optimizer(optimizer, model) -> None:
    """Give a fresh distributed optimizer its Adam state before loading into it.

    With the plain torch AdamW fallback (no TE/apex, e.g. on CPU), megatron's distributed
    optimizer can only build its loading template from existing state (it reads the Adam step
    counters). One step at learning rate 0 on zero gradients creates that state without moving
    any weight; loading then overwrites every value, step counters included.
    """
    if not uses_distributed_optimizer(optimizer):
        return
    inner = [getattr(opt, "optimizer", None) for opt in _optimizers(optimizer)]
    if all(opt is None or len(opt.state) > 0 for opt in inner):
        return
    model.zero_grad_buffer()
    optimizer.zero_grad()
    saved_lrs = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, saved_lrs):
        group["lr"] = lr


def _restore_adam_steps(optimizer, loaded_state) -> None:
    """After priming, megatron's distributed optimizer keeps the primed Adam step counters
    (it only writes the saved counter into freshly allocated state): write the saved one."""
    if not uses_distributed_optimizer(optimizer):
        return
    for opt, state in _with_loaded_states(optimizer, loaded_state):
        steps = {group["step"] for group in state["optimizer"]["param_groups"] if "step" in group}
        if len(steps) != 1:
            continue  # TE/apex optimizers keep their own step; nothing to restore
        step = float(steps.pop())
        for param_state in opt.optimizer.state.values():
            if "step" in param_state:
                param_state["step"] = torch.tensor(step, dtype=param_state["step"].dtype)


@contextlib.contextmanager
def _keep_adam_step_on_reshardable_load(optimizer):
    """Let megatron-core 0.16 load "fully_reshardable" state into torch's AdamW.

    Without TE/apex the optimizer is torch's AdamW, whose per-parameter state has a "step"
    (megatron's load_state_dict has just set it from the checkpoint); the per-parameter copy
    that follows expects a source for every state key and the checkpoint stores none for
    "step", so it fails with KeyError: 'step'. Within this context the copy gets the step it
    already has (copied onto itself: unchanged). Instance attributes only, undone on exit.
    """
    patched = []
    for opt in _optimizers(optimizer):
        original = getattr(opt, "_set_main_param_and_optimizer_states", None)
        if original is None or not getattr(opt, "model_param_group_index_map", None):
            continue

        def set_states(model_param, tensors, opt=opt, original=original):
            group_index, group_order = opt.model_param_group_index_map[model_param]
            main_param = opt.optimizer.param_groups[group_index]["params"][group_order]
            state = opt.optimizer.state.get(main_param, {})
            if "step" in state and "step" not in tensors:
                tensors = dict(tensors, step=state["step"])
            return original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = set_states
        patched.append(opt)
    try:
        yield
    finally:
        for opt in patched:
            del opt._set_main_param_and_optimizer_states  # back to the class's method


def load_optimizer_state(optimizer, loaded_state) -> None:
    """``optimizer.load_state_dict(loaded_state)`` (``loaded_state``: what dist_checkpointing
    loaded for ``optimizer.sharded_state_dict(..., is_loading=True)`` after
    ``prime_distributed_optimizer``), with megatron-core 0.16's edge cases handled."""
    _restore_zero_common_step(optimizer, loaded_state)
    with _keep_adam_step_on_reshardable_load(optimizer):
        optimizer.load_state_dict(loaded_state)
    _restore_adam_steps(optimizer, loaded_state)


def materialize_adam_state(optimizer) -> None:
    """Give every parameter its Adam state before saving, if it has none yet.

    torch's Adam creates a parameter's state at its first update. A checkpoint saved before any
    update went through (an fp16 run skips overflowing steps, typically its first ones) would
    hold no optimizer state, and loading it would then fail, since megatron's loader asks for
    every moment. Zero moments at step 0 are exactly what Adam would create, so the run
    continues unchanged. (TE/apex fused optimizers keep their own state and are left alone.)
    """
    for opt in _optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam):  # AdamW subclasses Adam
            continue
        for group in inner.param_groups:
            on_device = group.get("capturable") or group.get("fused")
            for param in group["params"]:
                state = inner.state[param]
                if state:
                    continue
                state["step"] = (torch.zeros((), dtype=torch.float32, device=param.device)
                                 if on_device else torch.tensor(0.0, dtype=torch.float32))
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                if group.get("amsgrad"):
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        param, memory_format=torch.preserve_format)


def _restore_zero_common_step(optimizer, loaded_state) -> None:
    """Put back the Adam step of a checkpoint saved at step 0 (see ``materialize_adam_state``).

    megatron-core saves the step shared by all parameters as ``common_step`` only when it is
    truthy, so a zero step is dropped and torch's Adam then refuses the state ("KeyError:
    'step'"). Per-parameter state without a step and without ``common_step`` means step 0.
    """
    if uses_distributed_optimizer(optimizer):
        return  # the distributed optimizer keeps its step in the param groups
    for _, state in _with_loaded_states(optimizer, loaded_state):
        per_param = state.get("optimizer", {}).get("state", {})
        if "common_step" in per_param:
            continue
        if any(isinstance(entry, dict) and "step" not in entry for entry in per_param.values()):
            per_param["common_step"] = torch.tensor(0.0, dtype=torch.float32)
