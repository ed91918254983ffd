# cython: language_level=3
"""The compiled core of herdrt: framing, MD5 hash ring, online statistics, sealed link records.

One extension assembled from ``include``d fragments, one per concern. ``_pure.py`` is its twin:
the same public API and the same results; the tests hold both to one suite.
"""

from herdrt.core._api import PUBLIC_NAMES

__all__ = list(PUBLIC_NAMES)

include "_framing.pxi"
include "_ring.pxi"
include "_stats.pxi"
include "_records.pxi"
