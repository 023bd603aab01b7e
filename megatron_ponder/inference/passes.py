"""The scoring / prefill forward for inference: fixed or adaptive Jacobi, padding, KV cache.

Same passes as training (the method's ``PassPlan``, run by ``model/ponder.py``'s driver; for
PonderLM-2 K growth passes, Jacobi passes, a final pass), with what inference needs hung on
the plan's hooks:

* **Adaptive Jacobi** (the plan's stopping rule). Instead of a fixed J, iterate until the
  thoughts stop changing: after each Jacobi pass, stop when the largest absolute change of any
  fed-back slot (slots 0..K-1 of real tokens) is at most ``tolerance`` (0 = bit-identical), or
  after ``iterations`` passes (the cap). Identical thoughts give the next pass identical inputs,
  so the final pass then runs at the Jacobi fixed point, which is the exact sequential
  computation (docs/method.md, "The fixed point").
* **Padding.** ``token_is_real`` [B, L] gives per-row positions and key masks to every pass.
* **Cache** (the plan's final-pass hook). Only the final pass writes to a ``KVCache``: its
  (K+1)L slots are the ones decoding continues from; earlier passes hold not-yet-converged
  thoughts.
"""

import contextlib
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from megatron_ponder.inference.attention_hooks import (
    KVCache,
    PaddedPassMask,
    key_value_hook,
    token_positions,
)
from megatron_ponder.model.ponder import ponder_forward

ADAPTIVE = "adaptive"
DEFAULT_MAX_ADAPTIVE_ITERATIONS = 32


def default_tolerance(dtype: torch.dtype) -> float:
    """Largest thought change treated as "unchanged": near the rounding noise of ``dtype`` for
    final-normed states of size ~1 (fp32 ~1e-7 relative, bf16 ~4e-3)."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


@dataclass(frozen=True)
class JacobiSchedule:
    """How many Jacobi passes run between the growth passes and the final pass."""

    iterations: int = 3
    """Fixed J; with ``tolerance`` set, the largest number of Jacobi passes (the cap)."""
    tolerance: Optional[float] = None
    """None: always run ``iterations`` passes. Else stop early once the max abs change of the
    fed-back thoughts between two passes is at most this."""

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"Jacobi iterations must be >= 0, got {self.iterations}")
        if self.tolerance is not None and self.tolerance < 0:
            raise ValueError(f"Jacobi tolerance must be >= 0, got {self.tolerance}")

    @property
    def adaptive(self) -> bool:
        return self.tolerance is not None

    @classmethod
    def resolve(cls, jacobi_iterations: Union[int, str, None], default_iterations: int,
                dtype: torch.dtype = torch.float32, tolerance: Optional[float] = None,
                max_iterations: Optional[int] = None) -> "JacobiSchedule":
        """The user-facing options -> a schedule.

        ``jacobi_iterations``: None (the model's configured J), an int J, or ``"adaptive"``
        (``tolerance``, default by dtype, with a cap of ``max_iterations``, default 32).
        """
        if isinstance(jacobi_iterations, str):
            if jacobi_iterations != ADAPTIVE:
                try:
                    jacobi_iterations = int(jacobi_iterations)
                except ValueError:
                    raise ValueError(f"jacobi_iterations must be an int or {ADAPTIVE!r}, got "
                                     f"{jacobi_iterations!r}") from None
        if jacobi_iterations == ADAPTIVE:
            return cls(
                iterations=DEFAULT_MAX_ADAPTIVE_ITERATIONS if max_iterations is None
                else max_iterations,
                tolerance=default_tolerance(dtype) if tolerance is None else tolerance)
        if tolerance is not None or max_iterations is not None:
            raise ValueError("jacobi_tolerance / max_jacobi_iterations need "
                             "jacobi_iterations='adaptive'")
        return cls(iterations=default_iterations if jacobi_iterations is None
                   else int(jacobi_iterations))


@dataclass
class PassReport:
    """What a forward actually ran."""

    passes: int
    """Stack calls in total (growth + Jacobi + final)."""
    jacobi_iterations: int
    """Jacobi passes run (fixed J, or where the adaptive rule stopped)."""
    thought_change: Optional[float] = None
    """Adaptive only: max abs change of the thoughts in the last Jacobi pass."""
    converged: Optional[bool] = None
    """Adaptive only: whether that change was within the tolerance (False = stopped by the
    cap)."""


def _thought_change(previous: torch.Tensor, current: torch.Tensor, num_thoughts: int,
                    num_tokens: int, token_is_real: Optional[torch.Tensor]) -> float:
    """Max abs difference of slots 0..K-1 (the ones fed back) over real tokens."""
    batch, width = current.shape[1], current.shape[2]
    before = previous.view(num_tokens, -1, batch, width)[:, :num_thoughts]
    after = current.view(num_tokens, -1, batch, width)[:, :num_thoughts]
    change = (after.float() - before.float()).abs().amax(dim=(1, 3))  # [L, B]
    if token_is_real is not None:
        change = change * token_is_real.transpose(0, 1)
    return float(change.max()) if change.numel() else 0.0


class _JacobiWatch:
    """The stopping rule inference hangs on the ``PassPlan``: counts the Jacobi passes and,
    with an adaptive schedule, ends them once the thoughts changed by at most the tolerance."""

    def __init__(self, schedule: JacobiSchedule, num_latent_thoughts: int, num_tokens: int,
                 token_is_real: Optional[torch.Tensor]):
        self.schedule = schedule
        self.shape = (num_latent_thoughts, num_tokens)
        self.token_is_real = token_is_real
        self.report = PassReport(passes=0, jacobi_iterations=0)

    def __call__(self, previous: torch.Tensor, current: torch.Tensor) -> bool:
        self.report.jacobi_iterations += 1
        if not self.schedule.adaptive:
            return False
        self.report.thought_change = _thought_change(previous, current, *self.shape,
                                                     self.token_is_real)
        self.report.converged = self.report.thought_change <= self.schedule.tolerance
        return self.report.converged


def run_ponder_passes(model, input_ids: torch.Tensor, num_latent_thoughts: int,
                      schedule: JacobiSchedule, token_is_real: Optional[torch.Tensor] = None,
                      cache: Optional[KVCache] = None) -> Tuple[torch.Tensor, PassReport]:
    """All passes over ``input_ids`` [B, L]; returns the final pass's slot-K output [L, B, H]
    (final-normed, before the output layer) and a report.

    With ``token_is_real`` (False = padding) rows get their own positions and padded keys are
    masked; with ``cache`` the final pass writes its (K+1)L slots to it.
    """
    if token_is_real is not None:
        token_is_real = token_is_real.to(device=input_ids.device, dtype=torch.bool)
        if bool(token_is_real.all()):
            token_is_real = None
    positions = None if token_is_real is None else token_positions(token_is_real)
    padding = None if token_is_real is None else PaddedPassMask(token_is_real)

    method = model.ponder_config.method
    if cache is not None:
        method.decode_slot_input(num_latent_thoughts)  # ValueError where it cannot decode
    final_slots = method.passes(num_latent_thoughts, schedule.iterations)[-1].slots
    watch = _JacobiWatch(schedule, num_latent_thoughts, input_ids.shape[1], token_is_real)
    plan = method.plan(num_latent_thoughts, schedule.iterations, stop_jacobi=watch,
                       around_final_pass=lambda: _writing_to(
                           model, cache, input_ids, token_is_real, final_slots))
    with key_value_hook(model, padding):
        hidden = ponder_forward(model, input_ids, plan, token_positions=positions)
    watch.report.passes = plan.jacobi_start + watch.report.jacobi_iterations + 1
    return hidden, watch.report


@contextlib.contextmanager
def _writing_to(model, cache: Optional[KVCache], input_ids, token_is_real, num_slots: int):
    """Attention of the pass run inside writes its ``num_slots`` slots per token to ``cache``
    (and reads them back); without a cache, nothing changes."""
    if cache is None:
        yield
        return
    real = (token_is_real if token_is_real is not None
            else torch.ones_like(input_ids, dtype=torch.bool))
    cache.extend(real.repeat_interleave(num_slots, dim=1))
    with key_value_hook(model, cache):
        yield
