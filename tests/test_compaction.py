"""Compaction streamed from the sources: the same tables as a merge in memory, without holding them.

Budget: a few seconds; no Ray, no training.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sensitivity import compaction, results, storage
from sensitivity.compaction import plan_trials
from sensitivity.tables import curve_givers, newest
from sensitivity.results import CURVES, PARTS, TRIALS, ResultsStore, load
from sensitivity.tables import merge_curves, merge_trials


def rows(ids, **columns):
    return [{"trial_id": t, "status": "ok", "min_test_loss": 1.0, **columns} for t in ids]


def curves(ids, points=2, **columns):
    return [{"trial_id": t, "epoch": e, "test_loss": 1.0 / e, **columns} for t in ids for e in range(1, points + 1)]


def _part(path, seq, kind, frame):
    (path / PARTS).mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path / PARTS / f"{seq:08d}-feedbeef.{kind}.parquet")


def _sources(path, kind):
    """Every file of a kind, oldest first, read whole (the in-memory merge's input)."""
    files = ([path / (TRIALS if kind == "trials" else CURVES)] if (path / TRIALS).exists() else [])
    files += sorted((path / PARTS).glob(f"*.{kind}.parquet"))
    return [pq.read_table(f).replace_schema_metadata(None) for f in files]


def _frame(table):
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    columns = sorted(frame.columns)
    return frame[columns].sort_values(columns[:1] + [c for c in ("epoch",) if c in columns]).reset_index(drop=True)


@pytest.mark.parametrize("ids, kept", [
    (["a", "b", "c"], [True, True, True]),
    (["a", "b", "a", "c", "b"], [False, False, True, True, True]),
    (["x", "x", "x"], [False, False, True]),
    ([], []),
])
def test_newest_keeps_the_last_row_of_each_id(ids, kept):
    assert newest(pa.array(ids, pa.string())).tolist() == kept


def test_plan_keeps_newest_rows_and_each_curve_from_the_newest_source_that_has_it():
    keep, done = plan_trials([pa.array(["a", "b"]), pa.array(["b", "c"]), pa.array(["d"])], exclude=["c"])
    assert [None if k is None else k.tolist() for k in keep] == [[True, False], [True, False], None]
    assert sorted(done.to_pylist()) == ["a", "b", "d"]
    # curves: "b" in both sources (the second gives it), "x" has no row (a crash mid-flush), "c" excluded
    given = curve_givers([pa.array(["a", "b", "c"]), pa.array(["b", "x"])], done)  # (each source's ids once)
    assert given[0].to_pylist() == ["a"] and given[1].to_pylist() == ["b"]
    assert curve_givers([pa.array(["a", "b"])], done) == [None]  # every curve of the source stays: no filter


def test_streamed_compaction_equals_the_merge_in_memory_across_types_and_missing_columns(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(rows("ab", beta=1), curves("ab", lr=1))  # ints here,
    store.append(rows("cd", beta=0.5, note="x"), curves("cd", lr=0.5))  # floats and a new column there
    store.append(rows("e", beta=None), curves("e"))  # a column all null, another absent
    store.compact()
    _part(tmp_path, 9, "trials", pd.DataFrame(rows("a", beta=2.5, extra=3)))  # "a" again, newer
    _part(tmp_path, 9, "curves", pd.DataFrame(curves("a", 3)))
    _part(tmp_path, 10, "curves", pd.DataFrame(curves("z")))  # curves of a trial never done
    want_trials = merge_trials(_sources(tmp_path, "trials"))
    want_curves = merge_curves(_sources(tmp_path, "curves"), want_trials.column("trial_id").combine_chunks().cast(pa.string()))
    ResultsStore(tmp_path).compact()
    got_trials, got_curves = pq.read_table(tmp_path / TRIALS), pq.read_table(tmp_path / CURVES)
    pd.testing.assert_frame_equal(_frame(got_trials), _frame(want_trials))
    pd.testing.assert_frame_equal(_frame(got_curves), _frame(want_curves))
    assert got_trials.schema.field("beta").type == pa.float64()
    assert pd.read_parquet(tmp_path / TRIALS).set_index("trial_id").loc["a", "beta"] == 2.5
    assert (got_curves.column("trial_id").to_pylist().count("a"), "z" in got_curves.column("trial_id").to_pylist()) \
        == (3, False)


def test_a_column_of_numbers_in_one_part_and_text_in_another_becomes_text(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(rows("ab", seed=1), curves("ab"))
    store.append(rows("c", seed="one"), curves("c"))  # a number in one part, text in another
    store.compact()
    trials, curve_rows = load(tmp_path)
    assert dict(zip(trials["trial_id"], trials["seed"])) == {"a": "1", "b": "1", "c": "one"} and len(curve_rows) == 6
    assert list(tmp_path.joinpath(PARTS).iterdir()) == []


def test_compaction_reads_no_table_whole_and_writes_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(compaction, "BATCH", 7)  # a million-row table, in miniature
    monkeypatch.setattr(storage, "ROW_GROUP", 10)
    store = ResultsStore(tmp_path)
    for k in range(6):
        ids = [f"t{k}-{j}" for j in range(5)]
        store.append(rows(ids), curves(ids, 3))
    store.compact()
    store.append(rows(["t0-0", "new"]), curves(["new"]))  # "t0-0" is stored already: not appended again

    def whole(*args, **kwargs):
        raise AssertionError("a whole table read")

    batches, real = [], pq.ParquetFile.iter_batches

    def iter_batches(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(results, "read_parquet", whole)
    monkeypatch.setattr(pq, "read_table", whole)
    monkeypatch.setattr(pq.ParquetFile, "read", whole)
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", whole)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", iter_batches)
    store.compact()
    assert batches and max(batches) <= 7  # every source read 7 rows at a time
    assert sum(batches) >= 2 * 36  # its ids, then its rows (36 stored trials, 5 of them a second time)
    monkeypatch.undo()
    meta = pq.read_metadata(tmp_path / TRIALS)
    assert meta.num_rows == 31 and [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10, 10, 10, 1]
    assert pq.read_metadata(tmp_path / CURVES).num_rows == 92
    assert store.count() == 31 and load(tmp_path)[0]["trial_id"].is_unique


def test_a_corrupt_table_stops_a_compaction_naming_it(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(rows("a"), curves("a"))
    store.compact()
    (tmp_path / CURVES).write_bytes(b"not parquet")
    store.append(rows("b"), curves("b"))
    with pytest.raises(storage.CorruptTableError, match="curves.parquet is not a readable parquet table"):
        store.compact()
    assert sorted(ResultsStore(tmp_path).done_ids()) == ["a", "b"]  # nothing lost: the parts stay


def test_numbers_that_become_text_read_as_one_part_would_write_them(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(rows("a", flag=True, m=1.0), [])
    store.append(rows("b", flag="2", m="x"), [])  # text in the same columns: they become text
    store.compact()
    stored = pd.read_parquet(tmp_path / TRIALS).set_index("trial_id")
    assert stored.loc["a", "flag"] == "True" and stored.loc["a", "m"] == "1.0"  # str(), as within one part
