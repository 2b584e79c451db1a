"""The exposure query language: a small expression language parsed by the tool itself.

A plan is data, often written by someone else (a consortium sends one plan to
every biobank), so an exposure's ``cases``/``controls`` queries are never handed
to Python's or pandas' ``eval``: they are tokenised and parsed here into a tree
of the node classes below, and anything outside the language is refused before
anything is evaluated. The language:

* column names: identifiers (``MDD``, ``any_ptd``), or backquoted when they hold
  spaces or other characters (```age at visit```);
* literals: numbers (``1``, ``-2.5``, ``1e-3``), strings (``'female'`` or
  ``"female"``), booleans (``True``/``False``/``true``/``false``);
* comparisons ``== != < <= > >=`` (chained as in Python: ``18 <= age < 65``);
* ``col in [v1, v2]`` and ``col not in [v1, v2]``;
* ``isna(col)`` and ``notna(col)``, the only two calls;
* ``and``/``or``/``not``, also written ``&``/``|``/``~`` as pandas users do
  (same meaning and precedence: ``not`` binds tighter than ``and``, which binds
  tighter than ``or``), and parentheses;
* a bare column stands for itself where it holds true/false values.

Attribute access (``a.b``), other calls, ``@``, subscripts, arithmetic, lambdas,
comprehensions and the like are refused with a :class:`PlanError` naming the plan
key and the position. Evaluation against the metadata is in
:mod:`scalable_assoc.io.metadata` (this module is standard library only).
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass

from scalable_assoc.errors import PlanError

#: Comparison operators, longest first for the tokenizer.
COMPARISONS = ("==", "!=", "<=", ">=", "<", ">")
#: The only functions a query may call.
FUNCTIONS = ("isna", "notna")
_BOOLEANS = {"True": True, "true": True, "False": False, "false": False}
_WORDS = ("and", "or", "not", "in")


@dataclass(frozen=True)
class Column:
    """A metadata column, by name."""

    name: str


@dataclass(frozen=True)
class Literal:
    """A number, string or boolean written in the query."""

    value: int | float | str | bool


@dataclass(frozen=True)
class Compare:
    """``operands[0] ops[0] operands[1] ops[1] ...``: a (chained) comparison, true where every link holds."""

    operands: tuple[Column | Literal, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Membership:
    """``column in [values]`` (or ``not in`` when ``negated``)."""

    column: Column
    values: tuple[Literal, ...]
    negated: bool


@dataclass(frozen=True)
class Missing:
    """``isna(column)`` (``missing`` true) or ``notna(column)``."""

    column: Column
    missing: bool


@dataclass(frozen=True)
class Not:
    """``not operand`` (also ``~operand``)."""

    operand: Node


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` (also ``&`` / ``|``) over two or more operands."""

    op: str
    operands: tuple[Node, ...]


Node = Column | Compare | Membership | Missing | Not | BoolOp


@dataclass(frozen=True)
class Query:
    """A parsed query: its text, its tree, and the columns it names (in order of first mention)."""

    text: str
    tree: Node
    columns: tuple[str, ...]


@dataclass(frozen=True)
class _Token:
    kind: str  # name, quoted_name, number, string, op, word, end
    value: str
    position: int  # 1-based character position in the query


_NUMBER = re.compile(r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_NAME = re.compile(r"[^\W\d]\w*")
_REFUSED = {
    ".": "attribute access ('.') is not part of the query language",
    "@": "'@' (a reference to a Python variable) is not part of the query language",
    "[": "subscripts ('[') are not part of the query language; '[' only follows 'in' or 'not in'",
    "+": "arithmetic is not part of the query language",
    "-": "arithmetic is not part of the query language",
    "*": "arithmetic is not part of the query language",
    "/": "arithmetic is not part of the query language",
    "%": "arithmetic is not part of the query language",
    "^": "'^' is not part of the query language",
    ":": "':' (lambdas, slices, dictionaries) is not part of the query language",
    "{": "'{' (sets, dictionaries) is not part of the query language",
    "=": "'=' (assignment) is not part of the query language; compare with '=='",
}


class _Refused(Exception):
    def __init__(self, position: int, problem: str) -> None:
        super().__init__(problem)
        self.position = position
        self.problem = problem


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char.isspace():
            i += 1
            continue
        start = i + 1
        two = text[i : i + 2]
        if two in COMPARISONS:
            tokens.append(_Token("op", two, start))
            i += 2
            continue
        if char in "<>(),[]&|~":
            tokens.append(_Token("op", char, start))
            i += 1
            continue
        if char == "-" and (not tokens or tokens[-1].kind in ("op", "word")) and _NUMBER.match(text, i + 1):
            # A negative number where an operand is expected (not subtraction).
            match = _NUMBER.match(text, i + 1)
            assert match is not None
            tokens.append(_Token("number", "-" + match.group(0), start))
            i = match.end()
            continue
        number = _NUMBER.match(text, i)
        if number:
            tokens.append(_Token("number", number.group(0), start))
            i = number.end()
            if i < len(text) and (text[i].isalnum() or text[i] == "_"):
                raise _Refused(i + 1, f"unexpected {text[i]!r} right after the number {number.group(0)}")
            continue
        if char in "'\"":
            value, i = _string(text, i)
            tokens.append(_Token("string", value, start))
            continue
        if char == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _Refused(start, "a backquoted column name is not closed with '`'")
            if end == i + 1:
                raise _Refused(start, "an empty backquoted column name")
            tokens.append(_Token("quoted_name", text[i + 1 : end], start))
            i = end + 1
            continue
        name = _NAME.match(text, i)
        if name:
            word = name.group(0)
            if keyword.iskeyword(word) and word not in _WORDS and word not in _BOOLEANS:
                raise _Refused(
                    start, f"the Python keyword '{word}' is not part of the query language (backquote it if it is a column name: `{word}`)"
                )
            tokens.append(_Token("word" if word in _WORDS else "name", word, start))
            i = name.end()
            continue
        raise _Refused(start, _REFUSED.get(char, f"the character {char!r} is not part of the query language"))
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _string(text: str, i: int) -> tuple[str, int]:
    """A quoted string starting at ``text[i]``; backslash escapes only the quote and the backslash."""
    quote = text[i]
    out = []
    j = i + 1
    while j < len(text):
        char = text[j]
        if char == "\\" and j + 1 < len(text) and text[j + 1] in (quote, "\\"):
            out.append(text[j + 1])
            j += 2
            continue
        if char == quote:
            return "".join(out), j + 1
        out.append(char)
        j += 1
    raise _Refused(i + 1, f"a string opened with {quote} is not closed")


class _Parser:
    """Recursive descent: or_expr := and_expr (or and_expr)*; and_expr := not_expr (and not_expr)*;
    not_expr := not not_expr | comparison; comparison := operand (cmp operand)* | operand [not] in [list] |
    isna(col) | notna(col) | ( or_expr ); operand := column | literal."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.columns: list[str] = []

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def _next(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _is(self, kind: str, *values: str) -> bool:
        return self.token.kind == kind and (not values or self.token.value in values)

    def _expect(self, kind: str, value: str, what: str) -> _Token:
        if not self._is(kind, value):
            raise _Refused(self.token.position, f"expected {what}, found {self._describe(self.token)}")
        return self._next()

    @staticmethod
    def _describe(token: _Token) -> str:
        if token.kind == "end":
            return "the end of the query"
        if token.kind == "string":
            return f"the string {token.value!r}"
        return f"'{token.value}'"

    def parse(self) -> Node:
        tree = self._or()
        if not self._is("end"):
            token = self.token
            raise _Refused(token.position, f"unexpected {self._describe(token)}; join conditions with 'and' or 'or'")
        return tree

    def _or(self) -> Node:
        operands = [self._and()]
        while self._is("word", "or") or self._is("op", "|"):
            self._next()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else BoolOp("or", tuple(operands))

    def _and(self) -> Node:
        operands = [self._not()]
        while self._is("word", "and") or self._is("op", "&"):
            self._next()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else BoolOp("and", tuple(operands))

    def _not(self) -> Node:
        if self._is("word", "not") or self._is("op", "~"):
            self._next()
            return Not(self._not())
        return self._condition()

    def _condition(self) -> Node:
        if self._is("op", "("):
            self._next()
            inner = self._or()
            self._expect("op", ")", "')' to close the '('")
            return inner
        if self._is("name", *FUNCTIONS) and self.tokens[self.index + 1].kind == "op" and self.tokens[self.index + 1].value == "(":
            function = self._next().value
            self._next()
            if not (self._is("name") or self._is("quoted_name")):
                raise _Refused(self.token.position, f"{function}() takes one column name, found {self._describe(self.token)}")
            column = self._column(self._next())
            self._expect("op", ")", f"')' after the column name in {function}()")
            return Missing(column, function == "isna")
        first = self._operand()
        following = self.tokens[self.index + 1] if self.index + 1 < len(self.tokens) else self.token
        if self._is("word", "in") or (self._is("word", "not") and following.kind == "word" and following.value == "in"):
            negated = self._next().value == "not"
            if negated:
                self._next()
            if not isinstance(first, Column):
                raise _Refused(self.token.position, "'in' needs a column name on its left")
            return Membership(first, self._list(), negated)
        operands: list[Column | Literal] = [first]
        ops: list[str] = []
        while self._is("op", *COMPARISONS):
            ops.append(self._next().value)
            operands.append(self._operand())
        if not ops:
            if isinstance(first, Literal):
                raise _Refused(self.token.position, f"a value on its own ({first.value!r}) is not a condition; compare a column with it")
            return first
        if not any(isinstance(operand, Column) for operand in operands):
            raise _Refused(self.token.position, "a comparison needs a column name on one side")
        return Compare(tuple(operands), tuple(ops))

    def _list(self) -> tuple[Literal, ...]:
        self._expect("op", "[", "'[' starting a list of values after 'in'")
        values: list[Literal] = []
        while True:
            values.append(self._literal(self._next()))
            if self._is("op", "]"):
                self._next()
                return tuple(values)
            self._expect("op", ",", "',' or ']' in the list of values")

    def _operand(self) -> Column | Literal:
        token = self._next()
        if token.kind in ("name", "quoted_name"):
            if token.kind == "name" and token.value not in _BOOLEANS:
                follower = self.token
                if follower.kind == "op" and follower.value == "(":
                    allowed = " and ".join(f"{f}(column)" for f in FUNCTIONS)
                    raise _Refused(token.position, f"calling '{token.value}' is not allowed; the only calls are {allowed}")
                if follower.kind == "op" and follower.value == "[":
                    raise _Refused(follower.position, _REFUSED["["])
            return self._column(token) if token.kind == "quoted_name" or token.value not in _BOOLEANS else Literal(_BOOLEANS[token.value])
        return self._literal(token)

    def _literal(self, token: _Token) -> Literal:
        if token.kind == "number":
            value = token.value
            return Literal(float(value) if any(c in value for c in ".eE") else int(value))
        if token.kind == "string":
            return Literal(token.value)
        if token.kind == "name" and token.value in _BOOLEANS:
            return Literal(_BOOLEANS[token.value])
        raise _Refused(token.position, f"expected a column name or a value, found {self._describe(token)}")

    def _column(self, token: _Token) -> Column:
        if token.kind == "name" and token.value.startswith("__"):
            raise _Refused(token.position, f"'{token.value}' is not a column name the query language accepts (names starting with '__')")
        if token.value not in self.columns:
            self.columns.append(token.value)
        return Column(token.value)


LANGUAGE_SUMMARY = (
    "A query compares metadata columns with values: MDD == 1, sex == 'female' and age >= 18, site in ['north', 'south'], "
    "notna(bmi), `age at visit` > 40 (backquote names with spaces), joined by and/or/not (&, |, ~) and parentheses."
)


def parse_query(text: str, key: str) -> Query:
    """Parse an exposure query; :class:`PlanError` naming ``key`` (e.g. ``plan X, key 'exposures.MDD.cases'``) if it is not in the language.

    Nothing is evaluated: the result is a tree of this module's node classes.
    """
    try:
        parser = _Parser(text)
        tree = parser.parse()
    except _Refused as refused:
        raise PlanError(
            f"{key}: the query {text!r} is refused at character {refused.position}: {refused.problem}. Nothing was evaluated. "
            f"{LANGUAGE_SUMMARY}"
        ) from None
    return Query(text, tree, tuple(parser.columns))
