"""Rows and their Arrow tables: a flush's rows as one table, sources merged on read, rows checked against records.

The first step of the results flow (`sensitivity.results` stores what these build): rows (dicts)
become an Arrow table with the same cleaning a row gets (`clean_row`: no NaN loss, nested values as
JSON text); the sources a read finds (a compacted table, then parts) merge into one table per kind,
each trial once; and stored rows are compared with their records' identity columns (`respelt`), to
rewrite the ones an older version spelt another way.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sensitivity.identity import json_ready

LOSS_COLUMNS = ("min_train_loss", "min_test_loss", "final_train_loss", "final_test_loss")

__all__ = ["LOSS_COLUMNS", "clean_row", "is_missing", "rows_table", "empty", "common_schema", "conform", "concat",
           "id_column", "newest", "curve_givers", "merge_trials", "merge_curves", "respelt"]


# ---------------------------------------------------------------------------
# rows -> a table


def clean_row(row: Mapping[str, Any]) -> dict:
    """A row safe for parquet: no NaN losses (NaN -> +inf), nested values as JSON text."""
    out = {}
    for key, value in row.items():
        if key in LOSS_COLUMNS and (value is None or (isinstance(value, float) and math.isnan(value))):
            value = math.inf
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(json_ready(value), sort_keys=True)
        out[key] = value
    return out


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _column(key: str, values: list) -> pa.Array:
    """One column of rows as clean_row would write it, built without a row-by-row pass where possible."""
    if key in LOSS_COLUMNS:
        values = [math.inf if is_missing(v) else v for v in values]
    try:
        array = pa.array(values, from_pandas=True)
        if not pa.types.is_nested(array.type):
            return array
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    values = [json.dumps(json_ready(v), sort_keys=True) if isinstance(v, (dict, list, tuple)) else v for v in values]
    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # numbers and text mixed in one column: keep them as text
        return pa.array([None if is_missing(v) else str(v) for v in values], pa.string())


def rows_table(rows: list[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts) as an Arrow table, cleaned like `clean_row`; a flush's cost is linear in its rows."""
    if not rows:
        return empty()
    try:  # Arrow infers the columns of a list of dicts in one native pass
        table = pa.Table.from_struct_array(pa.array(rows))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        table = None  # a column mixes types: build it column by column
    if table is None:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        return pa.table({k: _column(k, [r.get(k) for r in rows]) for k in keys})
    for index, name in enumerate(table.column_names):
        if pa.types.is_nested(table.schema.field(index).type) or pa.types.is_null(table.schema.field(index).type) \
                and name in LOSS_COLUMNS:
            table = table.set_column(index, name, _column(name, [r.get(name) for r in rows]))
        elif name in LOSS_COLUMNS:
            column = table.column(index)
            if pa.types.is_floating(column.type):
                column = pc.if_else(pc.is_nan(column), math.inf, column)
            table = table.set_column(index, name, pc.fill_null(column, math.inf))
    return table


def empty() -> pa.Table:
    return pa.table({"trial_id": pa.array([], pa.string())})


# ---------------------------------------------------------------------------
# sources -> one table


def common_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The schema tables of these schemas merge into: types promoted (int with float: float; a column
    a table lacks: null there), and a column whose types have no common one (numbers in one part,
    text in another) as text, as `rows_table` keeps such a column within one part."""
    schemas = [s.remove_metadata() for s in schemas]
    if not schemas:
        return empty().schema
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        pass
    fields: dict[str, list[pa.DataType]] = {}
    for schema in schemas:
        for field in schema:
            fields.setdefault(field.name, []).append(field.type)
    out = []
    for name, types in fields.items():
        try:
            out.append(pa.unify_schemas([pa.schema([(name, t)]) for t in types], promote_options="permissive")[0])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            out.append(pa.field(name, pa.string()))
    return pa.schema(out)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A table with the schema's columns, in its order and types (a column it lacks: nulls)."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if column.type == field.type:
                columns.append(column)
            elif pa.types.is_string(field.type) and not pa.types.is_null(column.type) \
                    and not pa.types.is_large_string(column.type):
                # numbers as text the way `rows_table` writes them (str(): "1.0", "True"), not Arrow's ("1", "true")
                columns.append(pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.string()))
            else:
                columns.append(column.cast(field.type))
        else:
            columns.append(pa.nulls(len(table), field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def concat(tables: list[pa.Table]) -> pa.Table:
    """Tables one after the other, in their `common_schema`."""
    if not tables:
        return empty()
    schema = common_schema([t.schema for t in tables])
    return pa.concat_tables([conform(t, schema) for t in tables])


def id_column(table: pa.Table) -> pa.Array:
    return table.column("trial_id").combine_chunks() if "trial_id" in table.column_names \
        else pa.array([], pa.string())


def newest(ids: pa.Array) -> np.ndarray:
    """A mask of the last occurrence of each id: a trial's newest row, of sources laid oldest first."""
    n = len(ids)
    unique = pc.unique(ids)
    if len(unique) == n:
        return np.ones(n, bool)
    codes = pc.index_in(ids, value_set=unique).to_numpy(zero_copy_only=False)
    _, first = np.unique(codes[::-1], return_index=True)
    keep = np.zeros(n, bool)
    keep[n - 1 - first] = True
    return keep


def curve_givers(uniques: list[pa.Array], done: pa.Array) -> list[pa.Array | None]:
    """The trials whose curve each source gives, from each source's ids (each once; None: all it has):
    the newest source that has a trial's curve gives it, and only for trials in `done` (curves of a
    crash mid-flush have no row)."""
    every = pa.concat_arrays([u.cast(pa.string()) for u in uniques]) if uniques else pa.array([], pa.string())
    done = done if isinstance(done, (pa.Array, pa.ChunkedArray)) else pa.array(done, pa.string())
    mine = newest(every) & pc.is_in(every, value_set=done).to_numpy(zero_copy_only=False)
    out, at = [], 0
    for unique in uniques:
        part = mine[at:at + len(unique)]
        out.append(None if part.all() else unique.filter(pa.array(part)))
        at += len(unique)
    return out


def merge_trials(sources: list[pa.Table]) -> pa.Table:
    """Trials of all sources (oldest first), each trial_id once with its newest row."""
    table = concat(sources)
    keep = newest(id_column(table))
    return table if keep.all() else table.filter(pa.array(keep))


def merge_curves(sources: list[pa.Table], done: pa.Array) -> pa.Table:
    """Curves of finished trials only, each trial's from the newest source that has it (`curve_givers`)."""
    given = curve_givers([pc.unique(id_column(t)) for t in sources], done)
    kept = [t if g is None else t.filter(pc.is_in(id_column(t), value_set=g))
            for t, g in zip(sources, given) if len(t)]
    return concat(kept)


# ---------------------------------------------------------------------------
# stored rows against their records


def respelt(rows: pd.DataFrame, records: Mapping[str, Any]) -> pd.DataFrame:
    """The rows whose identity columns differ from their record's `columns()` (labels aside)."""
    expected = pd.DataFrame([records[t].columns() for t in rows["trial_id"]], index=rows.index)
    differ = pd.Series(False, index=rows.index)
    for column in expected.columns:
        if column in ("trial_id", "label"):  # labels come from current.json
            continue
        want = expected[column]
        if column not in rows:
            differ |= want.notna()
            continue
        differ |= ~_same_cells(rows[column], want)
    return rows[differ]


def _same_cells(got: pd.Series, want: pd.Series) -> pd.Series:
    """Cell by cell: equal values, or both missing (a text "1" is not the number 1)."""
    missing = got.isna().to_numpy() & want.isna().to_numpy()
    a, b = got.to_numpy(dtype=object), want.to_numpy(dtype=object)
    same = [_same(x, y) for x, y in zip(a, b)]
    return pd.Series(missing | same, index=got.index)


def _same(x: Any, y: Any) -> bool:
    x, y = (v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v for v in (x, y))
    if isinstance(x, bool) or isinstance(y, bool):
        return type(x) is type(y) and x == y
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return x == y
    return type(x) is type(y) and x == y
