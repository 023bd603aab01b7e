"""Progress reports: a tqdm bar with MB/s and documents/s on a terminal, log lines otherwise."""

import io

from megatron_ponder.data.preprocess.progress import ProgressReporter


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_terminal_gets_a_tqdm_bar_with_rates():
    stream = _Terminal()
    progress = ProgressReporter(stream, total_bytes=4_000_000, log_interval=100)
    for batch in range(1, 5):
        progress.update(1_000_000, documents=batch * 100, tokens=batch * 10_000)
    progress.close()
    output = stream.getvalue()
    assert "tokenizing: 100%" in output
    assert "B/s" in output and "400 docs" in output and "docs/s" in output
    assert "tokens/s" in output


def test_a_log_file_gets_one_line_per_interval():
    stream = io.StringIO()
    progress = ProgressReporter(stream, total_bytes=None, log_interval=250)
    for batch in range(1, 11):
        progress.update(1000, documents=batch * 100, tokens=batch * 5000)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "processed documents: 300", "processed documents: 600", "processed documents: 900"]
    assert all("documents/s: " in line and "tokens/s: " in line and "MB/s: " in line
               for line in lines)
    assert "\r" not in stream.getvalue()
