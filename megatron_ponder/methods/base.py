"""What every method of the registry provides; the rest is read off its passes."""

from typing import Dict, Optional, Tuple

from megatron_ponder.methods.plan import Pass, PassInput, PassPlan

ONE_PASS = (Pass(1, PassInput.EMBEDDINGS),)
"""The forward of every method with K = 0 (and of --ponder-warmup-iters): one ordinary pass."""


class Method:
    """One way of spending K extra slots or passes per token. A subclass sets ``name``,
    ``summary`` and ``embedding_scale`` and writes ``extra_passes``; everything else (FLOPs,
    memory, pipeline chunks, what decoding feeds, the learned parameters) follows from the
    passes."""

    name: str
    summary: str
    """One line for --help and the docs."""
    embedding_scale: float = 2.5
    """c in e = sqrt(c * H) * E[x] with K > 0 (0: no scaling). With K = 0 every method but
    vanilla scales by 2.5, PonderLM-2's K = 0 model."""
    thoughtless: bool = False
    """K is 0 whatever --num-latent-thoughts says (vanilla)."""

    def extra_passes(self, num_latent_thoughts: int, jacobi_iterations: int) -> Tuple[Pass, ...]:
        """The passes of one forward with K = ``num_latent_thoughts`` >= 1."""
        raise NotImplementedError

    # ------------------------------------------------------------------ read off the passes
    def passes(self, num_latent_thoughts: int, jacobi_iterations: int) -> Tuple[Pass, ...]:
        if num_latent_thoughts < 0 or jacobi_iterations < 0:
            raise ValueError(f"K and J must be >= 0, got K={num_latent_thoughts}, "
                             f"J={jacobi_iterations}")
        if num_latent_thoughts == 0:
            return ONE_PASS
        return self.extra_passes(num_latent_thoughts, jacobi_iterations)

    def plan(self, num_latent_thoughts: int, jacobi_iterations: int,
             grad_passes: Optional[int] = None) -> PassPlan:
        """The ``PassPlan`` of one forward (``grad_passes``: see ``PassPlan``)."""
        return PassPlan(self.passes(num_latent_thoughts, jacobi_iterations), grad_passes)

    def scale_factor(self, num_latent_thoughts: int) -> float:
        return self.embedding_scale if num_latent_thoughts else 2.5

    def uses_pause_embedding(self, num_latent_thoughts: int) -> bool:
        """Whether the model has a learned pause embedding (an [H] parameter)."""
        return any(step.input is PassInput.PAUSE
                   for step in self.passes(num_latent_thoughts, 0))

    def draws_jacobi(self, num_latent_thoughts: int) -> bool:
        """Whether J changes the passes (so --random-jacobi-iterations changes them)."""
        return any(step.jacobi for step in self.passes(num_latent_thoughts, 1))

    def official_config_fields(self) -> Dict[str, str]:
        """Fields the authors' config.json format records for this method (PonderLM-2 is that
        format's default and records none)."""
        return {"ponder_method": self.name}

    def __repr__(self) -> str:
        return f"<method {self.name}>"
