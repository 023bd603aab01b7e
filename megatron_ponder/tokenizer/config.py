"""``TokenizerConfig``: Megatron-LM's tokenizer flags, shared by training and preprocessing
(``megatron_ponder.flags`` makes the flags).

The flags are ``TokenizerSpec``'s fields (what ``build_tokenizer`` takes), defined once there;
``TokenizerConfig`` adds the vocabulary padding, which belongs to the model, not the tokenizer.
"""

import dataclasses

from megatron_ponder.flags import Freezable, option
from megatron_ponder.tokenizer.base import TextTokenizer
from megatron_ponder.tokenizer.build import TokenizerSpec


def _spec(self) -> TokenizerSpec:
    """What ``build_tokenizer`` needs."""
    return TokenizerSpec.from_flags(self)


def _padded_vocab_size(self, tokenizer: TextTokenizer, tensor_model_parallel_size: int) -> int:
    """Rows of the embedding and output layers for ``tokenizer`` (built from ``spec()``): its
    vocabulary padded to a multiple of --make-vocab-size-divisible-by x the tensor-parallel
    size."""
    return tokenizer.padded_vocab_size(
        tensor_model_parallel_size=tensor_model_parallel_size,
        make_vocab_size_divisible_by=self.make_vocab_size_divisible_by)


TokenizerConfig = dataclasses.make_dataclass(
    "TokenizerConfig",
    [(field.name, field.type, dataclasses.field(default=field.default, metadata=field.metadata))
     for field in dataclasses.fields(TokenizerSpec)]
    + [("make_vocab_size_divisible_by", int, option(
        128, "pad the vocabulary to a multiple of this times the tensor-parallel size"))],
    bases=(Freezable,), namespace={"spec": _spec, "padded_vocab_size": _padded_vocab_size})
TokenizerConfig.__module__ = __name__  # pickled by reference, as a class written out would be
TokenizerConfig.__doc__ = """Which tokenizer (Megatron-LM's flags: ``TokenizerSpec``'s fields) and
the vocabulary padding it implies."""
