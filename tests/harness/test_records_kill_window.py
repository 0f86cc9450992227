"""A kill between a task's finished marker and the run summary update loses nothing."""

import json

from qdelta.harness.eval.records import RunRecord


def test_summary_entry_survives_a_kill_before_the_summary_update(tmp_path):
    record = RunRecord(tmp_path, "run-1")
    record.start({"command": "qdelta eval ..."})
    entry = {"version": 1, "n_samples": 3, "metrics": {"acc,none": 0.5}}
    record.write_task("qd_ar_quick", {"results": {"qd_ar_quick": {"acc,none": 0.5}}}, [{"doc_id": 0}], entry)
    summary = json.loads((record.path / "summary.json").read_text())
    summary["tasks"] = {}  # the state on disk had the process died just before write_task's last step
    (record.path / "summary.json").write_text(json.dumps(summary))

    resumed = RunRecord(tmp_path, "run-1")
    resumed.start({"command": "qdelta eval ..."})
    tasks = resumed.summary()["tasks"]
    assert tasks["qd_ar_quick"]["status"] == "done" and tasks["qd_ar_quick"]["n_samples"] == 3
    assert resumed.is_finished("qd_ar_quick")
