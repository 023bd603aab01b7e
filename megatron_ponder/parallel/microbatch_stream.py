"""One micro-batch stream read by every pass of the pipeline.

megatron's interleaved schedule calls chunk ``c`` with ``data_iterator[c]`` once per micro-batch,
in micro-batch order. Every pass of a micro-batch needs that micro-batch (the first stage embeds
its tokens in pass 0 and splices them into every later pass; the last stage needs its labels in
the final pass), so each chunk gets a *view*: the n-th ``next`` on any view returns micro-batch
n, read from the source once and dropped when every view has moved past it.
"""

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple


class MicroBatchStream:
    """``num_views`` iterators over the same micro-batches of ``source``.

    ``prepare`` (for example: move to the device) runs once per micro-batch, when it is read.
    Items are ``(index, micro_batch)`` with ``index`` counting from 0 for this stream.
    """

    def __init__(self, source: Iterator, num_views: int,
                 prepare: Optional[Callable[[Any], Any]] = None):
        if num_views < 1:
            raise ValueError(f"num_views must be >= 1, got {num_views}")
        self._source = source
        self._prepare = prepare or (lambda batch: batch)
        self._positions: List[int] = [0] * num_views
        self._cache: Dict[int, Any] = {}
        self._read = 0

    def view(self, index: int) -> Iterator[Tuple[int, Any]]:
        return _View(self, index)

    def views(self) -> List[Iterator[Tuple[int, Any]]]:
        return [self.view(index) for index in range(len(self._positions))]

    @property
    def cached(self) -> int:
        """Micro-batches held right now (at most the pipeline's in-flight depth)."""
        return len(self._cache)

    def _next_for(self, view: int) -> Tuple[int, Any]:
        index = self._positions[view]
        if index == self._read:
            self._cache[index] = self._prepare(next(self._source))
            self._read += 1
        batch = self._cache[index]
        self._positions[view] += 1
        if min(self._positions) > index:
            del self._cache[index]
        return index, batch


class _View:
    def __init__(self, stream: MicroBatchStream, index: int):
        self._stream = stream
        self._index = index

    def __iter__(self):
        return self

    def __next__(self):
        return self._stream._next_for(self._index)
