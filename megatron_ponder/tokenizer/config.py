"""``TokenizerConfig``: Megatron-LM's tokenizer flags, shared by training and preprocessing
(``megatron_ponder.flags`` makes the flags).

The flags are ``TokenizerSpec``'s fields (what ``build_tokenizer`` takes), defined once there;
``TokenizerConfig`` adds the vocabulary padding, which belongs to the model, not the tokenizer.
"""

import dataclasses

from megatron_ponder.flags import Freezable, option
from megatron_ponder.tokenizer.build import TokenizerSpec


def _spec(self) -> TokenizerSpec:
    """What ``build_tokenizer`` needs."""
    return TokenizerSpec.from_flags(self)


TokenizerConfig = dataclasses.make_dataclass(
    "TokenizerConfig",
    [(field.name, field.type, dataclasses.field(default=field.default, metadata=field.metadata))
     for field in dataclasses.fields(TokenizerSpec)]
    + [("make_vocab_size_divisible_by", int, option(
        128, "pad the vocabulary to a multiple of this times the tensor-parallel size"))],
    bases=(Freezable,), namespace={"spec": _spec})
TokenizerConfig.__module__ = __name__  # pickled by reference, as a class written out would be
TokenizerConfig.__doc__ = """Which tokenizer (Megatron-LM's flags: ``TokenizerSpec``'s fields) and
the vocabulary padding it implies."""
