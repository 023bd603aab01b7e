"""What one forward runs: its passes, in order.

A ``PassPlan`` is pure description. The method registry (``megatron_ponder.methods``) builds it,
the pass driver (``megatron_ponder.model.ponder``) and the pipeline
(``megatron_ponder.parallel.pipeline``) run it, and the FLOP and memory counts are read off it.
"""

import contextlib
from dataclasses import dataclass
from enum import Enum
from typing import ContextManager, Optional, Tuple

import torch


class PassInput(Enum):
    """What a pass feeds the layer stack."""

    EMBEDDINGS = "embeddings"
    """The scaled token embeddings alone, one slot per token."""
    SPLICE = "splice"
    """Each token's embedding followed by the previous pass's outputs of its first S-1 slots
    (PonderLM-2's latent thoughts)."""
    PAUSE = "pause"
    """Each token's embedding followed by S-1 copies of the learned pause embedding."""
    PREVIOUS = "previous"
    """The previous pass's output itself (the Loop baseline's later loops)."""


@dataclass(frozen=True)
class Pass:
    """One run of the whole layer stack over the micro-batch."""

    slots: int
    """Slots per token: the pass runs over ``slots * L`` rows."""
    input: PassInput
    final_norm: bool = True
    """Whether the stack's final norm is applied (the Loop baseline skips it between loops)."""
    jacobi: bool = False
    """A Jacobi pass: under pipeline parallelism pass-through chunks stand in for the ones a
    micro-batch with a smaller J does not run."""

    def __post_init__(self):
        if self.slots < 1:
            raise ValueError(f"a pass has at least one slot per token, got {self.slots}")
        if self.input is PassInput.EMBEDDINGS and self.slots != 1:
            raise ValueError("a pass over the embeddings alone has one slot per token")


@dataclass(frozen=True)
class PassPlan:
    """The passes of one forward. The last pass is the final one: the output layer reads its
    last slot of every token."""

    passes: Tuple[Pass, ...]
    grad_passes: Optional[int] = None
    """Build a graph for the last N passes only (None: all)."""

    def __post_init__(self):
        if not self.passes:
            raise ValueError("a PassPlan needs at least one pass")
        if self.passes[0].input in (PassInput.SPLICE, PassInput.PREVIOUS):
            raise ValueError("the first pass has no previous pass to read")
        if self.grad_passes is not None and self.grad_passes < 1:
            raise ValueError(f"grad_passes must be >= 1, got {self.grad_passes}")

    @property
    def slots(self) -> Tuple[int, ...]:
        """Slots per token of each pass (PonderLM-2, K=1, J=3: (1, 2, 2, 2, 2))."""
        return tuple(step.slots for step in self.passes)

    @property
    def final(self) -> int:
        """Index of the final pass, the one whose last slot is scored."""
        return len(self.passes) - 1

    @property
    def max_slots(self) -> int:
        return max(self.slots)

    @property
    def jacobi_start(self) -> int:
        """Index of the first Jacobi pass (the final pass's index when there is none): where
        the passes a larger J would add go."""
        return next((i for i, step in enumerate(self.passes) if step.jacobi), self.final)

    def builds_graph(self, index: int) -> bool:
        """Whether pass ``index`` is among the last ``grad_passes`` (every pass without it)."""
        return index >= len(self.passes) - (self.grad_passes or len(self.passes))

    def graph(self, index: int) -> ContextManager:
        """``torch.no_grad()`` around a pass that builds no graph, else nothing."""
        return contextlib.nullcontext() if self.builds_graph(index) else torch.no_grad()
