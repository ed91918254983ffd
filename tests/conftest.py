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


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request):
    """Run an async test body on a fresh loop of each flavour (uvloop and stdlib asyncio), under a
    timeout; fail if it leaves tasks behind. ``run(main, timeout=...)`` returns main's result."""
    import asyncio

    import uvloop

    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main, timeout: float = 30.0):
        async def checked():
            async with asyncio.timeout(timeout):
                result = await main()
            await asyncio.sleep(0)
            leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not leaked, f"leaked tasks: {leaked}"
            return result

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(checked())

    runner.flavour = request.param
    return runner
