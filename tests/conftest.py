"""Shared fixtures.

Behaviour tests use the *active* core (``herdrt.core``), so ``HERDRT_PURE=1 pytest`` holds the
pure twin to the same suite. Equivalence tests take ``fast`` and ``pure`` and compare them directly.
"""

import pytest

from herdrt.core import _pure


@pytest.fixture(scope="session", autouse=True)
def _herdrt_home(tmp_path_factory):
    """`herdrt serve` keeps pid files and logs under $HERDRT_HOME/herds: the tests' own, never the
    user's ~/.herdrt (node processes the tests start inherit it)."""
    import os

    home = tmp_path_factory.mktemp("herdrt-home")
    old = os.environ.get("HERDRT_HOME")
    os.environ["HERDRT_HOME"] = str(home)
    yield home
    if old is None:
        del os.environ["HERDRT_HOME"]
    else:
        os.environ["HERDRT_HOME"] = old


@pytest.fixture(scope="session")
def pure():
    """The pure-Python twin."""
    return _pure


@pytest.fixture(scope="session")
def fast():
    """The compiled core (an error, not a skip, if it is missing: CI must build it)."""
    from herdrt.core import _fast

    return _fast


@pytest.fixture(scope="session")
def core():
    """Whichever implementation herdrt.core chose (HERDRT_PURE=1 forces the twin)."""
    from herdrt import core

    return core


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request):
    """Run an async test body on a fresh loop of each flavour (uvloop and stdlib asyncio), under a
    timeout; fail if it leaves tasks behind or an exception escaped a loop callback.
    ``run(main, timeout=...)`` returns main's result."""
    import asyncio

    import uvloop

    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main, timeout: float = 30.0):
        errors = []

        def on_error(loop, context):
            loop.default_exception_handler(context)
            if isinstance(context.get("exception"), asyncio.CancelledError) and "StreamReaderProtocol" in repr(
                context.get("handle")
            ):
                return  # Python 3.11's start_server callback on a client task cancelled before it ran (fixed in 3.12)
            errors.append(context)

        async def checked():
            asyncio.get_running_loop().set_exception_handler(on_error)
            async with asyncio.timeout(timeout):
                result = await main()
            await asyncio.sleep(0)
            leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            assert not leaked, f"leaked tasks: {leaked}"
            # An exception escaping a loop callback (a timer, a protocol method) is a bug the
            # loop only logs: fail the test instead of letting it pass unnoticed.
            assert not errors, (
                f"exceptions in loop callbacks: {[c.get('exception') or c.get('message') for c in errors]}"
            )
            return result

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(checked())

    runner.flavour = request.param
    return runner
