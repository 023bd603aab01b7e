"""Small tokenizer files for every Megatron-LM tokenizer type, written offline into a folder."""

import base64
import io
import json
import os

GPT2_MERGES = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("o", "r"),
               ("Ġw", "or"), ("l", "d"), ("Ġwor", "ld"), ("Ġ", "t"), ("Ġt", "he")]
TIKTOKEN_MERGES = 500
SENTENCEPIECE_TEXT = ["the quick brown fox jumps over the lazy dog",
                      "hello world, hello tokenizers", "a sentencepiece model trained on the fly"]


def gpt2_byte_to_char():
    """GPT-2's reversible byte -> printable character map (printable bytes map to themselves,
    the others to code points from 256 on)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def write_gpt2_files(folder):
    """A GPT-2-style BPE of the 256 bytes, ``GPT2_MERGES`` and ``<|endoftext|>``, as
    vocab.json and merges.txt (Megatron-LM's --vocab-file/--merge-file). Returns (vocab dict,
    vocab path, merges path)."""
    byte_to_char = gpt2_byte_to_char()
    vocab = {byte_to_char[byte]: byte for byte in range(256)}
    for left, right in GPT2_MERGES:
        vocab[left + right] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder,
                                                                                "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as handle:
        json.dump(vocab, handle)
    with open(merges_path, "w", encoding="utf-8") as handle:
        handle.write("#version: 0.2\n"
                     + "".join(f"{left} {right}\n" for left, right in GPT2_MERGES))
    return vocab, vocab_path, merges_path


def write_sentencepiece_model(folder, vocab_size=64):
    """A BPE SentencePiece model trained on ``SENTENCEPIECE_TEXT`` (ids: 0 <unk>, 1 <s>, 2
    </s>); returns its path."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCEPIECE_TEXT * 20), model_writer=model,
        vocab_size=vocab_size, model_type="bpe", minloglevel=2)
    path = os.path.join(folder, "tiny.model")
    with open(path, "wb") as handle:
        handle.write(model.getvalue())
    return path


def write_tiktoken_json(folder, merges=TIKTOKEN_MERGES):
    """Megatron-LM's tiktoken vocabulary format (a JSON list of {rank, token_bytes, token_str},
    the 256 bytes first) holding GPT-2's first ``merges`` merges, from the openai-whisper copy
    of GPT-2's ranks; returns its path."""
    from megatron_ponder.tokenizer.tiktoken_bpe import read_tiktoken_ranks, \
        whisper_gpt2_tiktoken_path

    ranks = read_tiktoken_ranks(whisper_gpt2_tiktoken_path())
    # GPT-2's first 256 ranks are the single bytes (in its own order); the rest are its merges.
    merged = sorted((rank, token) for token, rank in ranks.items() if rank >= 256)[:merges]
    tokens = [bytes([byte]) for byte in range(256)] + [token for _, token in merged]
    entries = [{"rank": rank, "token_bytes": base64.b64encode(token).decode(),
                "token_str": token.decode("utf-8", errors="replace")}
               for rank, token in enumerate(tokens)]
    path = os.path.join(folder, "tiny-tiktoken.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(entries, handle)
    return path


def write_hugging_face_folder(folder):
    """GPT-NeoX-20B as a Hugging Face model folder (tokenizer.json + tokenizer_config.json),
    what transformers' AutoTokenizer, and so megatron-core's HuggingFaceTokenizer, reads."""
    from megatron_ponder.tokenizer.huggingface import gpt_neox_20b_json_path

    with open(gpt_neox_20b_json_path(), encoding="utf-8") as handle:
        definition = json.load(handle)
    definition["added_tokens"] = [t for t in definition["added_tokens"] if t["id"] < 50277]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8") as handle:
        json.dump(definition, handle)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|padding|>"}, handle)
    return folder
