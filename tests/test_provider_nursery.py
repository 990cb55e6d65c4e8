"""open_connection_nursery: one exception comes out unwrapped, several stay a group."""

from __future__ import annotations

import gc
import inspect

import pytest
import trio
import trio.testing

from providers import _nursery
from providers._nursery import open_connection_nursery, unwrap_single
from providers.base import Conflict, TransientError
from tests.support import CEILING


async def test_the_blocks_own_exception_comes_out_unwrapped_and_chained() -> None:
    cause = OSError("link down")
    with trio.fail_after(CEILING):
        with pytest.raises(Conflict) as info:
            async with open_connection_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                try:
                    raise cause
                except OSError as exc:
                    raise Conflict("taken over") from exc
    assert info.value.__cause__ is cause
    assert info.value.__context__ is cause


async def test_a_single_task_error_comes_out_unwrapped() -> None:
    async def fail() -> None:
        raise TransientError("gone")

    with trio.fail_after(CEILING):
        with pytest.raises(TransientError, match="gone"):
            async with open_connection_nursery() as nursery:
                nursery.start_soon(fail)
                await trio.sleep_forever()


async def test_cancellation_passes_through(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(CEILING):
        with trio.move_on_after(1) as scope:
            async with open_connection_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 1


async def test_a_lone_cancelled_is_raised_bare() -> None:
    with trio.fail_after(CEILING):
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled) as info:
                async with open_connection_nursery():
                    await trio.lowlevel.checkpoint()
            raise info.value  # never swallow it: the scope that cancelled takes it
    assert scope.cancelled_caught


async def test_two_real_errors_stay_a_group() -> None:
    async def fail(message: str) -> None:
        raise TransientError(message)

    with trio.fail_after(CEILING):
        with pytest.raises(BaseExceptionGroup) as info:
            async with open_connection_nursery() as nursery:
                nursery.start_soon(fail, "one")
                nursery.start_soon(fail, "two")
                await trio.sleep_forever()
    group = info.value
    assert sorted(str(exc) for exc in group.exceptions) == ["one", "two"]
    assert all(isinstance(exc, TransientError) for exc in group.exceptions)


async def test_a_group_the_block_raised_is_not_flattened() -> None:
    with trio.fail_after(CEILING):
        with pytest.raises(ExceptionGroup) as info:
            async with open_connection_nursery():
                raise ExceptionGroup("the caller's own", [ValueError("inner")])
    # trio's cancel scope re-derives groups with split(), so compare the shape.
    assert info.value.message == "the caller's own"
    assert [repr(exc) for exc in info.value.exceptions] == ["ValueError('inner')"]


def test_unwrap_single() -> None:
    lone = ValueError("lone")
    assert unwrap_single(BaseExceptionGroup("g", [lone])) is lone
    pair = BaseExceptionGroup("g", [ValueError("a"), ValueError("b")])
    assert unwrap_single(pair) is pair
    nested = BaseExceptionGroup("g", [ExceptionGroup("inner", [lone])])
    assert unwrap_single(nested) is nested.exceptions[0]


async def test_the_block_keeps_no_generator_frame() -> None:
    # Every connected channel holds one for hours: no suspended generator,
    # manager object and weak reference beside the nursery.
    with trio.fail_after(CEILING):
        async with open_connection_nursery():
            frames = [
                obj
                for obj in gc.get_objects()
                if inspect.isasyncgen(obj) and obj.ag_code.co_filename == _nursery.__file__
            ]
            assert frames == []
