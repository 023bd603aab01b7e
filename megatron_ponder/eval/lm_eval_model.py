"""lm-evaluation-harness (0.4.13) on the transformers-native model: lm-eval's own ``hf`` backend.

``PonderHFLM`` is lm-eval's ``HFLM`` with three differences, all about where the model and the
tokenizer come from, none about how requests are scored:

* ``pretrained`` may be anything ``megatron_ponder.hf.from_pretrained`` reads (a training
  checkpoint of any layout, an official PonderLM-2 release, one of our folders), or a loaded
  model; the Jacobi options (``jacobi_iterations``, ``"adaptive"`` with ``jacobi_tolerance`` /
  ``max_jacobi_iterations``) are the model's.
* the tokenizer is the run's own (``load_tokenizer``) as a transformers tokenizer, and its
  end-of-text id ends generation where the model names none (one converted from a training
  checkpoint);
* scoring forwards build no KV cache (``use_cache=False``), and the Jacobi passes they ran are
  counted (``mean_jacobi_iterations``).

Registered as ``megatron_ponder``: ``lm_eval --model megatron_ponder --model_args
pretrained=DIR`` works once this module is imported (``tools/evaluate.py`` does).
"""

from typing import Optional

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from megatron_ponder.hf.loading import from_pretrained, jacobi_overrides, load_tokenizer
from megatron_ponder.hf.native import JACOBI_OVERRIDES

MODEL_NAME = "megatron_ponder"


@register_model(MODEL_NAME)
class PonderHFLM(HFLM):
    """lm-eval's ``HFLM`` on a ``PonderLM2ForCausalLM``."""

    def __init__(self, pretrained, tokenizer=None, batch_size=8,
                 max_length: Optional[int] = 2048, device: Optional[str] = None,
                 dtype: Optional[str] = None, **kwargs):
        """``pretrained``: a path for ``from_pretrained`` (then ``device`` / ``dtype`` /
        the Jacobi options apply) or a loaded ``PonderLM2ForCausalLM``. ``tokenizer``: a
        transformers tokenizer, a ``TextTokenizer``, or a tokenizer.json / folder / hub name
        for ``load_tokenizer`` (default: the source's own). ``max_length``: the token context
        (Pythia: 2048)."""
        overrides = jacobi_overrides(kwargs)  # lm-eval's --model_args arrive as strings
        for name in JACOBI_OVERRIDES:
            kwargs.pop(name, None)
        source = pretrained if isinstance(pretrained, str) else None
        if source is not None:
            pretrained = from_pretrained(source, dtype=None if dtype in (None, "auto") else dtype,
                                         device=device, device_map=None if device else "auto",
                                         **overrides)
        elif overrides:
            raise ValueError(f"{sorted(overrides)} are the model's settings: give them to "
                             f"from_pretrained when loading it")
        elif tokenizer is None:
            raise ValueError("a loaded model needs its tokenizer: pass tokenizer= (ours, a "
                             "transformers one, or a tokenizer.json path)")
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(source, tokenizer)
        if hasattr(tokenizer, "transformers_tokenizer"):  # one of ours
            tokenizer = tokenizer.transformers_tokenizer()
        super().__init__(pretrained=pretrained, tokenizer=tokenizer, backend="causal",
                         batch_size=8 if batch_size in (None, "auto") else int(batch_size),
                         max_length=None if max_length is None else int(max_length), **kwargs)
        self.jacobi_counts = {"forwards": 0, "jacobi_iterations": 0}

    def _count_jacobi(self, output) -> None:
        """A forward that ran the Jacobi passes (scoring, or a generation's prefill)."""
        iterations = getattr(output, "jacobi_iterations", None)
        if iterations is not None:
            self.jacobi_counts["forwards"] += 1
            self.jacobi_counts["jacobi_iterations"] += int(iterations)

    @property
    def mean_jacobi_iterations(self) -> Optional[float]:
        """Average Jacobi passes per scoring forward / prefill so far (None before the
        first)."""
        forwards = self.jacobi_counts["forwards"]
        return self.jacobi_counts["jacobi_iterations"] / forwards if forwards else None

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        # Scoring never continues from a cache: building one would only cost memory.
        with torch.no_grad():
            output = self.model(inps, use_cache=False)
        self._count_jacobi(output)
        return output.logits

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        if self.model.generation_config.eos_token_id is None:
            # A model converted from a training checkpoint knows no end-of-text id: without
            # the tokenizer's, rows would run past it (lm-eval decodes skipping it).
            generation_kwargs.setdefault("eos_token_id", self.eot_token_id)
        # generate's own forwards: the prefill's Jacobi passes are counted.
        hook = self.model.register_forward_hook(
            lambda module, inputs, output: self._count_jacobi(output))
        try:
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            hook.remove()
