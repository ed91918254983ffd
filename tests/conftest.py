"""Shared fixtures.

Behaviour tests use the *active* core (``herdrt.core``), so ``HERDRT_PURE=1 pytest`` holds the
pure twin to the same suite. Equivalence tests take ``fast`` and ``pure`` and compare them directly.
"""

import pytest

from herdrt import _pure


@pytest.fixture(scope="session")
def pure():
    """The pure-Python twin."""
    return _pure


@pytest.fixture(scope="session")
def fast():
    """The compiled core (an error, not a skip, if it is missing: CI must build it)."""
    from herdrt import _fast

    return _fast


@pytest.fixture(scope="session")
def core():
    """Whichever implementation herdrt.core chose (HERDRT_PURE=1 forces the twin)."""
    from herdrt import core

    return core
