"""The purchase path's statements, run straight on psycopg's cursor.

A purchase runs the same few statements every time, and on PostgreSQL SQLAlchemy's
execution layer (the statement's cache key, an execution context, a cursor result and its
row processing) cost more than psycopg itself: ~240 µs of client CPU for the program read
against ~75 µs on the bare cursor (bench/README.md). Here a Core SELECT is compiled once
per combination of short IN-list sizes, and once with long lists as arrays; each run only
fills in the parameters and passes them, and the rows, through the column types'
processors, so the rows equal what `connection.execute` returns. A driver error goes to the
Connection's own error handling, so it is wrapped (a retryable conflict stays a DBAPIError
with its SQLSTATE) and a lost connection is invalidated, exactly as for any other
statement; listeners of `before_cursor_execute` see the statement. On other databases
(SQLite, in process, where this overhead is small) the statements go through
`connection.execute`.
"""

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ARRAY, Select, String, Text, Unicode, UnicodeText, any_, bindparam
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import BinaryExpression, BindParameter
from sqlalchemy.sql.sqltypes import TupleType

# Shapes (SQL text for given IN-list sizes) kept per query: small lists (single purchases and
# their groups) repeat. Longer lists (a batch's) go as arrays (_in_lists_as_arrays).
_SHAPES_KEPT = 256
_LARGEST_LISTED = 64  # total items of a query's IN lists written out item by item


def on_driver(connection: Connection) -> bool:
    """Whether statements on this connection may bypass SQLAlchemy's execution layer."""
    return connection.dialect.driver == "psycopg"


class _Statement(NamedTuple):
    """One run of a DriverQuery: its SQL text and driver parameters."""

    state: "_Compiled"
    sql: str
    parameters: dict
    prepare: bool | None  # psycopg's: None prepares a statement run often, False never
    describe: bool  # the rows' description is needed (the query's first run)


class _Form(NamedTuple):
    """A query compiled one way, with the processors of its parameters that are not IN lists
    (the expanded state of a shape brings those of a short list's items only)."""

    compiled: Any
    bind_processors: dict


class _Compiled(NamedTuple):
    """A query compiled for one dialect; replaced whole, never changed, so threads share it."""

    dialect: Dialect
    listed: _Form  # IN lists written out item by item, for short lists
    arrays: _Form  # IN lists as arrays, for long lists
    expanding: tuple[str, ...]
    shapes: dict
    processors: list  # [(column index, processor)], from the first result's column types


class DriverQuery:
    """A SELECT built once (module level) and run on the driver's cursor on PostgreSQL.

    Supports plain and expanding (IN-list) bind parameters given at each run; a statement
    with a literal IN list, a NOT IN list, a callable bind value or a tuple IN is refused
    when compiled.
    """

    def __init__(self, statement: Select) -> None:
        self.statement = statement
        self.row_type = namedtuple("Row", list(statement.selected_columns.keys()))  # noqa: PYI024
        self._state: _Compiled | None = None

    def rows(self, connection: Connection, params: Mapping[str, Any] | None = None) -> list:
        """Run the query; return its rows as named tuples (attribute access, `_asdict()`)."""
        params = params or {}
        if not on_driver(connection):
            return [self.row_type(*row) for row in connection.execute(self.statement, params)]
        statement = self._statement(connection, params)
        rows, description = _run(connection, statement.sql, statement.parameters, fetch=True,
                                 describe=statement.describe, prepare=statement.prepare)
        return self._rows(statement, rows, description)

    def _statement(self, connection: Connection, params: Mapping[str, Any]) -> "_Statement":
        """The SQL text and driver parameters of one run (psycopg only)."""
        state = self._state
        if state is None or state.dialect is not connection.dialect:
            state = self._state = self._compile(connection.dialect)
        sizes = tuple(len(params[name]) for name in state.expanding)
        listed = sum(sizes) <= _LARGEST_LISTED
        key = (sizes if listed else None, frozenset(params))
        shape = state.shapes.get(key)
        if shape is None:
            form = state.listed if listed else state.arrays
            expanded = form.compiled.construct_expanded_state(dict(params))
            shape = _Shape(expanded.statement, expanded.parameters, {**form.bind_processors, **expanded.processors},
                           expanded.parameter_expansion, given=set(params))
            if len(state.shapes) >= _SHAPES_KEPT:
                state.shapes.clear()  # the sizes in use come back at once
            state.shapes[key] = shape
        try:
            parameters = shape.parameters(params)
        except Exception as err:  # a type refusing a value (a naive timestamp): SQLAlchemy's StatementError
            connection._handle_dbapi_exception(err, shape.sql, params, None, None)
        # A long list is planned for its values every time (prepare=False): a prepared
        # statement's generic plan assumes an array of about ten, and for a batch's thousand
        # ids it scanned whole tables (PostgreSQL's CPU per batch purchase 0.17 → 0.36 ms).
        return _Statement(state, shape.sql, parameters, None if listed else False, state.processors is None)

    def _rows(self, statement: "_Statement", rows: list[tuple], description) -> list:
        """The rows of a run as named tuples, through the columns' result processors."""
        state, processors = statement.state, statement.state.processors
        if processors is None:
            processors = self._result_processors(state.dialect, description)
            if self._state is state:
                self._state = state._replace(processors=processors)
        row_type = self.row_type
        if not processors:
            return [row_type._make(row) for row in rows]
        result = []
        for row in rows:
            row = list(row)
            for index, process in processors:
                row[index] = process(row[index])
            result.append(row_type._make(row))
        return result

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = self.statement.compile(dialect=dialect)
        if compiled.escaped_bind_names:
            raise ValueError("DriverQuery needs bind names that psycopg takes as they are")
        for bind in compiled.bind_names:
            if bind.callable is not None:
                raise ValueError(f"DriverQuery takes no callable bind value ({bind.key})")
            if bind.expanding and (bind.value is not None or isinstance(bind.type, TupleType)):
                raise ValueError(f"DriverQuery takes IN lists as parameters, of single values ({bind.key})")
        expanding = tuple(sorted(name for bind, name in compiled.bind_names.items() if bind.expanding))
        arrays = _in_lists_as_arrays(self.statement).compile(dialect=dialect) if expanding else compiled
        if any(bind.expanding for bind in arrays.bind_names):
            raise ValueError("DriverQuery takes `column IN (:list)` lists only (not NOT IN, nor a coerced list)")
        return _Compiled(dialect, _Form(compiled, _bind_processors(compiled, dialect)),
                         _Form(arrays, _bind_processors(arrays, dialect)), expanding, {}, None)

    def _result_processors(self, dialect: Dialect, description) -> list[tuple[int, Callable]]:
        # As SQLAlchemy's own result does: the column type's implementation for this dialect,
        # told the type the driver reported.
        return [(index, processor) for index, (column, described) in
                enumerate(zip(self.statement.selected_columns, description, strict=True))
                if (processor := column.type.dialect_impl(dialect).result_processor(dialect, described.type_code))
                is not None]


def _bind_processors(compiled, dialect: Dialect) -> dict[str, Callable]:
    """The processors of a compiled statement's parameters that are not IN lists, as
    SQLAlchemy's execution applies them (a UTC timestamp converted, an array made a list)."""
    return {name: process for bind, name in compiled.bind_names.items()
            if not bind.expanding and (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None}


def _in_lists_as_arrays(statement: Select) -> Select:
    """The statement with each `column IN (:list)` written `column = ANY(:list)`, the list
    passed as one array parameter.

    SQLAlchemy writes an IN list out as one placeholder per item: for a batch's thousand ids
    a new SQL text each time, filled in (~5 ms) and parsed by psycopg (~10 ms a query) on
    every call. An array is one parameter of one text. Short lists stay IN lists: their
    prepared plans are simple index lookups, where a prepared plan over an array (of about
    ten, PostgreSQL assumes) sorts and merges, and made single purchases' PostgreSQL CPU
    0.8 → 1.1 ms. It means what IN means (an empty array matches nothing). Strings go as
    VARCHAR[] without the column's length: a cast to VARCHAR(26)[] would cut a longer id to
    one that exists.
    """
    def replace(element):
        if (isinstance(element, BinaryExpression) and element.operator is operators.in_op
                and isinstance(element.right, BindParameter) and element.right.expanding):
            item_type = element.right.type
            if type(item_type) in (String, Text, Unicode, UnicodeText):
                item_type = String()
            elif isinstance(item_type, String):  # CHAR(n)[], an enum's or CITEXT's array: not cast here
                raise ValueError(f"DriverQuery takes long IN lists of plain strings only ({item_type!r})")
            return element.left == any_(bindparam(element.right.key, type_=ARRAY(item_type)))
        return None

    return visitors.replacement_traverse(statement, {}, replace)


class _Shape:
    """The SQL text of a query for one set of short IN-list sizes (or for long lists, as arrays)
    and how to fill its parameters."""

    __slots__ = ("defaults", "expansion", "processors", "singles", "sql")

    def __init__(self, sql: str, parameters: Mapping, processors: Mapping[str, Callable],
                 expansion: Mapping[str, list[str]], given: set[str]) -> None:
        self.sql = sql
        self.expansion = list(expansion.items())
        expanded = {name for names in expansion.values() for name in names}
        self.singles = [name for name in parameters if name in given and name not in expansion]
        # Values the statement carries itself (literals of the query, like a status).
        defaults = {name: value for name, value in parameters.items() if name not in given and name not in expanded}
        for name, process in processors.items():
            if name in defaults:
                defaults[name] = process(defaults[name])
        self.defaults = defaults
        self.processors = [(name, process) for name, process in processors.items() if name not in defaults]

    def parameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self.defaults)
        for name in self.singles:
            values[name] = params[name]
        for name, names in self.expansion:
            values.update(zip(names, params[name], strict=True))
        for name, process in self.processors:
            values[name] = process(values[name])
        return values


_PIPELINED_FROM = 3  # reads: see read_together


class Read(NamedTuple):
    """A query to run, with its parameters and what its rows mean (for `read_together`)."""

    query: DriverQuery | None  # None: nothing to read, the result is `meaning([])`
    params: Mapping[str, Any]
    meaning: Callable[[list], Any]

    @classmethod
    def known(cls, result: Any) -> "Read":
        """A read with nothing to ask the database: its result is `result`."""
        return cls(None, {}, lambda _rows: result)

    def run(self, connection: Connection) -> Any:
        """Run this read alone; return what its rows mean."""
        return read_together(connection, self)[0]


def read_together(connection: Connection, *reads: Read) -> list:
    """Run reads that do not depend on one another; return what each one's rows mean, in order.

    On psycopg they travel together in pipeline mode, where one by one each is a round trip
    the thread waits through: on a busy node ~0.2-0.3 ms of waiting for the other side to be
    scheduled, for a read of ~0.05 ms of client CPU (bench/README.md). psycopg ends a
    pipeline with a Sync it waits for, and its pipeline machinery costs ~20-45 µs of CPU:
    it pays from three reads on (two round trips instead of three). Fewer run one by one,
    as all do elsewhere than on psycopg. An error is raised as `DriverQuery.rows` raises it;
    the reads after it are not run.
    """
    asked = [index for index, read in enumerate(reads) if read.query is not None]
    rows: list[list] = [[] for _ in reads]
    if len(asked) < _PIPELINED_FROM or not on_driver(connection):
        for index in asked:
            rows[index] = reads[index].query.rows(connection, reads[index].params)
    else:
        statements = [reads[index].query._statement(connection, reads[index].params) for index in asked]
        results = _run_pipelined(connection, statements)
        for index, statement, (found, description) in zip(asked, statements, results, strict=True):
            rows[index] = reads[index].query._rows(statement, found, description)
    return [read.meaning(found) for read, found in zip(reads, rows, strict=True)]


def _run_pipelined(connection: Connection, statements: Sequence[_Statement]) -> list[tuple[list[tuple], Any]]:
    """Run the statements in one pipeline; return each one's rows and description (see _run)."""
    if not connection.in_transaction():
        connection.begin()
    cursors = _cursors(connection, len(statements))[:len(statements)]
    listeners = connection.dispatch.before_cursor_execute
    statement, cursor = statements[0], cursors[0]
    try:
        with connection.connection.driver_connection.pipeline():
            for statement, cursor in zip(statements, cursors, strict=True):
                if listeners:
                    listeners(connection, cursor, statement.sql, statement.parameters, None, False)
                cursor.execute(statement.sql, statement.parameters, prepare=statement.prepare)
            results = []
            # Results come back in order: the first statement that failed raises here.
            for statement, cursor in zip(statements, cursors, strict=True):
                results.append((cursor.fetchall(), cursor.description if statement.describe else None))
        return results
    except BaseException as err:
        connection._handle_dbapi_exception(err, statement.sql, statement.parameters, cursor, None)


def run_on_driver(connection: Connection, sql: str, parameters: Sequence | Mapping | None = None, *,
                  fetch: bool = False) -> list[tuple]:
    """Run PostgreSQL `sql` (psycopg's %s / %(name)s placeholders) on the connection's cursor.

    Returns the rows as plain tuples when `fetch`. The statement runs in the Connection's
    transaction, begun here if it was not yet (as SQLAlchemy begins one on a first statement).
    """
    return _run(connection, sql, parameters, fetch=fetch)[0]


def _run(connection: Connection, sql: str, parameters, *, fetch: bool, describe: bool = False,
         prepare: bool | None = None) -> tuple[list[tuple], Any]:
    """Run the statement; return its rows and, with `describe`, the cursor's description
    (psycopg builds it anew on each access: only the first run of a query asks). `prepare`
    is psycopg's: None prepares a statement once it has run a few times, False never."""
    if not connection.in_transaction():
        connection.begin()
    cursor = _cursor(connection)
    try:
        listeners = connection.dispatch.before_cursor_execute
        if listeners:
            listeners(connection, cursor, sql, parameters, None, False)
        cursor.execute(sql, parameters, prepare=prepare)
        return (cursor.fetchall() if fetch else []), (cursor.description if describe else None)
    except BaseException as err:
        # Wraps a driver error as SQLAlchemy's own (with its SQLSTATE), invalidates a lost
        # connection, and re-raises anything else as it is.
        connection._handle_dbapi_exception(err, sql, parameters, cursor, None)


_CURSORS = "loyalty_driver_cursors"


def _cursor(connection: Connection):
    """The driver connection's own cursor, kept with it in the pool and used for every statement.

    A new psycopg cursor looks up the dumpers of the parameters' types and the loaders of the
    columns' types again on its first statement: ~20 µs a statement, which a cursor that ran
    the same statements before skips. A pooled connection serves one thread at a time, and
    its cursor is used up by the time a statement returns (its rows fetched); it holds that
    statement's result until the next one (a write unit's last statement returns one row).
    """
    return _cursors(connection, 1)[0]


def _cursors(connection: Connection, count: int) -> list:
    """At least `count` cursors of the driver connection, kept with it as `_cursor`'s is
    (statements run in one pipeline each need their own, to hold their results)."""
    fairy = connection.connection
    cursors = fairy.info.get(_CURSORS)
    # A reconnected pool record has a new driver connection: its old cursors go with the old one.
    if not cursors or cursors[0].closed or cursors[0].connection is not fairy.driver_connection:
        cursors = fairy.info[_CURSORS] = []
    while len(cursors) < count:
        cursors.append(fairy.driver_connection.cursor())
    return cursors
