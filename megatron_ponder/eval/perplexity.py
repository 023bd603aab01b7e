"""Held-out perplexity on a Megatron ``.bin/.idx`` dataset (megatron-core's IndexedDataset) or
on plain text files (tokenized here with the model's tokenizer).

The documents are read in order and concatenated (their stored tokens, end-of-document ids
included, exactly as training reads them) and cut into windows of ``seq_length + 1`` tokens that
overlap by one: every token after the first is predicted exactly once, with the context of its
window, as in Megatron's validation. The last, shorter window is scored too.
"""

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy
import torch
import torch.nn.functional as F
from tqdm import tqdm


@dataclass
class PerplexityResult:
    data_prefix: str
    seq_length: int
    sequences: int
    tokens: int
    """Predicted tokens."""
    nll: float
    """Mean negative log-likelihood per predicted token (nats)."""

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)


def token_windows(data_prefix: str, seq_length: int,
                  max_sequences: Optional[int] = None) -> Iterator[numpy.ndarray]:
    """Windows of up to ``seq_length + 1`` consecutive tokens, consecutive windows sharing one."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(data_prefix)
    documents = (dataset[index] for index in range(len(dataset)))
    return stream_windows(documents, seq_length, max_sequences)


def text_documents(paths: Sequence[str], tokenizer) -> Iterator[List[int]]:
    """Token ids of each document in ``paths``, each followed by the end-of-document id: a
    ``.jsonl`` file holds one document per line (its ``"text"``), any other file is one
    UTF-8 document."""
    import json
    import os

    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--perplexity-text {path}: no such file")
        with open(path, encoding="utf-8") as f:
            if not path.endswith(".jsonl"):
                yield list(tokenizer.tokenize(f.read())) + [tokenizer.eod]
                continue
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        text = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise ValueError(f"{path}:{number}: not a JSON object with a "
                                         f"\"text\" field") from None
                    yield list(tokenizer.tokenize(text)) + [tokenizer.eod]


def stream_windows(documents: Iterable[Sequence[int]], seq_length: int,
                   max_sequences: Optional[int] = None) -> Iterator[numpy.ndarray]:
    """``documents`` (token id sequences) concatenated and cut into windows of ``seq_length +
    1`` tokens that overlap by one; the last, shorter window too (if it predicts anything)."""
    leftover = numpy.zeros(0, dtype=numpy.int64)
    produced = 0
    for document in documents:
        stream = numpy.concatenate([leftover, numpy.asarray(document, dtype=numpy.int64)])
        start = 0
        while len(stream) - start >= seq_length + 1:
            yield stream[start:start + seq_length + 1]
            produced += 1
            if max_sequences is not None and produced >= max_sequences:
                return
            start += seq_length  # the window's last token starts the next window
        leftover = stream[start:]
    if len(leftover) >= 2:
        yield leftover


@torch.no_grad()
def held_out_perplexity(model, data_prefix: str, seq_length: int = 2048, batch_size: int = 4,
                        max_sequences: Optional[int] = None,
                        show_progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` (the transformers-native ``PonderLM2ForCausalLM``, with its
    Jacobi settings) on the dataset at ``data_prefix`` (path without .bin/.idx).
    ``max_sequences`` caps the number of full windows."""
    return windows_perplexity(model, token_windows(data_prefix, seq_length, max_sequences),
                              data_prefix, seq_length, batch_size, show_progress)


@torch.no_grad()
def windows_perplexity(model, windows: Iterable[numpy.ndarray], name: str, seq_length: int,
                       batch_size: int = 4, show_progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` over token ``windows`` (each scored on its own; see
    ``stream_windows``); ``name`` labels the result."""
    device = next(model.parameters()).device
    total_nll, total_tokens, sequences = 0.0, 0, 0
    progress = tqdm(desc="perplexity", unit="seq", disable=not show_progress)
    batch: List[numpy.ndarray] = []

    def score(windows: List[numpy.ndarray]) -> None:
        nonlocal total_nll, total_tokens, sequences
        # Windows of one batch have equal length except the last (short) one: right-pad it
        # and leave its padding out of the mask and the sum.
        width = max(len(w) for w in windows)
        ids = torch.zeros((len(windows), width), dtype=torch.long)
        mask = torch.zeros((len(windows), width), dtype=torch.long)
        for row, window in enumerate(windows):
            ids[row, :len(window)] = torch.from_numpy(window)
            mask[row, :len(window)] = 1
        ids, mask = ids.to(device), mask.to(device)
        # Scoring only: no KV cache to build.
        logits = model(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=False).logits
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        real_targets = mask[:, 1:].bool()
        total_nll += float(nll[real_targets].double().sum())
        total_tokens += int(real_targets.sum())
        sequences += len(windows)
        progress.update(len(windows))

    for window in windows:
        batch.append(window)
        if len(batch) == batch_size:
            score(batch)
            batch = []
    if batch:
        score(batch)
    progress.close()
    if total_tokens == 0:
        raise ValueError(f"{name}: fewer than 2 tokens, nothing to score")
    return PerplexityResult(data_prefix=name, seq_length=seq_length,
                            sequences=sequences, tokens=total_tokens,
                            nll=total_nll / total_tokens)
