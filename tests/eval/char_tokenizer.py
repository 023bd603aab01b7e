"""A character tokenizer that fits the tiny test models' 97-token vocabulary.

id 0 is ``<|endoftext|>``, ids 1..95 are printable ASCII (space..~), id 96 is a newline. Saved as
a real ``tokenizer.json`` so tools load it exactly like a model folder's own tokenizer.
"""

import os


def save_char_tokenizer(folder) -> str:
    from tokenizers import Tokenizer, decoders, models

    vocab = {"<|endoftext|>": 0, **{chr(32 + i): i + 1 for i in range(95)}, "\n": 96}
    # No merges and no pre-tokenizer: every character is its own token.
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.add_special_tokens(["<|endoftext|>"])
    tokenizer.decoder = decoders.Fuse()
    path = os.path.join(str(folder), "tokenizer.json")
    tokenizer.save(path)
    return path


def char_tokenizer(folder):
    from megatron_ponder.tokenizer import HuggingFaceTokenizer

    return HuggingFaceTokenizer.from_file(save_char_tokenizer(folder))
