"""Isolated children (issue 11): a child with its own restart intensity is given up
alone, and its crashes never count against its supervisor. Virtual time."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors import ActorState, Exit, ExitKind, open_actor_system
from supervisors import ChildSpec, RestartBackoff, open_supervisor
from tests.support import CEILING
from tests.test_supervisor_otp import Journal, child, settle, worker


@pytest.mark.parametrize(
    "backoff", [None, RestartBackoff(base=0.1, cap=1.0)], ids=["now", "delayed"]
)
async def test_many_isolated_children_crashing_together_never_take_the_supervisor_down(
    autojump_clock: Any, backoff: RestartBackoff | None
) -> None:
    journal = Journal()
    given_up: dict[str, Exit] = {}
    crashing = [
        worker(
            f"c{n}",
            journal,
            intensity=2,
            period=60.0,
            on_give_up=lambda e, n=n: given_up.__setitem__(f"c{n}", e),
        )
        for n in range(50)
    ]
    healthy = worker("healthy", journal)
    with trio.fail_after(CEILING):
        async with open_actor_system() as system:
            # The supervisor allows 1 restart in 5 s: 50 children crashing 3 times
            # each are 150 crashes, far past it, and none of them counts.
            async with open_supervisor(
                system, [healthy, *crashing], intensity=1, period=5.0, restart_backoff=backoff
            ) as sup:
                refs = [await child(sup, spec.id) for spec in crashing]
                for _ in range(3):
                    for ref in refs:
                        ref.tell("crash")
                    await settle()
                    await trio.sleep(2.0)  # delayed restarts happen
                    await settle()
                assert sup.ref.state is ActorState.RUNNING
                assert sorted(given_up) == sorted(spec.id for spec in crashing)
                exit = given_up["c0"]
                assert exit.kind is ExitKind.CRASHED and "c0 crashed" in str(exit.error)
                statuses = {c.id: c.status for c in (await sup.which_children())}
                assert statuses["healthy"] == "running"
                assert {statuses[spec.id] for spec in crashing} == {"undefined"}
                healthy_ref = await child(sup, "healthy")
                assert await healthy_ref.ask("ping") == ("healthy", "ping")
                # restart_child brings a given-up child back, with a new count.
                await sup.restart_child("c0")
                again = await child(sup, "c0")
                again.tell("crash")
                await settle()
                await trio.sleep(2.0)
                await settle()
                assert {c.id: c.status for c in await sup.which_children()}["c0"] == "running"


async def test_an_isolated_child_within_its_intensity_keeps_being_restarted(
    autojump_clock: Any,
) -> None:
    journal = Journal()
    spec = worker("c", journal, intensity=2, period=10.0)
    async with open_actor_system() as system:
        async with open_supervisor(system, [spec], intensity=0) as sup:
            ref = await child(sup, "c")
            for _ in range(10):  # 2 in any 10 s: never more
                ref.tell("crash")
                await settle()
                await trio.sleep(5.01)
            assert ref.incarnation == 11
            assert sup.ref.state is ActorState.RUNNING


def test_a_child_s_own_intensity_is_validated() -> None:
    with pytest.raises(ValueError, match="intensity"):
        ChildSpec(id="x", start=lambda: None, intensity=-1)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match="period"):
        ChildSpec(id="x", start=lambda: None, intensity=1, period=0)  # type: ignore[arg-type,return-value]
