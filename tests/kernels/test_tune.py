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


def test_trials_start_from_the_environment_settings_and_change_single_values(monkeypatch):
    seen = []

    def fake_time_call(leaves, do):
        seen.append({k: dict(v) for k, v in launch.OVERRIDES.items()})
        return (1.0, 2.0)

    base = {"state": {"FUSE_OUTPUT": False, "num_stages": 2}, "kq_bwd": {"LOWP": True}}
    monkeypatch.setattr(tune, "time_call", fake_time_call)
    monkeypatch.setattr(tune, "BASE", base)
    monkeypatch.setattr(launch, "OVERRIDES", {k: dict(v) for k, v in base.items()})
    tune.trial(None, None, {"state": {"num_stages": 1}, "output": {"BK": 64}})
    assert seen == [{"state": {"FUSE_OUTPUT": False, "num_stages": 1}, "kq_bwd": {"LOWP": True}, "output": {"BK": 64}}]
    assert launch.OVERRIDES == base  # restored after the trial


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
