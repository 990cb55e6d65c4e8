"""providers.groups: what leaves a nursery inside an API comes out as the API documents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from providers.groups import lone_exception, ungrouped


class Documented(Exception):
    pass


@asynccontextmanager
async def with_a_nursery(*failing: str) -> AsyncIterator[None]:
    async def fail(name: str) -> None:
        raise Documented(name)

    async with trio.open_nursery() as nursery:
        for name in failing:
            nursery.start_soon(fail, name)
        yield


async def test_a_lone_error_leaves_ungrouped_with_its_cause_intact() -> None:
    cause = KeyError("why")
    with pytest.raises(Documented) as raised:
        async with ungrouped(with_a_nursery()):
            raise Documented("from the block") from cause
    assert str(raised.value) == "from the block"
    assert raised.value.__cause__ is cause
    with pytest.raises(Documented, match="task"):
        async with ungrouped(with_a_nursery("task")):
            await trio.sleep_forever()


async def test_several_errors_stay_a_group() -> None:
    with pytest.raises(BaseExceptionGroup) as raised:
        async with ungrouped(with_a_nursery("a", "b")):
            await trio.sleep_forever()
    assert len(raised.value.exceptions) == 2


def test_lone_exception_unwraps_only_one_element_groups() -> None:
    leaf = ValueError("x")
    assert lone_exception(ExceptionGroup("g", [ExceptionGroup("h", [leaf])])) is leaf
    nested = ExceptionGroup("h", [leaf])
    assert lone_exception(ExceptionGroup("g", [nested]), nested=False) is nested
    two = ExceptionGroup("g", [leaf, KeyError("y")])
    assert lone_exception(two) is two
