"""The benchmarks' interleaved timing charges each entry for its own work, freeing included."""
import pathlib
import sys
import weakref

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
from roofline import interleaved_seconds  # noqa: E402


class Outputs:
    """Stands for what a run returns (its gradients): logs when it is freed."""

    def __init__(self, log, name):
        weakref.finalize(self, log.append, f"{name} freed")


def test_a_runs_outputs_are_freed_before_the_next_entry_starts():
    log = []

    def entry(name):
        def run():
            log.append(f"{name} runs")
            return Outputs(log, name)
        return run

    interleaved_seconds({"eager": entry("eager"), "native": entry("native")}, rounds=2)
    timed = log[4:]  # after the untimed call of each
    assert timed == ["eager runs", "eager freed", "native runs", "native freed"] * 2


def test_a_run_that_returns_seconds_is_timed_by_them():
    times = interleaved_seconds({"profiled": lambda: 0.25, "plain": lambda: None}, rounds=3)
    assert times["profiled"] == [0.25] * 3
    assert len(times["plain"]) == 3 and all(0 <= t < 0.25 for t in times["plain"])
