"""Compile JsonLogic expressions to Python closures, checking operators and variables statically.

Semantics follow json-logic-js: JavaScript truthiness (except that an empty array is falsy),
loose and strict equality with JavaScript coercions, `and`/`or` returning the deciding value,
arithmetic on numeric strings. What compiled never raises at evaluation time: division by zero
and impossible coercions give null or NaN (which compares false) instead of an exception.
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


class Node:
    """Hold one compiled sub-expression: its closure, and its value when it is a constant."""

    __slots__ = ("fn", "const", "value", "boolean", "schema")

    def __init__(
        self,
        fn: Evaluator,
        *,
        const: bool = False,
        value: Any = None,
        boolean: bool = False,
        schema: Any = ANY,
    ) -> None:
        self.fn = fn
        self.const = const
        self.value = value
        self.boolean = boolean
        self.schema = schema


def _constant(value: Any) -> Node:
    return Node(lambda data: value, const=True, value=value, boolean=value.__class__ is bool)


def _is_number(value: Any) -> bool:
    return value.__class__ in _NUMERIC


class Compiler:
    """Compile JsonLogic trees, collecting every problem into `errors` keyed by JSON path."""

    def __init__(self, errors: Errors) -> None:
        self.errors = errors

    def error(self, path: str, message: str) -> Node:
        self.errors.setdefault(path, []).append(message)
        return _constant(None)

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
                return _constant([node.value for node in nodes])
            fns = tuple(node.fn for node in nodes)
            return Node(lambda data: [fn(data) for fn in fns])
        if expr is None or cls in (str, bool, int):
            return _constant(expr)
        if cls is float:
            if not math.isfinite(expr):
                return self.error(path, "numbers must be finite")
            return _constant(expr)
        return self.error(path, f"unsupported literal of type {type(expr).__name__}")

    def _args(self, args: list[Any], path: str, schema: Any) -> list[Node]:
        return [self.compile(arg, f"{path}[{i}]", schema) for i, arg in enumerate(args)]

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
            return _constant(None)
        parts, resolved = checked
        return Node(make_getter(parts, default), schema=resolved)

    def _literal_names(self, value: Any, path: str, schema: Any) -> list[tuple[str, Evaluator]]:
        names = value if isinstance(value, list) else [value]
        getters = []
        for i, name in enumerate(names):
            checked = self._check_name(name, f"{path}[{i}]", schema)
            if checked is not None:
                getters.append((str(name), make_getter(checked[0])))
        return getters

    def _op_missing(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        if len(args) == 1 and isinstance(args[0], list):
            getters = self._literal_names(args[0], f"{path}[0]", schema)
        else:
            getters = self._literal_names(args, path, schema)

        def missing(data: Any) -> list[str]:
            return [name for name, get in getters if (value := get(data)) is None or value == ""]

        return Node(missing)

    def _op_missing_some(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        need = args[0]
        if not _is_number(need):
            return self.error(f"{path}[0]", "must be a number")
        if not isinstance(args[1], list):
            return self.error(f"{path}[1]", "must be an array of variable names")
        getters = self._literal_names(args[1], f"{path}[1]", schema)
        total = len(args[1])

        def missing_some(data: Any) -> list[str]:
            absent = [name for name, get in getters if (value := get(data)) is None or value == ""]
            return [] if total - len(absent) >= need else absent

        return Node(missing_some)

    # -- logic -------------------------------------------------------------------------------

    def _op_if(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        if not nodes:
            return _constant(None)
        fns = [node.fn for node in nodes]
        # Build the else-if chain from the end: [c1, v1, c2, v2, ..., else].
        if len(fns) % 2 == 1:
            chain = fns[-1]
            pairs = fns[:-1]
        else:
            chain = _constant(None).fn
            pairs = fns
        for i in range(len(pairs) - 2, -1, -2):
            chain = _if_step(pairs[i], pairs[i + 1], chain)
        boolean = len(nodes) % 2 == 1 and all(node.boolean for node in nodes[1::2] + nodes[-1:])
        return Node(chain, boolean=boolean)

    def _op_and(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        fns = tuple(node.fn for node in nodes)
        boolean = all(node.boolean for node in nodes)
        if op == "and":
            if boolean and len(fns) == 2:
                f0, f1 = fns
                return Node(lambda data: f0(data) and f1(data), boolean=True)

            def and_(data: Any) -> Any:
                value = None
                for fn in fns:
                    value = fn(data)
                    if not truthy(value):
                        return value
                return value

            return Node(and_, boolean=boolean)

        def or_(data: Any) -> Any:
            value = None
            for fn in fns:
                value = fn(data)
                if truthy(value):
                    return value
            return value

        return Node(or_, boolean=boolean)

    def _op_not(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        node = self.compile(args[0], f"{path}[0]", schema)
        fn = node.fn
        if op == "!":
            if node.boolean:
                return Node(lambda data: not fn(data), boolean=True)
            return Node(lambda data: not truthy(fn(data)), boolean=True)
        if node.boolean:
            return node
        return Node(lambda data: truthy(fn(data)), boolean=True)

    # -- comparison --------------------------------------------------------------------------

    def _op_equals(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        left, right = self._args(args, path, schema)
        strict = op in ("===", "!==")
        negate = op in ("!=", "!==")
        compare = strict_equals if strict else loose_equals
        if left.const and not right.const:
            left, right = right, left
        a = left.fn
        if right.const:
            c = right.value
            cc = c.__class__
            fast: tuple[type, ...] = ()
            if cc is str:
                fast = (str,)
            elif cc in _NUMERIC:
                fast = _NUMERIC
            if fast:
                # Same-kind operands compare natively; anything else takes the coercing path.
                if negate:

                    def not_equal_const(data: Any) -> bool:
                        value = a(data)
                        if value.__class__ in fast:
                            return value != c
                        return not compare(value, c)

                    return Node(not_equal_const, boolean=True)

                def equal_const(data: Any) -> bool:
                    value = a(data)
                    if value.__class__ in fast:
                        return value == c
                    return compare(value, c)

                return Node(equal_const, boolean=True)
            if negate:
                return Node(lambda data: not compare(a(data), c), boolean=True)
            return Node(lambda data: compare(a(data), c), boolean=True)
        b = right.fn
        if negate:
            return Node(lambda data: not compare(a(data), b(data)), boolean=True)
        return Node(lambda data: compare(a(data), b(data)), boolean=True)

    def _op_compare(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        if op in (">", ">="):
            # a > b is b < a: one implementation of the coercions.
            nodes.reverse()
        test = less_than if op in ("<", ">") else less_equal
        if len(nodes) == 3:
            fa, fb, fc = (node.fn for node in nodes)

            def between(data: Any) -> bool:
                middle = fb(data)
                return test(fa(data), middle) and test(middle, fc(data))

            return Node(between, boolean=True)
        left, right = nodes
        fa, fb = left.fn, right.fn
        if right.const and _is_number(right.value):
            c = right.value
            if test is less_than:

                def lt_const(data: Any) -> bool:
                    value = fa(data)
                    if value.__class__ in _NUMERIC:
                        return value < c
                    return less_than(value, c)

                return Node(lt_const, boolean=True)

            def le_const(data: Any) -> bool:
                value = fa(data)
                if value.__class__ in _NUMERIC:
                    return value <= c
                return less_equal(value, c)

            return Node(le_const, boolean=True)
        if left.const and _is_number(left.value):
            c = left.value
            if test is less_than:

                def const_lt(data: Any) -> bool:
                    value = fb(data)
                    if value.__class__ in _NUMERIC:
                        return c < value
                    return less_than(c, value)

                return Node(const_lt, boolean=True)

            def const_le(data: Any) -> bool:
                value = fb(data)
                if value.__class__ in _NUMERIC:
                    return c <= value
                return less_equal(c, value)

            return Node(const_le, boolean=True)
        return Node(lambda data: test(fa(data), fb(data)), boolean=True)

    def _op_in(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        needle, haystack = self._args(args, path, schema)
        fa = needle.fn
        if haystack.const:
            values = haystack.value
            if not isinstance(values, list | str):
                return self.error(f"{path}[1]", "must be an array or a string")
            if isinstance(values, list) and all(v.__class__ is str for v in values):
                members = frozenset(values)

                def in_strings(data: Any) -> bool:
                    value = fa(data)
                    return value.__class__ is str and value in members

                return Node(in_strings, boolean=True)
            return Node(lambda data: _contains(fa(data), values), boolean=True)
        fb = haystack.fn
        return Node(lambda data: _contains(fa(data), fb(data)), boolean=True)

    # -- arithmetic and strings --------------------------------------------------------------

    def _op_arith(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        for i, node in enumerate(nodes):
            if node.const and not _is_number(node.value):
                value = node.value
                numeric_text = value.__class__ is str and to_number(value) == to_number(value)
                if not numeric_text and value is not None:
                    self.error(f"{path}[{i}]", "must be a number")
        fns = tuple(node.fn for node in nodes)
        if op == "+":
            fn: Evaluator = lambda data: _add([f(data) for f in fns])  # noqa: E731
        elif op == "*":
            fn = lambda data: _multiply([f(data) for f in fns])  # noqa: E731
        elif op == "-":
            if len(fns) == 1:
                f0 = fns[0]
                fn = lambda data: -to_number(f0(data))  # noqa: E731
            else:
                f0, f1 = fns
                fn = lambda data: _subtract(f0(data), f1(data))  # noqa: E731
        elif op == "/":
            f0, f1 = fns
            fn = lambda data: _divide(f0(data), f1(data))  # noqa: E731
        elif op == "%":
            f0, f1 = fns
            fn = lambda data: _modulo(f0(data), f1(data))  # noqa: E731
        else:
            pick = max if op == "max" else min
            fn = lambda data: _extreme(pick, [f(data) for f in fns])  # noqa: E731
        return Node(_guard_overflow(fn))

    def _op_cat(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        fns = tuple(node.fn for node in self._args(args, path, schema))
        return Node(lambda data: "".join([to_string(f(data)) for f in fns]))

    def _op_substr(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        nodes = self._args(args, path, schema)
        for i, node in enumerate(nodes[1:], start=1):
            if node.const and not _is_number(node.value):
                self.error(f"{path}[{i}]", "must be a number")
        fns = tuple(node.fn for node in nodes)
        if len(fns) == 2:
            f0, f1 = fns
            return Node(lambda data: _substr(f0(data), f1(data)))
        f0, f1, f2 = fns
        return Node(lambda data: _substr(f0(data), f1(data), f2(data)))

    def _op_merge(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        fns = tuple(node.fn for node in self._args(args, path, schema))
        return Node(lambda data: _merge([f(data) for f in fns]))

    # -- arrays ------------------------------------------------------------------------------

    def _op_array(self, op: str, args: list[Any], path: str, schema: Any) -> Node:
        source = self.compile(args[0], f"{path}[0]", schema)
        if source.const and source.value.__class__ is not list:
            return self.error(f"{path}[0]", "must be an array")
        element = source.schema.element if isinstance(source.schema, ListOf) else ANY
        fs = source.fn
        if op == "reduce":
            scope = {"current": element, "accumulator": ANY}
            body = self.compile(args[1], f"{path}[1]", scope).fn
            initial = self.compile(args[2], f"{path}[2]", schema).fn if len(args) > 2 else None

            def reduce_(data: Any) -> Any:
                accumulator = initial(data) if initial is not None else None
                items = fs(data)
                if items.__class__ is not list:
                    return accumulator
                for item in items:
                    accumulator = body({"current": item, "accumulator": accumulator})
                return accumulator

            return Node(reduce_)
        body_node = self.compile(args[1], f"{path}[1]", element)
        body = body_node.fn
        test = body if body_node.boolean else (lambda item: truthy(body_node.fn(item)))
        field_test = _element_equals(args[1])
        if op == "some" and field_test is not None:
            key, constant = field_test
            index = _index_of(key)

            # {"some": [list, {"==": [{"var": "category"}, "red"]}]} without a call per element.
            def some_equal(data: Any) -> bool:
                items = fs(data)
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

            return Node(some_equal, boolean=True)
        if op == "some":

            def some(data: Any) -> bool:
                items = fs(data)
                return items.__class__ is list and any(test(item) for item in items)

            return Node(some, boolean=True)
        if op == "all":

            def all_(data: Any) -> bool:
                items = fs(data)
                return items.__class__ is list and bool(items) and all(test(i) for i in items)

            return Node(all_, boolean=True)
        if op == "none":

            def none(data: Any) -> bool:
                items = fs(data)
                return items.__class__ is not list or not any(test(item) for item in items)

            return Node(none, boolean=True)
        if op == "map":

            def map_(data: Any) -> list[Any]:
                items = fs(data)
                return [body(item) for item in items] if items.__class__ is list else []

            return Node(map_)

        def filter_(data: Any) -> list[Any]:
            items = fs(data)
            return [item for item in items if test(item)] if items.__class__ is list else []

        return Node(filter_, schema=source.schema)


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


def _if_step(condition: Evaluator, then: Evaluator, otherwise: Evaluator) -> Evaluator:
    def if_(data: Any) -> Any:
        return then(data) if truthy(condition(data)) else otherwise(data)

    return if_


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


def compile_logic(expr: Any, path: str, errors: Errors, schema: Any = ANY) -> Evaluator:
    """Compile `expr` to a closure computing its JsonLogic value; problems go into `errors`."""
    return Compiler(errors).compile(expr, path, schema).fn


def compile_predicate(expr: Any, path: str, errors: Errors, schema: Any = ANY) -> Evaluator:
    """Compile `expr` to a closure returning its JsonLogic truthiness as a bool."""
    node = Compiler(errors).compile(expr, path, schema)
    if node.boolean:
        return node.fn
    fn = node.fn
    return lambda data: truthy(fn(data))


def apply_logic(expr: Any, data: Any = None) -> Any:
    """Compile and run `expr` once over `data`, without variable checks (tests, tools).

    Raises ValueError when the expression does not compile.
    """
    errors: Errors = {}
    fn = compile_logic(expr, "$", errors)
    if errors:
        raise ValueError("; ".join(f"{p}: {', '.join(m)}" for p, m in errors.items()))
    return fn(data)
