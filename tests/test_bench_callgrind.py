"""``bench.callgrind``: the instruction counts that ``bench.send_cost`` and
``bench.connect_cost`` make, refused when a run failed or fell short."""

from __future__ import annotations

import pytest

from bench import callgrind

OUTPUT = (
    '{"client": "node", "sends": 40}\n==19962== Events    : Ir\n==19962== Collected : 1529894269\n'
)


def test_a_unit_s_count_is_the_difference_over_the_units_between() -> None:
    assert callgrind.per_unit(3_614_781_089, 3_714_726_443, 200, "sends") == 499_727
    with pytest.raises(ValueError, match="must differ by some connects, not 0"):
        callgrind.per_unit(1, 2, 0, "connects")


def test_valgrind_s_count_is_read_from_its_output_or_its_failure_quoted() -> None:
    assert callgrind.collected(OUTPUT) == 1_529_894_269
    with pytest.raises(ValueError, match=r"no instruction count.*valgrind: command not found"):
        callgrind.collected("bash: valgrind: command not found\n")


def test_a_counted_run_that_failed_or_fell_short_fails_the_count() -> None:
    def count(output: str, returncode: int, expected: int) -> int:
        return callgrind.counted(
            output, returncode, field="sends", expected=expected, what="sends made"
        )

    assert count(OUTPUT, 0, 40) == 1_529_894_269
    with pytest.raises(ValueError, match=r"exit 1, 40 of 40 sends made"):
        count(OUTPUT, 1, 40)
    with pytest.raises(ValueError, match=r"exit 0, 40 of 80 sends made"):
        count(OUTPUT, 0, 80)
    with pytest.raises(ValueError, match=r"exit 0, None of 40 sends made.*Traceback"):
        count("Traceback (most recent call last): ...\n==1== Collected : 5\n", 0, 40)
    with pytest.raises(ValueError, match="no instruction count"):
        count('{"sends": 40}\n', 0, 40)
    with pytest.raises(ValueError, match=r"None of 40 sends made.*\{not json"):
        count("{not json\n==1== Collected : 5\n", 0, 40)
