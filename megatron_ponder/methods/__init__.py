"""The method registry: what the K extra slots or passes of a token are.

Each method is one small object (one file here) that builds the ``PassPlan`` of a forward:
per pass, what it feeds the layer stack (the embeddings, PonderLM-2's splice of the previous
outputs, pause slots, or the previous output itself), how many slots per token, and whether the
final norm is applied. Everything else is read off those passes: the pass driver
(``model/ponder.py``) and the pipeline run them, FLOPs and activation memory count them,
inference decodes from them. Nothing outside this package compares a method's name.

Adding a method: a file with a ``Method`` subclass and one line in ``METHODS`` below
(docs/architecture.md, "Adding a method").
"""

from typing import Dict

from megatron_ponder.methods.base import ONE_PASS, Method
from megatron_ponder.methods.loop import LOOP
from megatron_ponder.methods.pause import PAUSE
from megatron_ponder.methods.plan import Pass, PassInput, PassPlan
from megatron_ponder.methods.ponderlm2 import PONDERLM2
from megatron_ponder.methods.vanilla import VANILLA

METHODS: Dict[str, Method] = {method.name: method for method in (PONDERLM2, PAUSE, LOOP, VANILLA)}


def get_method(name: str) -> Method:
    """The registered method called ``name`` (ValueError naming the choices otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown ponder method {name!r}; choose one of "
                         f"{', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "ONE_PASS", "Pass", "PassInput", "PassPlan", "PONDERLM2",
           "PAUSE", "LOOP", "VANILLA", "get_method"]
