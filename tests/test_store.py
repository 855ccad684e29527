import pytest

from autocomp.errors import RunError
from autocomp.store import RunStore


def make(tmp_path):
    return RunStore.create(tmp_path / "run", space_yaml="version: 1\n", run_info={"settings": {}})


def test_journal_appends_and_reads_back(tmp_path):
    store = make(tmp_path)
    for i in range(3):
        store.append({"id": i, "status": "complete"})
    assert [r["id"] for r in store.trials()] == [0, 1, 2]
    store.close()


def test_torn_last_line_is_dropped_and_appends_continue_cleanly(tmp_path):
    store = make(tmp_path)
    store.append({"id": 0})
    store.close()
    with open(tmp_path / "run" / "trials.jsonl", "ab") as f:
        f.write(b'{"id": 1, "sta')  # the driver died mid-write
    store = RunStore.open(tmp_path / "run")
    assert [r["id"] for r in store.trials()] == [0]
    store.append({"id": 1})
    assert [r["id"] for r in store.trials()] == [0, 1]
    store.close()


def test_corrupt_middle_line_is_reported_with_its_number(tmp_path):
    store = make(tmp_path)
    store.close()
    (tmp_path / "run" / "trials.jsonl").write_text('{"id": 0}\nnot json\n{"id": 2}\n')
    with pytest.raises(RunError, match=r"trials.jsonl:2: corrupt"):
        RunStore.open(tmp_path / "run").trials()


def test_second_process_is_refused_while_the_first_holds_the_run(tmp_path):
    store = make(tmp_path)
    with pytest.raises(RunError, match="in use by another autocomp process"):
        RunStore.open(tmp_path / "run")
    store.close()
    RunStore.open(tmp_path / "run").close()


def test_create_refuses_an_existing_run(tmp_path):
    make(tmp_path).close()
    with pytest.raises(RunError, match="already holds a run"):
        make(tmp_path)


def test_checkpoint_round_trip(tmp_path):
    store = make(tmp_path)
    store.save_checkpoint({"optimizer": {"rng": 2**100}, "pending": [], "next_id": 3})
    assert store.load_checkpoint()["optimizer"]["rng"] == 2**100
    store.close()
