"""Compile JsonLogic to Python functions (generated source, compiled once), checked statically.

Semantics follow json-logic-js: JavaScript truthiness (except that an empty array is falsy),
loose and strict equality with JavaScript coercions, `and`/`or` returning the deciding value,
arithmetic on numeric strings. What compiled never raises at evaluation time: division by zero
and impossible coercions give null or NaN (which compares false) instead of an exception.
No rule content is ever written into generated source (see "Generated code" below).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Evaluator = Callable[[Any], Any]
Errors = dict[str, list[str]]

NAN = float("nan")

# ---------------------------------------------------------------------------------------------
# Variable schemas: which names a rule may read, checked when the rule is saved.

LEAF = "leaf"
ANY = "any"


class ListOf:
    """Describe an array whose elements follow one schema."""

    __slots__ = ("element",)

    def __init__(self, element: Any) -> None:
        self.element = element


ITEM_FIELDS: dict[str, Any] = {
    "sku": LEAF,
    "category": LEAF,
    "quantity": LEAF,
    "unit_price": LEAF,
    "amount": LEAF,
}
ITEMS = ListOf(ITEM_FIELDS)

FACT_SCHEMA: dict[str, Any] = {
    "purchase": {
        "total": LEAF,
        "currency": LEAF,
        "channel": LEAF,
        "store_id": LEAF,
        "occurred_at": LEAF,
        "items": ITEMS,
        "metadata": ANY,
    },
    "member": {
        "tier": LEAF,
        "enrolled_at": LEAF,
        "lifetime_earned": LEAF,
        "status": LEAF,
        "metadata": ANY,
    },
    "event": {"type": LEAF, "attributes": ANY},
    "referral": {"role": LEAF},
    "now": LEAF,
}
ITEM_FILTER_SCHEMA: dict[str, Any] = {**FACT_SCHEMA, "item": ITEM_FIELDS}


def resolve_schema(schema: Any, parts: tuple[str, ...]) -> Any:
    """Return the schema that `parts` leads to inside `schema`, or None when it names nothing."""
    for part in parts:
        if schema is ANY:
            return ANY
        if isinstance(schema, dict):
            if part not in schema:
                return None
            schema = schema[part]
        elif isinstance(schema, ListOf):
            if part == "length":
                schema = LEAF
            elif part.isdigit():
                schema = schema.element
            else:
                return None
        else:
            return None
    return schema


# ---------------------------------------------------------------------------------------------
# JavaScript value semantics.

_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def truthy(value: Any) -> bool:
    """Return JsonLogic truthiness: JavaScript's, except that an empty array is false."""
    if value is True:
        return True
    if value is False or value is None:
        return False
    cls = value.__class__
    if cls is float:
        return value == value and value != 0.0
    if cls is int or cls is str or cls is list:
        return bool(value)
    return True


def to_number(value: Any) -> int | float:
    """Convert like JavaScript's Number(): null → 0, unparsable → NaN."""
    cls = value.__class__
    if cls is int or cls is float:
        return value
    if cls is bool:
        return int(value)
    if value is None:
        return 0
    if cls is str:
        text = value.strip()
        if not text:
            return 0
        if _NUMBER_RE.fullmatch(text):
            return float(text)
        if text[:2] in ("0x", "0X"):
            try:
                return int(text[2:], 16)
            except ValueError:
                return NAN
        if text in ("Infinity", "+Infinity"):
            return math.inf
        if text == "-Infinity":
            return -math.inf
        return NAN
    if cls is list:
        return to_number(to_string(value))
    if isinstance(value, int | float):
        return value
    return NAN


def to_string(value: Any) -> str:
    """Convert like JavaScript's String()."""
    cls = value.__class__
    if cls is str:
        return value
    if value is None:
        return "null"
    if cls is bool:
        return "true" if value else "false"
    if cls is int:
        return str(value)
    if cls is float:
        if value != value:
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        text = repr(value)
        if "e" in text:
            mantissa, exponent = text.split("e")
            sign = "-" if exponent[0] == "-" else "+"
            text = f"{mantissa}e{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"
        return text
    if cls is list:
        # Array.prototype.join writes null as the empty string.
        return ",".join("" if item is None else to_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def _primitive(value: Any) -> Any:
    if value.__class__ is list or isinstance(value, Mapping):
        return to_string(value)
    return value


_NUMERIC = (int, float)


def loose_equals(a: Any, b: Any) -> bool:
    """Return JavaScript's `a == b`."""
    ca, cb = a.__class__, b.__class__
    if ca is cb:
        if ca is list or ca is dict:
            return a is b
        return a == b
    if a is None or b is None:
        return False
    if ca is bool:
        return loose_equals(int(a), b)
    if cb is bool:
        return loose_equals(a, int(b))
    if ca in _NUMERIC:
        if cb in _NUMERIC:
            return a == b
        if cb is str:
            return a == to_number(b)
    elif ca is str and cb in _NUMERIC:
        return to_number(a) == b
    if ca is list or isinstance(a, Mapping):
        if cb is list or isinstance(b, Mapping):
            return a is b
        return loose_equals(to_string(a), b)
    if cb is list or isinstance(b, Mapping):
        return loose_equals(a, to_string(b))
    return False


def strict_equals(a: Any, b: Any) -> bool:
    """Return JavaScript's `a === b` (true and 1 differ)."""
    ca, cb = a.__class__, b.__class__
    if ca is cb:
        if ca is list or ca is dict:
            return a is b
        return a == b
    return ca in _NUMERIC and cb in _NUMERIC and a == b


def less_than(a: Any, b: Any) -> bool:
    """Return JavaScript's `a < b`."""
    a, b = _primitive(a), _primitive(b)
    if a.__class__ is str and b.__class__ is str:
        return a < b
    return to_number(a) < to_number(b)


def less_equal(a: Any, b: Any) -> bool:
    """Return JavaScript's `a <= b`."""
    a, b = _primitive(a), _primitive(b)
    if a.__class__ is str and b.__class__ is str:
        return a <= b
    return to_number(a) <= to_number(b)


def _divide(a: Any, b: Any) -> Any:
    x, y = to_number(a), to_number(b)
    if y == 0 or y != y:
        return None
    return x / y


def _modulo(a: Any, b: Any) -> Any:
    x, y = to_number(a), to_number(b)
    if y == 0 or y != y or math.isinf(x):
        return None
    if x.__class__ is int and y.__class__ is int:
        # JavaScript's remainder takes the dividend's sign.
        result = abs(x) % abs(y)
        return -result if x < 0 else result
    return math.fmod(x, y)


def _substr(source: Any, start: Any, length: Any = None) -> str:
    text = to_string(source)
    size = len(text)
    begin = to_number(start)
    if begin != begin:
        begin = 0
    elif math.isinf(begin):
        begin = 0 if begin < 0 else size
    else:
        begin = int(begin)
        begin = max(size + begin, 0) if begin < 0 else min(begin, size)
    if length is None:
        return text[begin:]
    count = to_number(length)
    if count != count:
        return ""
    if math.isinf(count):
        return text[begin:] if count > 0 else ""
    count = int(count)
    end = max(size + count, begin) if count < 0 else begin + count
    return text[begin:end]


def _contains(needle: Any, haystack: Any) -> bool:
    if haystack.__class__ is list:
        return any(strict_equals(needle, item) for item in haystack)
    if haystack.__class__ is str:
        return to_string(needle) in haystack
    return False


def _extreme(pick: Callable[..., Any], values: list[Any]) -> Any:
    numbers = [to_number(value) for value in values]
    if any(number != number for number in numbers):
        return NAN
    return pick(numbers)


def _add(values: list[Any]) -> Any:
    total: int | float = 0
    for value in values:
        total += to_number(value)
    return total


def _multiply(values: list[Any]) -> Any:
    product: int | float = 1
    for value in values:
        product *= to_number(value)
    return product


def _subtract(a: Any, b: Any) -> Any:
    return to_number(a) - to_number(b)


def _merge(values: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for value in values:
        if value.__class__ is list:
            merged.extend(value)
        else:
            merged.append(value)
    return merged


def _guard_overflow(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Huge numeric strings can overflow float arithmetic; JavaScript gives Infinity or NaN.
    def guarded(*args: Any) -> Any:
        try:
            return fn(*args)
        except (OverflowError, ValueError):
            return NAN

    return guarded


# ---------------------------------------------------------------------------------------------
# Variable access.


def _step(data: Any, key: str, index: int | None) -> Any:
    if data.__class__ is dict:
        return data.get(key)
    cls = data.__class__
    if cls is list or cls is str:
        if index is not None:
            return data[index] if index < len(data) else None
        if key == "length":
            return len(data)
        return None
    if isinstance(data, Mapping):
        return data.get(key)
    if isinstance(data, list | tuple | str):
        if index is not None:
            return data[index] if index < len(data) else None
        return len(data) if key == "length" else None
    return None


def _index_of(part: str) -> int | None:
    return int(part) if part.isdigit() and str(int(part)) == part else None


def make_getter(parts: tuple[str, ...], default: Any = None) -> Evaluator:
    """Return a closure reading the dotted path `parts` from its data, `default` when absent."""
    if not parts:

        def get_self(data: Any) -> Any:
            return default if data is None else data

        return get_self
    keys = tuple((part, _index_of(part)) for part in parts)
    if len(keys) == 1:
        (k0, i0), = keys

        def get1(data: Any) -> Any:
            value = data.get(k0) if data.__class__ is dict else _step(data, k0, i0)
            return default if value is None else value

        return get1
    if len(keys) == 2:
        (k0, i0), (k1, i1) = keys

        def get2(data: Any) -> Any:
            value = data.get(k0) if data.__class__ is dict else _step(data, k0, i0)
            value = value.get(k1) if value.__class__ is dict else _step(value, k1, i1)
            return default if value is None else value

        return get2

    def get_path(data: Any) -> Any:
        for key, index in keys:
            data = data.get(key) if data.__class__ is dict else _step(data, key, index)
        return default if data is None else data

    return get_path


# ---------------------------------------------------------------------------------------------
# The compiler.

_ARITY: dict[str, tuple[int, int | None]] = {
    "var": (0, 2),
    "missing": (0, None),
    "missing_some": (2, 2),
    "if": (0, None),
    "?:": (0, None),
    "==": (2, 2),
    "===": (2, 2),
    "!=": (2, 2),
    "!==": (2, 2),
    "!": (1, 1),
    "!!": (1, 1),
    "or": (1, None),
    "and": (1, None),
    ">": (2, 2),
    ">=": (2, 2),
    "<": (2, 3),
    "<=": (2, 3),
    "max": (1, None),
    "min": (1, None),
    "+": (0, None),
    "-": (1, 2),
    "*": (1, None),
    "/": (2, 2),
    "%": (2, 2),
    "in": (2, 2),
    "cat": (0, None),
    "substr": (2, 3),
    "merge": (0, None),
    "some": (2, 2),
    "all": (2, 2),
    "none": (2, 2),
    "map": (2, 2),
    "filter": (2, 2),
    "reduce": (2, 3),
}
OPERATORS = frozenset(_ARITY)
_ARRAY_OPS = frozenset({"some", "all", "none", "map", "filter", "reduce"})
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%", "max", "min"})
_BOOLEAN_OPS = frozenset(
    {"==", "===", "!=", "!==", "!", "!!", ">", ">=", "<", "<=", "in", "some", "all", "none"}
)

# Generated code: every JsonLogic tree becomes the source of one Python expression, compiled
# once with `compile()`. The source only ever holds names the compiler makes up (_k3 for the
# fourth constant, _t1 for a temporary, _p0 for a precomputed variable, _e2 for an array
# element), the helper names below, operators, and repr() of ints, booleans and None. Every
# other value taken from a rule (strings, floats, arrays, variable keys) is passed to a factory
# function as an argument and read as a closure variable, never written into the source, so no
# rule content can ever be executed. The factories are cached by their source, which depends
# only on the shapes of the expressions: rules differing in constants share one compiled code.


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    # Huge numeric strings can overflow float arithmetic; JavaScript gives Infinity or NaN.
    def guarded(*args: Any) -> Any:
        try:
            return fn(*args)
        except (OverflowError, ValueError):
            return NAN

    return guarded


def _cat(*values: Any) -> str:
    return "".join([to_string(value) for value in values])


def _missing(data: Any, getters: tuple[tuple[str, Evaluator], ...]) -> list[str]:
    return [name for name, get in getters if (value := get(data)) is None or value == ""]


def _missing_some(data: Any, need: Any, total: int,
                  getters: tuple[tuple[str, Evaluator], ...]) -> list[str]:
    absent = _missing(data, getters)
    return [] if total - len(absent) >= need else absent


def _reduce(items: Any, body: Evaluator, accumulator: Any) -> Any:
    if items.__class__ is not list:
        return accumulator
    for item in items:
        accumulator = body({"current": item, "accumulator": accumulator})
    return accumulator


def _some(items: Any, test: Evaluator) -> bool:
    return items.__class__ is list and any(map(test, items))


def _all(items: Any, test: Evaluator) -> bool:
    return items.__class__ is list and bool(items) and all(map(test, items))


def _none(items: Any, test: Evaluator) -> bool:
    return not _some(items, test)


def _map(items: Any, body: Evaluator) -> list[Any]:
    return [body(item) for item in items] if items.__class__ is list else []


def _filter(items: Any, test: Evaluator) -> list[Any]:
    return [item for item in items if test(item)] if items.__class__ is list else []


def _some_equal(items: Any, key: str, index: int | None, constant: str) -> bool:
    # {"some": [list, {"==": [{"var": "category"}, "red"]}]} without a call per element.
    if items.__class__ is not list:
        return False
    for item in items:
        value = item.get(key) if item.__class__ is dict else _step(item, key, index)
        if value.__class__ is str:
            if value == constant:
                return True
        elif value is not None and loose_equals(value, constant):
            return True
    return False


def _string_values(items: Any, key: str) -> frozenset[str] | None:
    """Return the string values of `key` in a list of objects, None when a value is not one.

    Lets {"some": [list, {"==": [{"var": key}, text]}]} be one set lookup per predicate.
    """
    if items.__class__ is not list:
        return frozenset()
    values = set()
    for item in items:
        if item.__class__ is not dict:
            return None
        value = item.get(key)
        if value.__class__ is str:
            values.add(value)
        elif value is not None:
            return None
    return frozenset(values)


_GLOBALS: dict[str, Any] = {
    "__builtins__": {"str": str, "dict": dict},
    "_NUMERIC": _NUMERIC,
    "_truthy": truthy,
    "_loose_equals": loose_equals,
    "_strict_equals": strict_equals,
    "_less_than": less_than,
    "_less_equal": less_equal,
    "_step": _step,
    "_contains": _contains,
    "_add": _guarded(lambda *values: _add(list(values))),
    "_multiply": _guarded(lambda *values: _multiply(list(values))),
    "_subtract": _guarded(_subtract),
    "_negate": _guarded(lambda value: -to_number(value)),
    "_divide": _guarded(_divide),
    "_modulo": _guarded(_modulo),
    "_max": _guarded(lambda *values: _extreme(max, list(values))),
    "_min": _guarded(lambda *values: _extreme(min, list(values))),
    "_cat": _cat,
    "_substr": _substr,
    "_merge": lambda *values: _merge(list(values)),
    "_missing": _missing,
    "_missing_some": _missing_some,
    "_reduce": _reduce,
    "_some": _some,
    "_all": _all,
    "_none": _none,
    "_map": _map,
    "_filter": _filter,
    "_some_equal": _some_equal,
    "_string_values": _string_values,
}
_FACTORIES: dict[str, Callable[..., Any]] = {}
_MAX_FACTORIES = 2048


def build_function(source: str, constants: list[Any], *, cache: bool = True) -> Callable[..., Any]:
    """Return what `source` (a factory `_factory(_k0, …)` returning a function) builds.

    `source` must come from this module's generator: it holds no rule content. With `cache`,
    the compiled factory is kept by its source for the next expression of the same shape.
    """
    factory = _FACTORIES.get(source) if cache else None
    if factory is None:
        namespace: dict[str, Any] = {}
        exec(compile(source, "<jsonlogic>", "exec"), _GLOBALS, namespace)  # noqa: S102
        factory = namespace["_factory"]
        if cache:
            if len(_FACTORIES) >= _MAX_FACTORIES:
                _FACTORIES.clear()
            _FACTORIES[source] = factory
    return factory(*constants)


def clear_cache() -> None:
    """Forget the compiled expression shapes (benchmarks of a fresh process)."""
    _FACTORIES.clear()


class Node:
    """One compiled sub-expression: its source, and its value when it is a constant.

    `simple` sources (names and literals) can be repeated; others are bound to a temporary
    when read twice.
    """

    __slots__ = ("src", "const", "value", "boolean", "schema", "simple")

    def __init__(
        self,
        src: str,
        *,
        const: bool = False,
        value: Any = None,
        boolean: bool = False,
        schema: Any = ANY,
        simple: bool = False,
    ) -> None:
        self.src = src
        self.const = const
        self.value = value
        self.boolean = boolean
        self.schema = schema
        self.simple = simple


def _is_number(value: Any) -> bool:
    return value.__class__ in _NUMERIC


class Compiler:
    """Compile JsonLogic trees to Python source, collecting every problem into `errors`.

    `constants` collects the values the source reads as _k0, _k1, …. With `precompute`, the
    variables of the outermost scope are read once into _p0, _p1, … (see `prelude`).
    """

    def __init__(self, errors: Errors, *, precompute: bool = False) -> None:
        self.errors = errors
        self.constants: list[Any] = []
        self._constant_names: dict[tuple[type, Any], str] = {}
        self._counter = 0
        self._data = "data"
        self._root = True
        self._precompute = precompute
        self._paths: dict[tuple[str, ...], str] = {(): "data"}
        self._values: dict[tuple[str, str], str] = {}
        self._kind_tests: dict[tuple[str, str], str] = {}
        self._precomputed_names: set[str] = set()
        self.prelude: list[str] = []

    # -- source helpers ----------------------------------------------------------------------

    def constant_name(self, value: Any) -> str:
        """Return the name the generated source reads `value` by."""
        key = (value.__class__, value) if value.__class__ in (str, int) else None
        if key is not None and key in self._constant_names:
            return self._constant_names[key]
        name = f"_k{len(self.constants)}"
        self.constants.append(value)
        if key is not None:
            self._constant_names[key] = name
        return name

    def literal(self, value: Any) -> str:
        if value is None or value is True or value is False:
            return repr(value)
        return self.constant_name(value)

    def fresh(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def bind(self, node: Node) -> tuple[str, str]:
        """Return (first use, later uses) of `node`'s value: a walrus when it is not simple."""
        if node.simple:
            return node.src, node.src
        name = self.fresh("_t")
        return f"({name} := {node.src})", name

    def kind_test(self, source: str, guard: str) -> str:
        """Return the test `source.__class__ <guard>`; for a precomputed variable, a name
        computed once per call."""
        if not (self._precompute and source in self._precomputed_names):
            return f"{source}.__class__ {guard}"
        name = self._kind_tests.get((source, guard))
        if name is None:
            name = self._kind_tests[source, guard] = f"_f{len(self._kind_tests)}"
            self.prelude.append(f"{name} = {source}.__class__ {guard}")
        return name

    def test(self, node: Node) -> str:
        return node.src if node.boolean else f"_truthy({node.src})"

    def constant(self, value: Any) -> Node:
        return Node(self.literal(value), const=True, value=value,
                    boolean=value.__class__ is bool, simple=True)

    def error(self, path: str, message: str) -> Node:
        self.errors.setdefault(path, []).append(message)
        return self.constant(None)

    def step_src(self, source: str, part: str, simple: bool = True) -> str:
        """Return the source reading key `part` of the value of `source`, like _step."""
        key = self.constant_name(part)
        index = _index_of(part)
        if simple:
            first = later = source
        else:
            later = self.fresh("_t")
            first = f"({later} := {source})"
        return (f"({later}.get({key}) if {first}.__class__ is dict "
                f"else _step({later}, {key}, {index!r}))")

    def path_src(self, parts: tuple[str, ...]) -> tuple[str, bool]:
        """Return (source, simple) reading the variable `parts` in the current scope."""
        if self._root and self._precompute:
            return self._precomputed(parts), True
        source, simple = self._data, True
        for part in parts:
            source = self.step_src(source, part, simple)
            simple = False
        return source, simple

    def _precomputed(self, parts: tuple[str, ...]) -> str:
        name = self._paths.get(parts)
        if name is None:
            parent = self._precomputed(parts[:-1])
            name = self._paths[parts] = f"_p{len(self._paths) - 1}"
            self._precomputed_names.add(name)
            self.prelude.append(f"{name} = {self.step_src(parent, parts[-1])}")
        return name

    # -- the tree walk -----------------------------------------------------------------------

    def compile(self, expr: Any, path: str, schema: Any) -> Node:
        """Return the Node computing `expr` over data shaped like `schema`."""
        cls = expr.__class__
        if cls is dict or isinstance(expr, Mapping):
            if len(expr) != 1:
                return self.error(path, "an operation must be an object with exactly one key")
            op, raw = next(iter(expr.items()))
            if op not in _ARITY:
                return self.error(path, f"unknown operator {op!r}")
            args = list(raw) if isinstance(raw, list | tuple) else [raw]
            low, high = _ARITY[op]
            op_path = f"{path}.{op}"
            if len(args) < low or (high is not None and len(args) > high):
                expected = str(low) if low == high else f"{low}..{'' if high is None else high}"
                return self.error(op_path, f"{op!r} takes {expected} arguments, got {len(args)}")
            return getattr(self, "_op_" + _METHOD[op])(op, args, op_path, schema)
        if cls is list or cls is tuple:
            nodes = [self.compile(item, f"{path}[{i}]", schema) for i, item in enumerate(expr)]
            if all(node.const for node in nodes):
                return self.constant([node.value for node in nodes])
            return Node("[" + ", ".join(node.src for node in nodes) + "]")
        if expr is None or cls in (str, bool, int):
            return self.constant(expr)
        if cls is float:
            if not math.isfinite(expr):
                return self.error(path, "numbers must be finite")
            return self.constant(expr)
        return self.error(path, f"unsupported literal of type {type(expr).__name__}")

    def _args(self, args: list[Any], path: str, schema: Any) -> list[Node]:
        return [self.compile(arg, f"{path}[{i}]", schema) for i, arg in enumerate(args)]

    def _call(self, helper: str, nodes: list[Node], **kwargs: Any) -> Node:
        return Node(f"{helper}(" + ", ".join(node.src for node in nodes) + ")", **kwargs)

    # -- data access -------------------------------------------------------------------------

    def _check_name(self, name: Any, path: str, schema: Any) -> tuple[tuple[str, ...], Any] | None:
        if name.__class__ is int and name >= 0:
            name = str(name)
        if name is None:
            name = ""
        if name.__class__ is not str:
            self.error(path, "a variable name must be a literal string")
            return None
        parts = tuple(name.split(".")) if name else ()
        resolved = resolve_schema(schema, parts)
        if resolved is None:
            self.error(path, f"unknown variable {name!r}")
            return None
        return parts, resolved

    def _op_var(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        name = args[0] if args else ""
        # An unknown variable is reported where the var node stands, e.g. "conditions.>[0]".
        checked = self._check_name(name, path.removesuffix(".var"), schema)
        default: Any = None
        if len(args) > 1:
            default_node = self.compile(args[1], f"{path}[1]", schema)
            if not default_node.const:
                return self.error(f"{path}[1]", "a variable default must be a literal")
            default = default_node.value
        if checked is None:
            return self.constant(None)
        parts, resolved = checked
        source, simple = self.path_src(parts)
        if default is None:
            return Node(source, schema=resolved, simple=simple)
        first, later = self.bind(Node(source, simple=simple))
        return Node(f"({self.literal(default)} if {first} is None else {later})", schema=resolved)

    def _literal_names(self, value: Any, path: str, schema: Any) -> str:
        names = value if isinstance(value, list) else [value]
        getters = []
        for i, name in enumerate(names):
            checked = self._check_name(name, f"{path}[{i}]", schema)
            if checked is not None:
                getters.append((str(name), make_getter(checked[0])))
        return self.constant_name(tuple(getters))

    def _op_missing(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        if len(args) == 1 and isinstance(args[0], list):
            getters = self._literal_names(args[0], f"{path}[0]", schema)
        else:
            getters = self._literal_names(args, path, schema)
        return Node(f"_missing({self._data}, {getters})")

    def _op_missing_some(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        need = args[0]
        if not _is_number(need):
            return self.error(f"{path}[0]", "must be a number")
        if not isinstance(args[1], list):
            return self.error(f"{path}[1]", "must be an array of variable names")
        getters = self._literal_names(args[1], f"{path}[1]", schema)
        return Node(f"_missing_some({self._data}, {self.literal(need)}, "
                    f"{len(args[1])!r}, {getters})")

    # -- logic -------------------------------------------------------------------------------

    def _op_if(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        if not nodes:
            return self.constant(None)
        # The else-if chain from the end: [c1, v1, c2, v2, ..., else].
        if len(nodes) % 2 == 1:
            chain = nodes[-1].src
            pairs = nodes[:-1]
        else:
            chain = "None"
            pairs = nodes
        for i in range(len(pairs) - 2, -1, -2):
            chain = f"({pairs[i + 1].src} if {self.test(pairs[i])} else {chain})"
        boolean = len(nodes) % 2 == 1 and all(node.boolean for node in nodes[1::2] + nodes[-1:])
        if len(nodes) == 1:
            return nodes[0]
        return Node(chain, boolean=boolean)

    def _op_and(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        if len(nodes) == 1:
            return nodes[0]
        if all(node.boolean for node in nodes):
            joiner = " and " if op == "and" else " or "
            return Node("(" + joiner.join(node.src for node in nodes) + ")", boolean=True)
        # The deciding value: the first falsy (and) or truthy (or) one, else the last.
        chain = nodes[-1].src
        for node in reversed(nodes[:-1]):
            name = self.fresh("_t")
            bound = Node(f"({name} := {node.src})", boolean=node.boolean)
            test = self.test(bound)
            if op == "and":
                test = f"not {test}"
            chain = f"({name} if {test} else {chain})"
        return Node(chain)

    def _op_not(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        node = self.compile(args[0], f"{path}[0]", schema)
        if op == "!":
            return Node(f"(not {self.test(node)})", boolean=True)
        if node.boolean:
            return node
        return Node(f"_truthy({node.src})", boolean=True)

    # -- comparison --------------------------------------------------------------------------

    def _op_equals(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        left, right = self._args(args, path, schema)
        strict = op in ("===", "!==")
        negate = op in ("!=", "!==")
        compare = "_strict_equals" if strict else "_loose_equals"
        if left.const and not right.const:
            left, right = right, left
        if right.const:
            c = right.value
            guard = None
            if c.__class__ is str:
                guard = "is str"
            elif _is_number(c):
                guard = "in _NUMERIC"
            if guard is not None:
                # Same-kind operands compare natively; anything else takes the coercing path.
                first, value = self.bind(left)
                native = "!=" if negate else "=="
                slow = f"{compare}({value}, {right.src})"
                if negate:
                    slow = f"(not {slow})"
                return Node(f"({value} {native} {right.src} if {self.kind_test(first, guard)} "
                            f"else {slow})", boolean=True)
        src = f"{compare}({left.src}, {right.src})"
        return Node(f"(not {src})" if negate else src, boolean=True)

    def _op_compare(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        if op in (">", ">="):
            # a > b is b < a: one implementation of the coercions.
            nodes.reverse()
        strict = op in ("<", ">")
        test = "_less_than" if strict else "_less_equal"
        native = "<" if strict else "<="
        if len(nodes) == 3:
            low, middle, high = nodes
            first, value = self.bind(middle)
            slow = f"({test}({low.src}, {first}) and {test}({value}, {high.src}))"
            guard = _same_kind_guard(low, high)
            if guard is None:
                return Node(slow, boolean=True)
            slow = f"({test}({low.src}, {value}) and {test}({value}, {high.src}))"
            return Node(f"({low.src} {native} {value} {native} {high.src} "
                        f"if {self.kind_test(first, guard)} else {slow})", boolean=True)
        left, right = nodes
        if right.const and not left.const:
            guard = _same_kind_guard(right, right)
            if guard is not None:
                first, value = self.bind(left)
                return Node(f"({value} {native} {right.src} if {self.kind_test(first, guard)} "
                            f"else {test}({value}, {right.src}))", boolean=True)
        if left.const and not right.const:
            guard = _same_kind_guard(left, left)
            if guard is not None:
                first, value = self.bind(right)
                return Node(f"({left.src} {native} {value} if {self.kind_test(first, guard)} "
                            f"else {test}({left.src}, {value}))", boolean=True)
        return Node(f"{test}({left.src}, {right.src})", boolean=True)

    def _op_in(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        needle, haystack = self._args(args, path, schema)
        if haystack.const:
            values = haystack.value
            if not isinstance(values, list | str):
                return self.error(f"{path}[1]", "must be an array or a string")
            if isinstance(values, list) and all(v.__class__ is str for v in values):
                members = self.constant_name(frozenset(values))
                first, value = self.bind(needle)
                is_text = self.kind_test(first, "is str")
                return Node(f"({is_text} and {value} in {members})", boolean=True)
        return self._call("_contains", [needle, haystack], boolean=True)

    # -- arithmetic and strings --------------------------------------------------------------

    def _op_arith(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        for i, node in enumerate(nodes):
            if node.const and not _is_number(node.value):
                value = node.value
                numeric_text = value.__class__ is str and to_number(value) == to_number(value)
                if not numeric_text and value is not None:
                    self.error(f"{path}[{i}]", "must be a number")
        if op == "-" and len(nodes) == 1:
            return self._call("_negate", nodes)
        return self._call(_ARITH_HELPERS[op], nodes)

    def _op_cat(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        return self._call("_cat", self._args(args, path, schema))

    def _op_substr(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        for i, node in enumerate(nodes[1:], start=1):
            if node.const and not _is_number(node.value):
                self.error(f"{path}[{i}]", "must be a number")
        return self._call("_substr", nodes)

    def _op_merge(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        return self._call("_merge", self._args(args, path, schema))

    # -- arrays ------------------------------------------------------------------------------

    def _scoped(self, expr: Any, path: str, schema: Any) -> tuple[str, Node]:
        """Compile `expr` as the body of a one-argument lambda; return (parameter, body)."""
        saved = self._data, self._root
        self._data, self._root = self.fresh("_e"), False
        try:
            return self._data, self.compile(expr, path, schema)
        finally:
            self._data, self._root = saved

    def _op_array(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        source = self.compile(args[0], f"{path}[0]", schema)
        if source.const and source.value.__class__ is not list:
            return self.error(f"{path}[0]", "must be an array")
        element = source.schema.element if isinstance(source.schema, ListOf) else ANY
        if op == "reduce":
            initial = self.compile(args[2], f"{path}[2]", schema).src if len(args) > 2 else "None"
            scope = {"current": element, "accumulator": ANY}
            param, body = self._scoped(args[1], f"{path}[1]", scope)
            return Node(f"_reduce({source.src}, (lambda {param}: {body.src}), {initial})")
        field_test = _element_equals(args[1])
        if op == "some" and field_test is not None and resolve_schema(
            element, (field_test[0],)
        ) is not None:
            key, constant = field_test
            key_name, text = self.constant_name(key), self.constant_name(constant)
            slow = f"_some_equal({source.src}, {key_name}, {_index_of(key)!r}, {text})"
            if self._root and self._precompute and source.simple and not source.const:
                # Evaluated many times per call: the list's values are collected once.
                values = self._values.get((source.src, key))
                if values is None:
                    values = self._values[source.src, key] = f"_s{len(self._values)}"
                    self.prelude.append(f"{values} = _string_values({source.src}, {key_name})")
                return Node(f"({text} in {values} if {values} is not None else {slow})",
                            boolean=True)
            return Node(slow, boolean=True)
        param, body = self._scoped(args[1], f"{path}[1]", element)
        if op == "map":
            return Node(f"_map({source.src}, (lambda {param}: {body.src}))")
        function = f"(lambda {param}: {self.test(body)})"
        if op == "filter":
            return Node(f"_filter({source.src}, {function})", schema=source.schema)
        return Node(f"_{op}({source.src}, {function})", boolean=True)


def _same_kind_guard(low: Node, high: Node) -> str | None:
    """Return the class test under which a variable compares natively with both constants."""
    if not (low.const and high.const):
        return None
    if low.value.__class__ is str and high.value.__class__ is str:
        return "is str"
    if _is_number(low.value) and _is_number(high.value):
        return "in _NUMERIC"
    return None


_ARITH_HELPERS = {"+": "_add", "*": "_multiply", "-": "_subtract", "/": "_divide",
                  "%": "_modulo", "max": "_max", "min": "_min"}


def _element_equals(expr: Any) -> tuple[str, str] | None:
    """Return (field, text) when `expr` is {"==": [{"var": field}, text]} with one-part field."""
    if not isinstance(expr, dict) or len(expr) != 1 or "==" not in expr:
        return None
    args = expr["=="]
    if not isinstance(args, list) or len(args) != 2:
        return None
    variable, constant = args
    if not isinstance(variable, dict) or len(variable) != 1 or constant.__class__ is not str:
        return None
    name = variable.get("var")
    if isinstance(name, list) and len(name) == 1:
        name = name[0]
    if not isinstance(name, str) or not name or "." in name:
        return None
    return name, constant


_METHOD = {
    "var": "var",
    "missing": "missing",
    "missing_some": "missing_some",
    "if": "if",
    "?:": "if",
    "==": "equals",
    "===": "equals",
    "!=": "equals",
    "!==": "equals",
    "!": "not",
    "!!": "not",
    "or": "and",
    "and": "and",
    ">": "compare",
    ">=": "compare",
    "<": "compare",
    "<=": "compare",
    "in": "in",
    "cat": "cat",
    "substr": "substr",
    "merge": "merge",
    **{op: "arith" for op in _ARITHMETIC},
    **{op: "array" for op in _ARRAY_OPS},
}


_COLUMN_OPS = frozenset({"==", "!=", "===", "!==", "in", "<", "<=", ">", ">="})
_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}


def column_test(expr: Any) -> tuple[str, str, Any] | None:
    """Return (field, operator, constant) when `expr` is one test of an `item.<field>` variable.

    Such filters are answered per item field rather than per item closure call. The constant
    is put second: `{"<": [5, {"var": "item.amount"}]}` gives ("amount", ">", 5).
    """
    if not isinstance(expr, dict) or len(expr) != 1:
        return None
    op, args = next(iter(expr.items()))
    if op not in _COLUMN_OPS or not isinstance(args, list) or len(args) != 2:
        return None
    first, second = args
    if _item_field(first) is None:
        if op == "in" or _item_field(second) is None:
            return None
        first, second = second, first
        op = _MIRRORED.get(op, op)
    field = _item_field(first)
    if field is None:
        return None
    if op == "in":
        if isinstance(second, list) and all(value.__class__ is str for value in second):
            return field, op, tuple(second)
        return None
    if second.__class__ is str and op in ("==", "!=", "===", "!=="):
        return field, op, second
    if second.__class__ in _NUMERIC and (not isinstance(second, float) or math.isfinite(second)):
        return field, op, second
    return None


def _item_field(expr: Any) -> str | None:
    if not isinstance(expr, dict) or len(expr) != 1 or "var" not in expr:
        return None
    name = expr["var"]
    if isinstance(name, list):
        if len(name) != 1:
            return None
        name = name[0]
    if isinstance(name, str) and name.startswith("item.") and name[5:] in ITEM_FIELDS:
        return name[5:]
    return None


def _function_source(compiler: Compiler, body: list[str], *, local_constants: bool = False
                     ) -> str:
    """Return the source of a factory binding the constants and returning the function.

    With `local_constants`, the function takes them as default arguments: a call then reads
    each as a local rather than through a closure cell (for a selector: many, read once).
    """
    names = [f"_k{i}" for i in range(len(compiler.constants))]
    params = ", ".join(names)
    arguments = "".join(f", {name}={name}" for name in names) if local_constants else ""
    lines = [f"def _factory({params}):", f"    def _fn(data{arguments}):"]
    lines += [f"        {line}" for line in compiler.prelude + body]
    lines += ["    return _fn", ""]
    return "\n".join(lines)


_TOO_DEEP = (RecursionError, SyntaxError, MemoryError)


def _compile(expr: Any, path: str, errors: Errors, schema: Any, predicate: bool) -> Evaluator:
    try:
        compiler = Compiler(errors)
        node = compiler.compile(expr, path, schema)
        body = [f"return {compiler.test(node) if predicate else node.src}"]
        return build_function(_function_source(compiler, body), compiler.constants)
    except _TOO_DEEP:
        # Python's parser and compiler bound the nesting of one expression.
        errors.setdefault(path, []).append("is too deeply nested")
        return (lambda data: False) if predicate else (lambda data: None)


def compile_logic(expr: Any, path: str, errors: Errors, schema: Any = ANY) -> Evaluator:
    """Compile `expr` to a function computing its JsonLogic value; problems go into `errors`."""
    return _compile(expr, path, errors, schema, predicate=False)


def compile_predicate(expr: Any, path: str, errors: Errors, schema: Any = ANY) -> Evaluator:
    """Compile `expr` to a function returning its JsonLogic truthiness as a bool."""
    return _compile(expr, path, errors, schema, predicate=True)


def compile_selector(
    predicates: list[tuple[str, Any] | None], schema: Any = ANY
) -> tuple[Callable[[Any], tuple[bool, ...]], set[int]]:
    """Compile many predicates into one function returning a tuple of their truth values.

    Each entry is (key, expr), or None for a position that is always True; entries sharing a
    key are computed once, and every variable is read once per call, whichever predicates use
    it. Returns the function and the positions whose expression did not compile (those are
    always True in the tuple).
    """
    compiler = Compiler({}, precompute=True)
    shared: dict[str, str] = {}
    counts: dict[str, int] = {}
    for entry in predicates:
        if entry is not None:
            counts[entry[0]] = counts.get(entry[0], 0) + 1
    failed: set[int] = set()
    lines: list[str] = []
    values: list[str] = []
    for position, entry in enumerate(predicates):
        if entry is None:
            values.append("True")
            continue
        key, expr = entry
        name = shared.get(key)
        if name is None:
            compiler.errors = {}
            try:
                source = compiler.test(compiler.compile(expr, "$", schema))
            except RecursionError:
                compiler.errors["$"] = ["is too deeply nested"]
            if compiler.errors:
                failed.add(position)
                values.append("True")
                continue
            if counts[key] == 1:
                values.append(source)
                continue
            name = shared[key] = f"_c{len(shared)}"
            lines.append(f"{name} = {source}")
        values.append(name)
    body = lines + ["return (" + "".join(f"{value}, " for value in values) + ")"]
    try:
        # One per rule set: its shape is the rule set's, not worth keeping.
        source = _function_source(compiler, body, local_constants=True)
        return build_function(source, compiler.constants, cache=False), failed
    except _TOO_DEEP:
        everything = tuple(True for _ in predicates)
        return (lambda data: everything), {
            position for position, entry in enumerate(predicates) if entry is not None}


def apply_logic(expr: Any, data: Any = None) -> Any:
    """Compile and run `expr` once over `data`, without variable checks (tests, tools).

    Raises ValueError when the expression does not compile.
    """
    errors: Errors = {}
    fn = compile_logic(expr, "$", errors)
    if errors:
        raise ValueError("; ".join(f"{p}: {', '.join(m)}" for p, m in errors.items()))
    return fn(data)
