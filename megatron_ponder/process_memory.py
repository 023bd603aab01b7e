"""This process's resident memory from Linux's /proc counters, for the measuring tools.

``reset_peak_rss()`` then ``peak_rss_growth_mib(before)`` measures how far the peak resident set
rose above ``before`` (``rss_kib()``) during a piece of work; elsewhere they return None.
"""

from typing import Optional


def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_kib() -> Optional[int]:
    """The current resident set (VmRSS) in KiB, or None off Linux."""
    return _status_kib("VmRSS")


def reset_peak_rss() -> bool:
    """Set the peak-RSS counter (VmHWM) to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def peak_rss_growth_mib(before_kib: Optional[int]) -> Optional[float]:
    """MiB the peak resident set rose above ``before_kib`` since ``reset_peak_rss()``."""
    peak = _status_kib("VmHWM")
    if peak is None or before_kib is None:
        return None
    return (peak - before_kib) / 1024
