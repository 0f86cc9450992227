"""harness/bench/tune.py without a GPU: the timing call is replaced by a scripted one, so what is
checked is the bookkeeping — overrides set only during a trial, the best of --repeat runs kept, a
setting adopted only when it beats the baseline by more than the 5 % spread, faults reported."""

import pytest

from qdelta.harness.bench import tune
from qdelta.kernels.triton import launch


def test_trial_sets_overrides_only_while_timing_and_keeps_the_best_of_repeats(monkeypatch):
    seen, times = [], iter([(2.0, 5.0), (1.5, 6.0), (1.8, 4.5)])

    def fake_time_call(leaves, do):
        seen.append({k: dict(v) for k, v in launch.OVERRIDES.items()})
        return next(times)

    monkeypatch.setattr(tune, "time_call", fake_time_call)
    monkeypatch.setattr(tune, "REPEAT", 3)
    assert tune.trial(None, None, {"state": {"BV": 32}}) == (1.5, 4.5)  # column-wise best of three
    assert seen == [{"state": {"BV": 32}}] * 3
    assert launch.OVERRIDES == {}


def test_a_trial_changes_single_values_of_the_launch_table(monkeypatch):
    seen = []

    def fake_time_call(leaves, do):
        seen.append({kernel: launch.settings(kernel, 256, 512) for kernel in ("state", "output")})
        return (1.0, 2.0)

    table = {kernel: launch.settings(kernel, 256, 512) for kernel in ("state", "output")}
    monkeypatch.setattr(tune, "time_call", fake_time_call)
    tune.trial(None, None, {"state": {"num_stages": 1}, "output": {"BK": 32}})
    assert seen == [{"state": {**table["state"], "num_stages": 1}, "output": {**table["output"], "BK": 32}}]
    assert launch.OVERRIDES == {} and table == {kernel: launch.settings(kernel, 256, 512) for kernel in table}


def test_the_trials_name_only_settings_of_the_launch_table():
    for kernel, trials in tune.TRIALS.items():
        known = set(launch.settings(kernel, 256, 512))
        assert all(set(o) <= known for o in trials), kernel


def test_a_failing_setting_is_reported_not_raised(monkeypatch):
    def out_of_memory(leaves, do):
        raise RuntimeError("out of resource: shared memory")

    monkeypatch.setattr(tune, "time_call", out_of_memory)
    result = tune.trial(None, None, {"reverse": {"num_stages": 4}})
    assert isinstance(result, str) and "shared memory" in result
    assert launch.OVERRIDES == {}


@pytest.mark.parametrize("kernel, column", [("state", 0), ("reverse", 1), ("recurrent", 0)])
def test_pick_needs_more_than_five_percent_on_the_kernels_own_column(kernel, column):
    def row(o, better):
        t = [10.0, 10.0]
        t[column] = better
        return {"overrides": o, "result": tuple(t)}

    group = {
        "base": (10.0, 10.0),
        "trials": [
            row({"BV": 32}, 9.6),
            row({"BV": 128}, 9.0),
            {"overrides": {"BV": 16}, "result": "illegal memory access"},
        ],
    }
    assert tune._pick(group, kernel) == {"BV": 128}
    group["trials"] = group["trials"][:1]  # 4 % better only: within the spread, keep the default
    assert tune._pick(group, kernel) is None
