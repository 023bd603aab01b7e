"""Progress of a preprocessing run: a tqdm bar on a terminal, plain log lines otherwise."""

import time
from typing import Optional, TextIO


class ProgressReporter:
    """Tracks bytes, documents and tokens; reports every ``log_interval`` documents.

    On a terminal a tqdm bar over input bytes shows MB/s and ETA, with documents/s and tokens/s
    in its postfix. Redirected to a file, tqdm's carriage returns would make an unreadable log,
    so one greppable line per interval is written instead.
    """

    def __init__(
        self, stream: TextIO, total_bytes: Optional[int], log_interval: int,
        use_bar: Optional[bool] = None,
    ) -> None:
        self._stream = stream
        self._log_interval = max(1, log_interval)
        self._start = time.monotonic()
        self._bytes = 0
        self._documents = 0
        self._tokens = 0
        self._last_report_documents = 0
        if use_bar is None:
            use_bar = hasattr(stream, "isatty") and stream.isatty()
        self._bar = None
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                             desc="tokenizing", file=stream)

    def update(self, num_bytes: int, documents: int, tokens: int) -> None:
        """Account for one handled batch (``documents``/``tokens`` are running totals)."""
        self._bytes += num_bytes
        self._documents = documents
        self._tokens = tokens
        if self._bar is not None:
            self._bar.update(num_bytes)
        if documents - self._last_report_documents >= self._log_interval:
            self._last_report_documents = documents
            self._report()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _report(self) -> None:
        seconds = max(time.monotonic() - self._start, 1e-9)
        documents_per_second = self._documents / seconds
        tokens_per_second = self._tokens / seconds
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{self._documents} docs, {documents_per_second:.0f} docs/s, "
                f"{tokens_per_second:.0f} tokens/s"
            )
        else:
            self._stream.write(
                f"processed documents: {self._documents} | tokens: {self._tokens} | "
                f"documents/s: {documents_per_second:.1f} | tokens/s: {tokens_per_second:.0f} | "
                f"MB/s: {self._bytes / seconds / 1e6:.2f}\n"
            )
            self._stream.flush()
