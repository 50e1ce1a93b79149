"""The tuning cache: round trip, concurrent writers, damaged files, FLASHSEQ_TUNING=off."""
import json
import multiprocessing
import warnings

import pytest

from autotune import cache
from flashseq import tuning

KERNEL = "test.kernel"


def _entry(i, config=None):
    return {"kernel": KERNEL, "bucket": {"cell": "lstm", "batch": i, "heads": 1},
            "dtype": "float32", "config": config or {"value": i}}


def _identity():
    return tuning.device_identity("cpu")


def test_round_trip(tune_cache):
    path = cache.record(_identity(), [_entry(1), _entry(2)])
    assert path.parent == tune_cache and path.exists()
    assert tuning.lookup(KERNEL, "cpu", {"cell": "lstm", "batch": 2, "heads": 1}, "float32") == \
        {"value": 2}
    assert tuning.lookup(KERNEL, "cpu", {"cell": "lstm", "batch": 3, "heads": 1}, "float32") is None
    assert tuning.lookup(KERNEL, "cpu", {"cell": "lstm", "batch": 2, "heads": 1}, "float64") is None
    # a later record replaces the entry of the same key and keeps the others
    cache.record(_identity(), [_entry(2, {"value": 20})])
    data = json.loads(path.read_text())
    assert data["layout"] == tuning.LAYOUT and data["device"] == _identity()
    assert sorted(e["config"]["value"] for e in data["entries"]) == [1, 20]


def test_lookups_after_the_first_read_do_not_touch_the_disk(tune_cache):
    path = cache.record(_identity(), [_entry(1)])
    key = {"cell": "lstm", "batch": 1, "heads": 1}
    assert tuning.lookup(KERNEL, "cpu", key, "float32") == {"value": 1}
    path.unlink()
    assert tuning.lookup(KERNEL, "cpu", key, "float32") == {"value": 1}  # held in memory
    tuning.reload()
    assert tuning.lookup(KERNEL, "cpu", key, "float32") is None


def test_tuning_off_ignores_the_cache(tune_cache, monkeypatch):
    cache.record(_identity(), [_entry(1)])
    key = {"cell": "lstm", "batch": 1, "heads": 1}
    for value in ("off", "0", "OFF", "false"):
        monkeypatch.setenv(tuning.ENV, value)
        assert tuning.lookup(KERNEL, "cpu", key, "float32") is None
    monkeypatch.setenv(tuning.ENV, "on")
    assert tuning.lookup(KERNEL, "cpu", key, "float32") == {"value": 1}


def test_truncated_file_is_ignored_with_one_warning_and_rebuilt(tune_cache):
    path = cache.record(_identity(), [_entry(1)])
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # cut short, as by a full disk
    tuning.reload()
    key = {"cell": "lstm", "batch": 1, "heads": 1}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert tuning.lookup(KERNEL, "cpu", key, "float32") is None
        assert tuning.lookup(KERNEL, "cpu", key, "float32") is None
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "truncated or corrupt" in messages[0] and str(path) in messages[0]
    with pytest.warns(RuntimeWarning, match="rebuilding the tuning cache"):
        cache.record(_identity(), [_entry(2)])
    data = json.loads(path.read_text())  # a whole, valid file again, with the new entry only
    assert [e["config"] for e in data["entries"]] == [{"value": 2}]
    assert tuning.lookup(KERNEL, "cpu", {"cell": "lstm", "batch": 2, "heads": 1}, "float32") == \
        {"value": 2}


@pytest.mark.parametrize("damage", ["foreign device", "other layout", "not an object",
                                    "malformed entry"])
def test_foreign_or_stale_file_is_ignored(tune_cache, damage):
    path = cache.record(_identity(), [_entry(1)])
    data = json.loads(path.read_text())
    if damage == "foreign device":
        data["device"] = {**data["device"], "torch": "0.0.1"}
    elif damage == "other layout":
        data["layout"] = tuning.LAYOUT + 1
    elif damage == "not an object":
        data = [data]
    else:
        data["entries"].append({"kernel": KERNEL, "bucket": "not a dict"})
    path.write_text(json.dumps(data))
    tuning.reload()
    with pytest.warns(RuntimeWarning, match="tuning cache"):
        found = tuning.lookup(KERNEL, "cpu", {"cell": "lstm", "batch": 1, "heads": 1}, "float32")
    # a malformed entry costs only itself; a foreign/stale/unparsable file costs everything
    assert found == ({"value": 1} if damage == "malformed entry" else None)


def _writer(folder, identity, worker, rounds):
    for i in range(rounds):
        cache.record(identity, [_entry(1000 * worker + i)], folder)


def test_four_processes_writing_one_cache_never_corrupt_it(tmp_path):
    folder = tmp_path / "tune"
    identity = _identity()
    rounds = 15
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(folder, identity, w, rounds)) for w in range(4)]
    for p in procs:
        p.start()
    # read while they write: every read sees a whole file (atomic replace)
    path = tuning.cache_file(identity, folder)
    seen = 0
    while any(p.is_alive() for p in procs):
        if path.exists():
            entries, problem = tuning.parse_file(path, identity)
            assert problem is None
            seen = max(seen, len(entries))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries, problem = tuning.parse_file(path, identity)
    assert problem is None
    got = sorted(e["bucket"]["batch"] for e in entries)
    assert got == sorted(1000 * w + i for w in range(4) for i in range(rounds))  # nothing lost
    assert not list(folder.glob("*.tmp"))  # no temporary file left behind
