"""Writing many rows with one statement whose text does not depend on how many there are.

An executemany costs a round of driver work per row (a batch of 1,000 purchases writes
~10,000 ledger entries), and a multi-row VALUES list is a new statement for every row
count, so it is never prepared. On PostgreSQL the rows travel instead as one JSON array
that the statement expands with jsonb_populate_recordset: one parameter, one round trip,
one prepared plan for any number of rows. SQLite runs in process, where an executemany is
cheap, and keeps it.
"""

import json
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from functools import cache

import orjson
from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection

from .driver import run_on_driver

_QUOTE = postgresql.dialect().identifier_preparer.quote


def _json_default(value):
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def rows_json(rows: Sequence[Mapping]) -> str:
    """Return rows as the JSON array the PostgreSQL statements below expand.

    orjson writes a purchase's rows several times faster than the json module (whose
    encoder calls back into Python for every timestamp), and writes timestamps as
    `isoformat()` does for offsets of whole minutes, the only ones the API takes (orjson
    rounds an offset's seconds). What it refuses (an integer beyond 64 bits in client
    metadata, a lone surrogate) goes through the json module instead.
    """
    try:
        return orjson.dumps(rows, default=_json_default).decode()
    except orjson.JSONEncodeError:
        return json.dumps(rows, default=_json_default, separators=(",", ":"))


def insert_rows(connection: Connection, table: Table, rows: Sequence[Mapping]) -> None:
    """Insert rows that all have the same keys, in one statement (see the module's docstring).

    Columns a row leaves out get the column's scalar default, as an executemany of
    `insert(table)` would give them.
    """
    writes = Writes()
    writes.insert(table, rows)
    writes.run(connection)


@cache
def _defaults_left_out(table: Table, columns: tuple[str, ...]) -> dict:
    return {column.name: column.default.arg for column in table.columns
            if column.name not in columns and column.default is not None and column.default.is_scalar}


@cache
def _insert(table: Table):
    return insert(table)


class Writes:
    """The set-based writes of a unit of work, collected and then sent together.

    On PostgreSQL they go as one statement, each write a data-modifying WITH query, all
    with their rows as JSON: one round trip and one prepared plan for the lots, ledger
    entries, balances, activity, usage and purchases of a purchase (or of a thousand).
    One statement cannot update a row twice, so a table updated a second time starts the
    next statement. SQLite runs the writes one by one, in order.
    """

    def __init__(self) -> None:
        # (table name, updates it, PostgreSQL SQL with one %s, rows, runs it on SQLite)
        self._steps: list[tuple[str, bool, str, Sequence[Mapping], object]] = []

    def insert(self, table: Table, rows: Sequence[Mapping]) -> None:
        """Insert rows that all have the same keys (missing columns take their scalar default)."""
        if not rows:
            return
        columns = tuple(rows[0])
        missing = _defaults_left_out(table, columns)
        if missing:
            rows = [{**missing, **row} for row in rows]
            columns += tuple(missing)
        self._steps.append((table.name, False, _insert_body(table, columns), rows,
                            lambda connection, rows=rows: connection.execute(_insert(table), list(rows))))

    def update(self, table: Table, statement, postgres_sql: str, rows: Sequence[Mapping]) -> None:
        """Update with `statement` (an executemany on SQLite) or `postgres_sql`, which reads the
        rows from `jsonb_to_recordset(%s::jsonb)` (see `update_from_rows`)."""
        if rows:
            self._steps.append((table.name, True, postgres_sql, rows,
                                lambda connection, rows=rows: connection.execute(statement, list(rows))))

    def run(self, connection: Connection) -> None:
        """Send every write collected, in order; nothing is kept."""
        steps, self._steps = self._steps, []
        if connection.dialect.name != "postgresql":
            for *_, run_elsewhere in steps:
                run_elsewhere(connection)
            return
        statement: list[tuple[str, Sequence[Mapping]]] = []
        updated: set[str] = set()
        for table_name, updates, sql, rows, _ in steps:
            if table_name in updated:
                _run_together(connection, statement)
                statement, updated = [], set()
            statement.append((sql, rows))
            if updates:
                updated.add(table_name)
        _run_together(connection, statement)


def _run_together(connection: Connection, writes: list[tuple[str, Sequence[Mapping]]]) -> None:
    if not writes:
        return
    if len(writes) == 1:
        sql = writes[0][0]
    else:
        sql = "WITH " + ", ".join(f"w{n} AS ({body})" for n, (body, _) in enumerate(writes)) + " SELECT 1"
    run_on_driver(connection, sql, tuple(rows_json(rows) for _, rows in writes))


def update_from_rows(table: str, alias: str, columns: str, assignments: str, keys: Mapping[str, str],
                     condition: str = "") -> str:
    """The PostgreSQL text of an update whose rows come as JSON (for `Writes.update`).

    `columns` declares the JSON rows' fields (`b_member text, ...`), `assignments` sets the
    table's columns from them (as `r.b_...`), `keys` matches table columns to fields, the
    first an index's leading column. PostgreSQL guesses that a JSON array holds 100 rows, so
    for a plain join it scanned the whole table to hash it (a purchase updating one balance
    read all of them); matching the first key against an array built from the rows as well
    makes it look the rows up in the index.
    """
    (first_column, first_field), *_ = keys.items()
    match = " AND ".join(f"{alias}.{column} = r.{field}" for column, field in keys.items())
    return (f"WITH r AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS r({columns})) "
            f"UPDATE {table} AS {alias} SET {assignments} FROM r WHERE {match} "
            f"AND {alias}.{first_column} = ANY(ARRAY(SELECT {first_field} FROM r))"
            + (f" AND ({condition})" if condition else ""))


@cache
def _insert_body(table: Table, columns: tuple[str, ...]) -> str:
    quote = _QUOTE
    names = ", ".join(quote(name) for name in columns)
    return (f"INSERT INTO {quote(table.name)} ({names}) SELECT {names} "
            f"FROM jsonb_populate_recordset(NULL::{quote(table.name)}, %s::jsonb)")
