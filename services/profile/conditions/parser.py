"""Text -> condition tree: a hand-written lexer and recursive-descent parser (grammar in docs/segments.md).

Every failure is a ConditionSyntaxError with the position of the offending token and what was expected there.
Input size and nesting are bounded, so no input can exhaust memory or the interpreter's stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from services.profile.conditions import errors
from services.profile.conditions.errors import ConditionSyntaxError, Pos, pos_at
from services.profile.conditions.nodes import (
    AGGREGATE_FUNCTIONS,
    CORE_FIELDS,
    Aggregate,
    And,
    AttributeRef,
    Between,
    Compare,
    CompareOp,
    CoreField,
    FeatureRef,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Operand,
    Or,
    TagRef,
)

MAX_LENGTH = 20_000
MAX_DEPTH = 32
MAX_NAME = 128
MAX_INT_DIGITS = 19
MAX_DECIMAL_CHARS = 40
KEYWORDS = frozenset({"and", "or", "not", "between", "in", "is", "null", "true", "false"})
PREFIXES = frozenset({"attr", "tag", "feature"})
OPERATORS = ("!=", "<=", ">=", "=", "<", ">")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


@dataclass(frozen=True)
class Token:
    kind: str  # ident, keyword, string, int, decimal, window, op, '(', ')', ',', '.', '-', eof
    text: str
    offset: int
    value: object = None

    def describe(self) -> str:
        """What was found, for an error message; literal values and names are never echoed."""
        if self.kind == "eof":
            return "end of input"
        if self.kind == "ident":
            return "a name"
        if self.kind == "string":
            return "a string"
        if self.kind in ("int", "decimal"):
            return "a number"
        if self.kind == "window":
            return "a window"
        return f"'{self.text}'"


def _is_ident_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_ident_char(ch: str) -> bool:
    return _is_ident_start(ch) or ("0" <= ch <= "9")


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0

    def fail(self, description: str, offset: int, expected: str = "") -> ConditionSyntaxError:
        return ConditionSyntaxError(description, pos_at(self.text, offset), expected=expected, source=self.text)

    def tokens(self) -> list[Token]:
        out: list[Token] = []
        text, n = self.text, len(self.text)
        while True:
            while self.i < n and text[self.i] in " \t\r\n":
                self.i += 1
            if self.i >= n:
                out.append(Token("eof", "", n))
                return out
            start, ch = self.i, text[self.i]
            if _is_ident_start(ch):
                while self.i < n and _is_ident_char(text[self.i]):
                    self.i += 1
                word = text[start : self.i]
                if len(word) > MAX_NAME:
                    raise self.fail(f"a name is longer than {MAX_NAME} characters", start)
                lowered = word.lower()
                kind = "keyword" if lowered in KEYWORDS else "ident"
                out.append(Token(kind, word, start, lowered if kind == "keyword" else None))
            elif "0" <= ch <= "9":
                out.append(self._number(start))
            elif ch == '"':
                out.append(self._string(start))
            elif ch in "<>=!":
                for op in OPERATORS:
                    if text.startswith(op, start):
                        self.i += len(op)
                        out.append(Token("op", op, start))
                        break
                else:
                    raise self.fail("unexpected '!'", start, expected="'!='")
            elif ch in "(),.-":
                self.i += 1
                out.append(Token(ch, ch, start))
            else:
                shown = f"'{ch}'" if ch.isascii() and ch.isprintable() else "character"
                raise self.fail(f"unexpected {shown}", start,
                                expected="a name, a value, an operator, '(' or ')'")

    def _number(self, start: int) -> Token:
        text, n = self.text, len(self.text)
        while self.i < n and text[self.i].isdigit() and text[self.i].isascii():
            self.i += 1
        kind = "int"
        if self.i < n and text[self.i] == "." and self.i + 1 < n and "0" <= text[self.i + 1] <= "9":
            self.i += 1
            while self.i < n and "0" <= text[self.i] <= "9":
                self.i += 1
            kind = "decimal"
        if kind == "int" and self.i < n and text[self.i] == "d" and not (
            self.i + 1 < n and _is_ident_char(text[self.i + 1])
        ):
            digits = text[start : self.i]
            self.i += 1
            if len(digits) > 6:
                raise self.fail("window too long", start)
            return Token("window", text[start : self.i], start, int(digits))
        if self.i < n and (_is_ident_char(text[self.i]) or text[self.i] == "."):
            raise self.fail("malformed number", start, expected="digits, a decimal point and digits, or <N>d")
        literal = text[start : self.i]
        if kind == "int":
            if len(literal.lstrip("0")) > MAX_INT_DIGITS:
                raise ConditionSyntaxError("integer out of range", pos_at(self.text, start), source=self.text,
                                           reason=errors.VALUE_OUT_OF_RANGE)
            value: object = int(literal)
        else:
            if len(literal) > MAX_DECIMAL_CHARS:
                raise ConditionSyntaxError("decimal has too many digits", pos_at(self.text, start),
                                           source=self.text, reason=errors.VALUE_OUT_OF_RANGE)
            value = Decimal(literal)
        return Token(kind, literal, start, value)

    def _string(self, start: int) -> Token:
        text, n = self.text, len(self.text)
        self.i += 1
        chars: list[str] = []
        while True:
            if self.i >= n:
                raise self.fail("unterminated string", start, expected='a closing \'"\'')
            ch = text[self.i]
            if ch == '"':
                self.i += 1
                return Token("string", text[start : self.i], start, "".join(chars))
            if ch == "\n":
                raise self.fail("line break inside a string", self.i, expected='\'\\n\' or a closing \'"\'')
            if ch == "\\":
                esc = text[self.i + 1] if self.i + 1 < n else ""
                if esc in _ESCAPES:
                    chars.append(_ESCAPES[esc])
                    self.i += 2
                    continue
                if esc == "u":
                    digits = text[self.i + 2 : self.i + 6]
                    if len(digits) != 4 or any(c not in "0123456789abcdefABCDEF" for c in digits):
                        raise self.fail("malformed \\u escape", self.i, expected="\\u and four hex digits")
                    code = int(digits, 16)
                    if code == 0 or 0xD800 <= code <= 0xDFFF:
                        raise self.fail("\\u escape of NUL or a surrogate", self.i)
                    chars.append(chr(code))
                    self.i += 6
                    continue
                raise self.fail("unknown escape", self.i, expected='one of \\" \\\\ \\/ \\n \\t \\r \\b \\f \\uXXXX')
            if ch == "\x00":
                raise self.fail("NUL inside a string", self.i)
            chars.append(ch)
            self.i += 1


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Lexer(text).tokens()
        self.k = 0
        self.depth = 0

    # helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.k]

    def pos(self, token: Token | None = None) -> Pos:
        return pos_at(self.text, (token or self.tok).offset)

    def advance(self) -> Token:
        token = self.tokens[self.k]
        if token.kind != "eof":
            self.k += 1
        return token

    def fail(self, expected: str, token: Token | None = None) -> ConditionSyntaxError:
        token = token or self.tok
        return ConditionSyntaxError(
            f"expected {expected}, found {token.describe()}", self.pos(token), expected=expected, source=self.text
        )

    def at_keyword(self, word: str) -> bool:
        return self.tok.kind == "keyword" and self.tok.value == word

    def expect(self, kind: str, expected: str) -> Token:
        if self.tok.kind != kind:
            raise self.fail(expected)
        return self.advance()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConditionSyntaxError(f"nesting deeper than {MAX_DEPTH} levels", self.pos(), source=self.text,
                                       reason=errors.TOO_DEEP)

    # grammar
    def condition(self) -> Node:
        if self.tok.kind == "eof":
            raise self.fail("a condition")
        node = self.or_expr()
        if self.tok.kind != "eof":
            raise self.fail("'and', 'or' or the end of the condition")
        return node

    def or_expr(self) -> Node:
        start = self.tok
        items = [self.and_expr()]
        while self.at_keyword("or"):
            self.advance()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items), pos=self.pos(start))

    def and_expr(self) -> Node:
        start = self.tok
        items = [self.not_expr()]
        while self.at_keyword("and"):
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items), pos=self.pos(start))

    def not_expr(self) -> Node:
        if self.at_keyword("not"):
            start = self.advance()
            self.enter()
            item = self.not_expr()
            self.depth -= 1
            return Not(item, pos=self.pos(start))
        if self.tok.kind == "(":
            self.advance()
            self.enter()
            node = self.or_expr()
            self.depth -= 1
            self.expect(")", "')' or 'and'/'or'")
            return node
        return self.predicate()

    def predicate(self) -> Node:
        start = self.tok
        operand = self.operand()
        pos = self.pos(start)
        tok = self.tok
        if tok.kind == "op":
            self.advance()
            op: CompareOp = tok.text  # type: ignore[assignment]
            return Compare(operand, op, self.value(), pos=pos)
        if self.at_keyword("between"):
            self.advance()
            low = self.value()
            if not self.at_keyword("and"):
                raise self.fail("'and' (between LOW and HIGH)")
            self.advance()
            return Between(operand, low, self.value(), pos=pos)
        if self.at_keyword("not") or self.at_keyword("in"):
            negated = self.at_keyword("not")
            if negated:
                self.advance()
                if not self.at_keyword("in"):
                    raise self.fail("'in' (not in (...))")
            self.advance()
            self.expect("(", "'(' and a list of values")
            values = [self.value()]
            while self.tok.kind == ",":
                self.advance()
                values.append(self.value())
            self.expect(")", "',' or ')'")
            return InList(operand, tuple(values), negated, pos=pos)
        if self.at_keyword("is"):
            self.advance()
            negated = self.at_keyword("not")
            if negated:
                self.advance()
            if not self.at_keyword("null"):
                raise self.fail("'null'" if negated else "'null' or 'not null'")
            self.advance()
            return IsNull(operand, negated, pos=pos)
        raise self.fail("a comparison (= != < <= > >=), 'between', 'in', 'not in' or 'is'")

    def name(self, what: str) -> str:
        if self.tok.kind not in ("ident", "keyword"):
            raise self.fail(what)
        return self.advance().text

    def operand(self) -> Operand:
        tok = self.tok
        if tok.kind != "ident":
            raise self.fail("a field, attribute, tag, feature or aggregate" if tok.kind != "eof" else "a condition")
        pos = self.pos(tok)
        nxt = self.tokens[self.k + 1]
        if tok.text in PREFIXES and nxt.kind == ".":
            self.advance()
            self.advance()
            name = self.name(f"a name after '{tok.text}.'")
            if tok.text == "attr":
                return AttributeRef(name, pos=pos)
            return TagRef(name, pos=pos) if tok.text == "tag" else FeatureRef(name, pos=pos)
        if tok.text in AGGREGATE_FUNCTIONS and nxt.kind == "(":
            return self.aggregate()
        self.advance()
        if tok.text in CORE_FIELDS:
            return CoreField(tok.text, pos=pos)  # type: ignore[arg-type]
        return AttributeRef(tok.text, pos=pos)

    def aggregate(self) -> Aggregate:
        func_tok = self.advance()
        function = func_tok.text
        self.advance()  # '('
        event = self.name("an event type")
        field: str | None = None
        if function == "count":
            if self.tok.kind == ".":
                raise self.fail("',' (count takes an event type, not a field)")
        else:
            self.expect(".", f"'.' and a field ({function}(<event>.<field>, <N>d))")
            field = self.name("an event field")
        self.expect(",", "',' and a window such as 90d")
        window_tok = self.expect("window", "a window such as 90d")
        self.expect(")", "')'")
        assert isinstance(window_tok.value, int)
        return Aggregate(function, event, field, window_tok.value,  # type: ignore[arg-type]
                         pos=self.pos(func_tok), window_pos=self.pos(window_tok))

    def value(self) -> Literal:
        tok = self.tok
        pos = self.pos(tok)
        if tok.kind == "string":
            self.advance()
            assert isinstance(tok.value, str)
            return Literal("string", tok.value, pos=pos)
        negative = False
        if tok.kind == "-":
            self.advance()
            negative = True
            if self.tok.kind not in ("int", "decimal"):
                raise self.fail("a number after '-'")
        if self.tok.kind == "int":
            number = self.advance().value
            assert isinstance(number, int)
            number = -number if negative else number
            if not -(2**63) <= number < 2**63:
                raise ConditionSyntaxError("integer out of range", pos, source=self.text,
                                           reason=errors.VALUE_OUT_OF_RANGE)
            return Literal("int", number, pos=pos)
        if self.tok.kind == "decimal":
            dec = self.advance().value
            assert isinstance(dec, Decimal)
            return Literal("decimal", -dec if negative else dec, pos=pos)
        if tok.kind == "keyword" and tok.value in ("true", "false"):
            self.advance()
            return Literal("bool", tok.value == "true", pos=pos)
        if tok.kind == "ident" and tok.text == "date" and self.tokens[self.k + 1].kind == "(":
            self.advance()
            self.advance()
            text_tok = self.expect("string", 'a date in quotes, e.g. date("2026-01-31")')
            assert isinstance(text_tok.value, str)
            try:
                if len(text_tok.value) != 10:
                    raise ValueError
                day = date.fromisoformat(text_tok.value)
            except ValueError:
                raise ConditionSyntaxError("not a date", self.pos(text_tok), expected='"YYYY-MM-DD"',
                                           source=self.text) from None
            self.expect(")", "')'")
            return Literal("date", day, pos=pos)
        raise self.fail('a value: "string", number, true, false or date("YYYY-MM-DD")')


def parse(text: str) -> Node:
    """Parses condition text into a tree (syntax only; see `check` for names and types)."""
    if len(text) > MAX_LENGTH:
        raise ConditionSyntaxError(f"condition longer than {MAX_LENGTH} characters", pos_at(text, MAX_LENGTH),
                                   source=text, reason=errors.TOO_LONG)
    return _Parser(text).condition()
