"""SQL statement normalization and obfuscation for database spans (db.query.text, span names).

Literals become `?`, comments go, whitespace folds and IN / VALUES lists collapse, so a stored statement
holds no user data and equal statements group together; the operation and main table name the span.
Built on sqlparse's lexer engine with our own per-dialect rules (its default rules leak some literals).
Runs on the flush thread, never on the request path, and results are LRU-cached by statement.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterator, List, NamedTuple, Optional, Tuple

from sqlparse import tokens as T
from sqlparse.lexer import Lexer

MAX_STATEMENT_LENGTH = 4096
CACHE_SIZE = 2048


class Summary(NamedTuple):
    text: str  # normalized (and, by default, obfuscated) statement
    operation: str  # "SELECT", "INSERT", "CREATE", ... or "" when unknown
    collection: str  # main table as written, quotes stripped ("public.users"), or ""


_FAILED = Summary("?", "", "")

# ---------------------------------------------------------------------------------------------- lexing

# token kinds used below (the lexer's sqlparse token types are mapped onto these)
_WS, _WORD, _QIDENT, _STR, _NUM, _PH, _PUNCT, _OP, _COMMENT, _LINE_COMMENT, _OPEN, _ERR, _LIT = range(1, 14)

_SPACE_LIKE = frozenset((_WS, _COMMENT, _LINE_COMMENT))  # become one space
_VALUE_KINDS = frozenset((_LIT, _PH))

_T_OPEN = T.Error.Unterminated  # a quote or dollar tag that never closes: its text runs to the end

_KIND_OF = {
    T.Whitespace: _WS,
    T.Name: _WORD,
    T.String.Symbol: _QIDENT,
    T.String.Single: _STR,
    T.Literal: _STR,  # sqlparse >= 0.5.4 yields dollar-quoted strings itself, as Literal
    T.Number: _NUM,
    T.Name.Placeholder: _PH,
    T.Punctuation: _PUNCT,
    T.Operator: _OP,
    T.Comment.Single: _LINE_COMMENT,
    T.Comment.Multiline: _COMMENT,
    T.Comment.Multiline.Hint: _COMMENT,
    _T_OPEN: _OPEN,
    T.Error: _ERR,
}

# String bodies, written as unrolled loops (no nested quantifiers: no catastrophic backtracking).
_STD = r"'[^']*(?:''[^']*)*'"  # standard SQL: '' is the only escape
_ESC = r"'[^'\\]*(?:(?:''|\\[\s\S])[^'\\]*)*'"  # MySQL strings, PostgreSQL E'...': backslash escapes too
_DQ_IDENT = r'"[^"]*(?:""[^"]*)*"'
_DQ_ESC = r'"[^"\\]*(?:(?:""|\\[\s\S])[^"\\]*)*"'
_DOLLAR_OPEN = r'(?<![\w"$])'  # as PostgreSQL (and sqlparse): no $tag$ right after a name or a quote
_DOLLAR = _DOLLAR_OPEN + r"(\$(?:[^\W\d]\w*)?\$)[\s\S]*?(?-i:\1)"  # $$...$$, $tag$...$tag$ (tags case-sensitive)
_DOLLAR_UNCLOSED = _DOLLAR_OPEN + r"\$(?:[^\W\d]\w*)?\$[\s\S]*"


def _rules(dialect: str, backslash: bool) -> List[Tuple[str, object]]:
    """The lexer table for one dialect. `backslash`: plain '...' strings honour backslash escapes.

    The lexer tries the rules in order at each token: the frequent, unambiguous ones come first.
    """
    if dialect == "mysql":
        prefix = r"(?:[nbx]|_\w+)"  # N'..', X'ab', B'01', _utf8mb4'..'
        prefixed = [(prefix + _ESC, T.String.Single)]
    else:  # E'..' (backslash escapes), N'..', X'ab', B'01', U&'..'
        prefix = r"(?:[enbx]|u&)"
        if backslash:
            prefixed = [(prefix + _ESC, T.String.Single)]
        else:
            prefixed = [(r"e" + _ESC, T.String.Single), (r"(?:[nbx]|u&)" + _STD, T.String.Single)]
    prefixed.append((prefix + r"'[\s\S]*", _T_OPEN))
    rules: List[Tuple[str, object]] = [
        (r"\s+", T.Whitespace),
        (r"(?!" + prefix + r"')[^\W\d][\w$]*", T.Name),  # a word, unless it prefixes a string
        (r"[(),;]|\.(?!\d)", T.Punctuation),
        (r"[<>=!~]+|\|\||[*+&|^]", T.Operator),
        # a number, and anything glued to it (1e-5, 0xFF, 1.5f, MySQL's 2fa_codes): all of it is hidden
        (r"(?:\d|\.\d)(?:[\w$.]|(?<=[e])[+-])*", T.Number),
        (_ESC if backslash or dialect == "mysql" else _STD, T.String.Single),
        *prefixed,
    ]
    rules.append((_DQ_ESC, T.String.Single) if dialect == "mysql" else (_DQ_IDENT, T.String.Symbol))
    rules.append((r"`[^`]*(?:``[^`]*)*`", T.String.Symbol))
    if dialect in ("generic", "sqlite"):  # [bracketed name]; never holding a quote, never a bare number
        rules.append((r"(?<![\w\])])\[(?![\d\s])[^\]\['\"`\r\n]*\]", T.String.Symbol))
    rules += [
        (r"--[^\r\n]*", T.Comment.Single),
        (r"/\*[\s\S]*?\*/", T.Comment.Multiline),
        (r"/\*[\s\S]*", T.Comment.Multiline),  # unterminated: the rest of the text is comment
    ]
    if dialect == "mysql":
        rules.append((r"#[^\r\n]*", T.Comment.Single))
    elif dialect == "generic":
        rules.append((r"#(?=\s|\Z)[^\r\n]*", T.Comment.Single))  # as sqlparse: '# ' starts a comment
    rules += [
        (_DOLLAR, T.Literal),
        (_DOLLAR_UNCLOSED, _T_OPEN),
        (r"::", T.Punctuation),
        (r":=", T.Operator),
        (r"\?\d*", T.Name.Placeholder),
        (r"%(?:\(\w+\))?[sbt]", T.Name.Placeholder),  # %s, %(name)s: a name never spans a quote
        (r"(?<![\w:]):(?:[^\W\d]\w*|\d+)", T.Name.Placeholder),
        (r"\$(?:\d+|[^\W\d]\w*)", T.Name.Placeholder),
        (r"@@?[^\W\d][\w$.]*", T.Name.Placeholder),
        (r"[:\[\]{}]", T.Punctuation),
        (r"[-/%@#]", T.Operator),
        (r"['\"`][\s\S]*", _T_OPEN),
        (r"[\s\S]", T.Error),
    ]
    return rules


class _PlainLexer:
    """The same rule table run by a plain loop, for sqlparse < 0.4.4 (its Lexer takes no custom rules)."""

    def __init__(self, rules: List[Tuple[str, object]]) -> None:
        self._rules = [(re.compile(rx, re.IGNORECASE | re.UNICODE).match, ttype) for rx, ttype in rules]

    def get_tokens(self, text: str) -> Iterator[Tuple[object, str]]:
        pos, end = 0, len(text)
        while pos < end:
            for match, ttype in self._rules:  # the last rule matches any character
                m = match(text, pos)
                if m:
                    yield ttype, m.group()
                    pos = m.end()
                    break


def _make_lexer(dialect: str, backslash: bool = False) -> Any:
    rules = _rules(dialect, backslash)
    if not hasattr(Lexer, "set_SQL_REGEX"):
        return _PlainLexer(rules)
    lexer = Lexer()  # our own instance: the app's sqlparse (its default instance) is left as it is
    lexer.clear()
    lexer.set_SQL_REGEX(rules)
    return lexer


_LEXERS = {
    "generic": _make_lexer("generic"),
    "sqlite": _make_lexer("sqlite"),
    "postgresql": _make_lexer("postgresql"),
    "mysql": _make_lexer("mysql", backslash=True),
}
# generic statements are also lexed with MySQL-style backslash escapes when they hold a backslash
_GENERIC_BACKSLASH = _make_lexer("generic", backslash=True)

_DIALECTS = {
    "generic": "generic",
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}

_Tok = Tuple[int, str]


def _kind(ttype: Any) -> int:
    """The kind of a token type missing from _KIND_OF (say, one a later sqlparse yields itself)."""
    if ttype in T.Comment:
        return _COMMENT
    if ttype in T.Literal:
        return _STR
    return _ERR  # a type we do not know: treat as unsafe


def _lex(lexer: Any, text: str) -> List[_Tok]:
    known = _KIND_OF.get
    return [(known(ttype) or _kind(ttype), value) for ttype, value in lexer.get_tokens(text)]


# --------------------------------------------------------------------------------------- obfuscation

_SIGN_WORDS = frozenset((
    "SELECT", "WHERE", "AND", "OR", "NOT", "ON", "WHEN", "THEN", "ELSE", "BETWEEN", "IN", "IS", "LIKE", "ILIKE",
    "SET", "VALUES", "VALUE", "RETURN", "LIMIT", "OFFSET", "BY", "HAVING", "DEFAULT", "INTERVAL", "CASE", "ALL",
    "ANY", "SOME", "DISTINCT", "TOP",
))
_SIGN_PUNCT = frozenset("(,[;{")
_BOOLEANS = frozenset(("TRUE", "FALSE"))
_NULLISH = frozenset(("NULL", "DEFAULT"))

_OutTok = Tuple[int, str, bool]  # kind, text, preceded by a space


def _unary_sign(out: List[_OutTok]) -> bool:
    """out[-1] is '-' or '+': is it a sign (not a binary operator), judging by the token before it?"""
    if len(out) < 2:
        return True
    kind, value, _ = out[-2]
    if kind == _OP:
        return True
    if kind == _PUNCT:
        return value in _SIGN_PUNCT
    return kind == _WORD and value.upper() in _SIGN_WORDS


def _obfuscate(toks: List[_Tok], truncated: bool, nested_comments: bool) -> Optional[str]:
    """The obfuscated text, or None when the statement cannot be obfuscated safely."""
    out: List[_OutTok] = []
    space = False
    for kind, value in toks:
        if kind in _SPACE_LIKE:
            if kind == _COMMENT and nested_comments and "/*" in value[2:]:
                return None  # PostgreSQL nests comments; the lexer closed this one too early
            space = True
            continue
        if kind == _OPEN:
            if not truncated:
                return None  # unbalanced quote: we may have misread which parts are data
            if out and out[-1][0] == _LIT and not space:
                continue  # 'it''s cut here: the lexer closed 'it' early, this is its rest
            kind = _STR  # cut inside a literal: hide what is left of it
        elif kind == _ERR:
            return None
        if kind == _NUM:
            if out and out[-1][0] == _OP and out[-1][1] in ("-", "+") and _unary_sign(out):
                space = out.pop()[2]
            kind, value = _LIT, "?"
        elif kind == _STR or (kind == _WORD and value.upper() in _BOOLEANS):
            kind, value = _LIT, "?"
        out.append((kind, value, space and bool(out)))
        space = False
    return "".join(" " + value if sp else value for _, value, sp in _collapse(out))


def _group_end(out: List[_OutTok], start: int) -> int:
    """Index after the ')' matching the '(' at `start`, or 0 when there is no such group."""
    if start >= len(out) or out[start][0] != _PUNCT or out[start][1] != "(":
        return 0
    depth = 0
    for i in range(start, len(out)):
        kind, value, _ = out[i]
        if kind == _PUNCT:
            if value == "(":
                depth += 1
            elif value == ")":
                depth -= 1
                if depth == 0:
                    return i + 1
    return 0


def _only_values(out: List[_OutTok], start: int, end: int, nested: bool = True) -> bool:
    """out[start:end] is '(' item {',' item} ')', each item a literal, placeholder, NULL or DEFAULT, or
    (when `nested`) such a group itself: IN ((?, ?), (?, ?))."""
    i, last = start + 1, end - 1
    want_value = True
    while i < last:
        kind, value, _ = out[i]
        if not want_value:
            if kind != _PUNCT or value != ",":
                return False
            i += 1
        elif kind in _VALUE_KINDS or (kind == _WORD and value.upper() in _NULLISH):
            i += 1
        elif nested and kind == _PUNCT and value == "(":
            group_end = _group_end(out, i)
            if not group_end or group_end > last or not _only_values(out, i, group_end, False):
                return False
            i = group_end
        else:
            return False
        want_value = not want_value
    return not want_value


def _collapse(out: List[_OutTok]) -> List[_OutTok]:
    """IN (?, ?, ?) -> IN (?); VALUES (?, ?), (?, ?) -> VALUES (?); identical VALUES groups -> one group."""
    result: List[_OutTok] = []
    i, n = 0, len(out)
    while i < n:
        tok = out[i]
        result.append(tok)
        i += 1
        if tok[0] != _WORD:
            continue
        word = tok[1].upper()
        if word == "IN":
            end = _group_end(out, i)
            if end and _only_values(out, i, end):
                result += [(_PUNCT, "(", out[i][2]), (_LIT, "?", False), (_PUNCT, ")", False)]
                i = end
        elif word == "VALUES" or word == "VALUE":
            groups = []
            j = i
            while True:
                end = _group_end(out, j)
                if not end:
                    break
                groups.append((j, end))
                if end + 1 < n and out[end][0] == _PUNCT and out[end][1] == "," and out[end + 1][1] == "(":
                    j = end + 1
                    continue
                break
            if not groups:
                continue
            if all(_only_values(out, s, e) for s, e in groups):
                result += [(_PUNCT, "(", out[i][2]), (_LIT, "?", False), (_PUNCT, ")", False)]
                i = groups[-1][1]
            elif len(groups) > 1:
                first = [value for _, value, _ in out[groups[0][0]:groups[0][1]]]
                if all([value for _, value, _ in out[s:e]] == first for s, e in groups[1:]):
                    result += out[groups[0][0]:groups[0][1]]
                    i = groups[-1][1]
    return result


def _fold(toks: List[_Tok]) -> str:
    """The raw text with whitespace between tokens folded (a newline kept after a line comment)."""
    parts: List[str] = []
    pending = ""
    for kind, value in toks:
        if kind == _WS:
            if parts and not pending:
                pending = " "
            continue
        if pending:
            parts.append(pending)
        parts.append(value)
        pending = "\n" if kind == _LINE_COMMENT else ""
    return "".join(parts)


# ------------------------------------------------------------------------------ operation, collection

_OPERATIONS = frozenset((
    "SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "UPSERT", "CREATE", "ALTER", "DROP", "TRUNCATE",
    "RENAME", "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "CALL", "EXEC", "EXECUTE",
    "COPY", "WITH", "VALUES", "TABLE", "SET", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "ANALYZE", "VACUUM", "GRANT",
    "REVOKE", "LOCK", "UNLOCK", "USE", "PRAGMA", "DECLARE", "FETCH", "CLOSE", "PREPARE", "DEALLOCATE", "LISTEN",
    "NOTIFY", "UNLISTEN", "DO", "REFRESH", "REINDEX", "CLUSTER", "COMMENT", "LOAD", "OPTIMIZE", "CHECKPOINT",
    "DISCARD", "RESET", "ATTACH", "DETACH",
))
_CTE_MAIN = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"))
_NOT_A_TABLE = frozenset(("SELECT", "LATERAL", "WHERE", "SET", "VALUES", "VALUE", "DEFAULT", "WITH"))
_UPDATE_MODIFIERS = frozenset(("ONLY", "LOW_PRIORITY", "IGNORE", "OR", "ROLLBACK", "ABORT", "REPLACE", "FAIL"))
_DDL_SKIP = frozenset(("IF", "NOT", "EXISTS", "ONLY"))


def _unquote(value: str) -> str:
    if value[0] == "[":
        return value[1:-1]
    quote = value[0]
    return value[1:-1].replace(quote + quote, quote)


def _is(tok: _Tok, kind: int, value: str) -> bool:
    return tok[0] == kind and tok[1] == value


def _is_word(tok: _Tok, words: frozenset) -> bool:
    return tok[0] == _WORD and tok[1].upper() in words


def _table_at(sig: List[_Tok], j: int, allow_paren: bool) -> str:
    """The (dotted) table name starting at sig[j], quotes stripped, or ""."""
    parts: List[str] = []
    n = len(sig)
    while j < n:
        kind, value = sig[j]
        if kind == _WORD and (parts or value.upper() not in _NOT_A_TABLE):
            parts.append(value)
        elif kind == _QIDENT:
            parts.append(_unquote(value))
        else:
            break
        j += 1
        if j + 1 < n and _is(sig[j], _PUNCT, "."):
            j += 1
            continue
        break
    if not parts or (not allow_paren and j < n and _is(sig[j], _PUNCT, "(")):
        return ""  # FROM generate_series(...): a function, not a table
    return ".".join(parts)


def _find_word(sig: List[_Tok], start: int, word: str) -> int:
    """Index of keyword `word` at parenthesis depth 0 from `start`, or -1."""
    depth = 0
    for j in range(start, len(sig)):
        kind, value = sig[j]
        if kind == _PUNCT:
            if value == "(":
                depth += 1
            elif value == ")":
                depth -= 1
        elif depth == 0 and kind == _WORD and value.upper() == word:
            return j
    return -1


def _skip(sig: List[_Tok], j: int, words: frozenset) -> int:
    while j < len(sig) and _is_word(sig[j], words):
        j += 1
    return j


def _describe(toks: List[_Tok]) -> Tuple[str, str]:
    """(operation, collection) of the first statement."""
    sig: List[_Tok] = []
    for tok in toks:
        kind = tok[0]
        if kind in _SPACE_LIKE:
            continue
        if kind == _PUNCT and tok[1] == ";":
            if sig:
                break
            continue
        sig.append(tok)
    i = 0
    while i < len(sig) and _is(sig[i], _PUNCT, "("):
        i += 1
    if i >= len(sig) or sig[i][0] != _WORD:
        return "", ""
    op = sig[i][1].upper()
    if op not in _OPERATIONS:
        return "", ""
    if op == "WITH":  # the main statement after the CTEs: the first DML keyword outside parentheses
        j = _find_main_after_ctes(sig, i + 1)
        if j < 0:
            return op, ""
        i, op = j, sig[j][1].upper()
    table = ""
    if op in ("SELECT", "DELETE"):
        j = _find_word(sig, i + 1, "FROM")
        if j >= 0:
            table = _table_at(sig, _skip(sig, j + 1, frozenset(("ONLY",))), False)
    elif op in ("INSERT", "REPLACE", "MERGE", "UPSERT"):
        j = _find_word(sig, i + 1, "INTO")
        if j >= 0:
            table = _table_at(sig, j + 1, True)
    elif op == "UPDATE":
        table = _table_at(sig, _skip(sig, i + 1, _UPDATE_MODIFIERS), False)
    elif op in ("CREATE", "ALTER", "DROP"):
        for j in range(i + 1, min(i + 8, len(sig))):
            if sig[j][0] != _WORD:
                break
            if sig[j][1].upper() == "TABLE":
                table = _table_at(sig, _skip(sig, j + 1, _DDL_SKIP), True)
                break
    elif op == "TRUNCATE":
        table = _table_at(sig, _skip(sig, i + 1, frozenset(("TABLE", "ONLY"))), False)
    elif op == "COPY":
        table = _table_at(sig, i + 1, True)
    return op, table


def _find_main_after_ctes(sig: List[_Tok], start: int) -> int:
    depth = 0
    for j in range(start, len(sig)):
        kind, value = sig[j]
        if kind == _PUNCT:
            if value == "(":
                depth += 1
            elif value == ")":
                depth -= 1
        elif depth == 0 and kind == _WORD and value.upper() in _CTE_MAIN:
            return j
    return -1


# -------------------------------------------------------------------------------------------- public


def _compute(statement: str, truncated: bool, dialect: str, obfuscate: bool) -> Summary:
    toks = _lex(_LEXERS[dialect], statement)
    if not obfuscate:
        return Summary(_fold(toks)[:MAX_STATEMENT_LENGTH], *_describe(toks))
    nested = dialect in ("postgresql", "generic")
    text = _obfuscate(toks, truncated, nested)
    if dialect == "generic" and "\\" in statement:
        # Is a backslash an escape? PostgreSQL and SQLite say no, MySQL says yes. Take the reading that
        # lexes cleanly; when both do and disagree, hide everything.
        toks_b = _lex(_GENERIC_BACKSLASH, statement)
        text_b = _obfuscate(toks_b, truncated, nested)
        if text is None:
            text, toks = text_b, toks_b
        elif text_b is not None and text_b != text:
            text = None
    operation, collection = _describe(toks)
    if text is None:
        return Summary("?", operation, "")  # the operation is one of our keywords, never data
    return Summary(text[:MAX_STATEMENT_LENGTH], operation, collection)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _summarize_cached(statement: str, truncated: bool, dialect: str, obfuscate: bool) -> Summary:
    try:
        return _compute(statement, truncated, dialect, obfuscate)
    except Exception:
        return _FAILED  # never the raw text


def summarize(statement: str, dialect: str = "generic", obfuscate: bool = True) -> Summary:
    """Normalize `statement` (obfuscating literals unless obfuscate=False) and find its operation and table.

    dialect: "generic", "sqlite", "postgresql", "mysql" (or "mariadb"); anything else is generic.
    Cached; never raises: on any internal error the result is Summary("?", "", "").
    """
    try:
        if isinstance(statement, (bytes, bytearray)):
            statement = bytes(statement).decode("utf-8", "replace")
        if not isinstance(statement, str):
            return _FAILED
        truncated = len(statement) > MAX_STATEMENT_LENGTH
        if truncated:  # cut before the cache too: its keys stay small
            statement = statement[:MAX_STATEMENT_LENGTH]
        key = _DIALECTS.get(dialect.lower(), "generic") if isinstance(dialect, str) else "generic"
        return _summarize_cached(statement, truncated, key, bool(obfuscate))
    except Exception:
        return _FAILED


def span_name(summary: Summary, fallback: str) -> str:
    """The span name: "SELECT users"; "SELECT" when the table is unknown; `fallback` when the operation is."""
    if not summary.operation:
        return fallback
    if summary.collection:
        return summary.operation + " " + summary.collection
    return summary.operation


def clear_cache() -> None:
    _summarize_cached.cache_clear()
