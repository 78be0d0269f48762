"""The purchase path's statements, run straight on psycopg's cursor.

A purchase runs the same few statements every time, and on PostgreSQL SQLAlchemy's
execution layer (the statement's cache key, an execution context, a cursor result and its
row processing) cost more than psycopg itself: ~240 µs of client CPU for the program read
against ~75 µs on the bare cursor (bench/README.md). Here a Core SELECT is compiled once,
and once per combination of IN-list sizes; each run only fills in the parameters and passes
them, and the rows, through the column types' processors, so the rows equal what
`connection.execute` returns. A driver error goes to the Connection's own error handling,
so it is wrapped (a retryable conflict stays a DBAPIError with its SQLSTATE) and a lost
connection is invalidated, exactly as for any other statement; listeners of
`before_cursor_execute` see the statement. On other databases (SQLite, in process, where
this overhead is small) the statements go through `connection.execute`.
"""

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Select
from sqlalchemy.engine import Connection, Dialect


class DriverQuery:
    """A SELECT built once (module level) and run on the driver's cursor on PostgreSQL."""

    def __init__(self, statement: Select) -> None:
        self.statement = statement
        self.row_type = namedtuple("Row", list(statement.selected_columns.keys()))  # noqa: PYI024
        self._dialect: Dialect | None = None
        self._compiled = None
        self._expanding: tuple[str, ...] = ()
        self._row_processors: list[tuple[int, Callable]] = []
        self._shapes: dict[tuple[int, ...], _Shape] = {}

    def rows(self, connection: Connection, params: Mapping[str, Any] | None = None) -> list:
        """Run the query; return its rows as named tuples (attribute access, `_asdict()`)."""
        params = params or {}
        if connection.dialect.name != "postgresql":
            return [self.row_type(*row) for row in connection.execute(self.statement, params)]
        if self._dialect is not connection.dialect:
            self._compile(connection.dialect)
        sizes = tuple(len(params[name]) for name in self._expanding)
        shape = self._shapes.get(sizes) or self._new_shape(sizes, params)
        values = shape.parameters(params)
        rows = run_on_driver(connection, shape.sql, values, fetch=True)
        row_type, processors = self.row_type, self._row_processors
        if not processors:
            return [row_type._make(row) for row in rows]
        result = []
        for row in rows:
            row = list(row)
            for index, process in processors:
                row[index] = process(row[index])
            result.append(row_type._make(row))
        return result

    def _compile(self, dialect: Dialect) -> None:
        compiled = self.statement.compile(dialect=dialect)
        if compiled.escaped_bind_names:
            raise ValueError("DriverQuery needs bind names that psycopg takes as they are")
        self._compiled = compiled
        self._expanding = tuple(sorted(name for bind, name in compiled.bind_names.items() if bind.expanding))
        self._row_processors = [
            (index, processor) for index, column in enumerate(self.statement.selected_columns)
            if (processor := column.type.result_processor(dialect, None)) is not None]
        self._shapes = {}
        self._dialect = dialect

    def _new_shape(self, sizes: tuple[int, ...], params: Mapping[str, Any]) -> "_Shape":
        state = self._compiled.construct_expanded_state(dict(params))
        shape = _Shape(state.statement, state.parameters, state.processors, state.parameter_expansion,
                       given=set(params))
        self._shapes[sizes] = shape
        return shape


class _Shape:
    """The SQL text of a query for one set of IN-list sizes, and how to fill its parameters."""

    __slots__ = ("defaults", "expansion", "processors", "singles", "sql")

    def __init__(self, sql: str, parameters: Mapping, processors: Mapping[str, Callable],
                 expansion: Mapping[str, list[str]], given: set[str]) -> None:
        self.sql = sql
        self.expansion = [(name, names) for name, names in expansion.items()]
        expanded = {name for names in expansion.values() for name in names}
        self.singles = [name for name in parameters if name in given and name not in expansion]
        # Values the statement carries itself (literals of the query, like a status).
        self.defaults = {name: value for name, value in parameters.items()
                         if name not in given and name not in expanded}
        self.processors = list(processors.items())
        for name, process in self.processors:
            if name in self.defaults:
                self.defaults[name] = process(self.defaults[name])
        self.processors = [(name, process) for name, process in self.processors if name not in self.defaults]

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self.defaults)
        for name in self.singles:
            values[name] = params[name]
        for name, names in self.expansion:
            values.update(zip(names, params[name], strict=True))
        for name, process in self.processors:
            values[name] = process(values[name])
        return values


def run_on_driver(connection: Connection, sql: str, parameters: Sequence | Mapping | None = None, *,
                  fetch: bool = False) -> list[tuple]:
    """Run PostgreSQL `sql` (psycopg's %s / %(name)s placeholders) on the connection's cursor.

    Returns the rows as plain tuples when `fetch`. The Connection's transaction has begun
    (psycopg opens it with the first statement), so the statement is part of it.
    """
    dbapi_connection = connection.connection.driver_connection
    cursor = dbapi_connection.cursor()
    try:
        listeners = connection.dispatch.before_cursor_execute
        if listeners:
            listeners(connection, cursor, sql, parameters, None, False)
        cursor.execute(sql, parameters)
        return cursor.fetchall() if fetch else []
    except psycopg.Error as err:
        connection._handle_dbapi_exception(err, sql, parameters, cursor, None)
    finally:
        cursor.close()
