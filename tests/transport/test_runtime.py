"""Start-up helpers: malloc tuning (in a child process) and event-loop selection."""

from __future__ import annotations

import asyncio
import platform
import subprocess
import sys
import textwrap

import pytest

from edgenode.transport import loop_factory, run, tune_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_on_glibc_in_a_fresh_process() -> None:
    # mallopt changes the whole process: do it in a child, not in the test runner.
    code = "import sys; from edgenode.transport import tune_malloc; sys.exit(not tune_malloc())"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_importing_the_transport_does_not_tune_malloc() -> None:
    code = textwrap.dedent(
        """
        import ctypes, sys
        looked_up = []
        class Spy(ctypes.CDLL):
            def __getattr__(self, name):
                looked_up.append(name)
                return super().__getattr__(name)
        ctypes.CDLL = Spy
        import edgenode.transport
        sys.exit(1 if "mallopt" in looked_up else 0)
        """
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    assert callable(tune_malloc)


def test_loop_factory_choices() -> None:
    assert loop_factory(False) is asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        assert loop_factory(None) is asyncio.new_event_loop
    else:
        assert loop_factory(None) is uvloop.new_event_loop
        assert loop_factory(True) is uvloop.new_event_loop


def test_run_plain_asyncio() -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run(main(), use_uvloop=False).startswith("asyncio")
