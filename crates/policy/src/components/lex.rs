//! The lexical gate: reads a command the way SQLite's own tokenizer
//! (`sqlite3GetToken` in `tokenize.c`) does, accepts only the lexical forms that it
//! and sqlparser's `SQLiteDialect` read alike, and then checks that sqlparser's
//! tokens really are the same words, strings, numbers, parameters and comments.
//!
//! A command that the analyser and the executor could split differently (where a
//! comment, a string or a name ends) could hide text from the analyser that the
//! database then runs. Such text is refused, never guessed at:
//!
//! - a `/*` inside a block comment (SQL Server nests comments, SQLite does not) and
//!   an unterminated block comment (SQLite accepts one at the end of input);
//! - `#` and `$` anywhere outside a string, a quoted name or a comment (`#` starts a
//!   comment in MySQL, `$$` a string in PostgreSQL, SQLite reads both as parameter
//!   prefixes and `$` also as a letter of names);
//! - parameters in SQLite's Tcl form (`:a(x)`, `@a::b`), whose `(...)` part SQLite
//!   reads as part of the name, up to the next space;
//! - a string prefixed by a letter (`N'x'`, `E'x'`, `B'x'`; `X'00'` blobs are fine);
//! - `]]` after a bracketed name (sqlparser reads an escaped `]`, SQLite the end of
//!   the name);
//! - a number running into a name (`1_000`, `1abc`, `0x1g`);
//! - any character other than ASCII outside strings, quoted names and comments
//!   (SQLite reads a byte-order mark as a space and every other non-ASCII character
//!   as a letter, sqlparser only some of them);
//! - an unterminated string or quoted name, and ASCII characters SQLite does not
//!   accept (`{`, `^`, `\`, a lone `!`, ...).

use sqlparser::tokenizer::{Token, TokenWithSpan, Whitespace, Word};

use crate::PolicyError;

/// One significant lexeme: what must be read alike by both lexers. Punctuation is
/// not listed (it cannot hide text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lexeme {
    /// A name or keyword, unescaped, with its quote character (`"`, `` ` ``, `[`).
    Word(String, Option<char>),
    /// A `'...'` string, unescaped.
    Str(String),
    /// The digits of an `X'..'` blob or a `0x..` integer (sqlparser reads both alike).
    Hex(String),
    /// A decimal number as written.
    Number(String),
    /// A parameter as written (`?`, `?3`, `:name`, `@name`).
    Param(String),
    /// A comment's text (without `--` or `/* */`, and without the line end).
    Comment(String),
}

fn ambiguous(reason: &'static str) -> PolicyError {
    PolicyError::SqlAmbiguous(reason)
}

/// Whether SQLite's tokenizer counts `b` as part of a name (`IdChar`): ASCII letters
/// and digits, `_`, `$`, and every byte of a non-ASCII character.
fn sqlite_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn find(haystack: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The end (exclusive) of a quoted token starting at `start` (the opening quote
/// `quote`), where a doubled quote stands for one; and the unescaped contents.
fn quoted(sql: &str, start: usize, quote: u8) -> Result<(String, usize), PolicyError> {
    let b = sql.as_bytes();
    let mut i = start + 1;
    let mut value = String::new();
    let mut from = i;
    loop {
        let Some(&c) = b.get(i) else {
            return Err(ambiguous("unterminated string or quoted name"));
        };
        if c == quote {
            value.push_str(&sql[from..i]);
            if b.get(i + 1) == Some(&quote) {
                value.push(char::from(quote));
                i += 2;
                from = i;
                continue;
            }
            return Ok((value, i + 1));
        }
        i += 1;
    }
}

/// Splits `sql` as SQLite does, refusing every form the two lexers could read
/// differently. `sql` has already passed the character check (no control
/// characters other than tab, LF and CRLF, no non-ASCII whitespace).
pub(super) fn scan(sql: &str) -> Result<Vec<Lexeme>, PolicyError> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        if out.len() > 2 * super::MAX_TOKENS {
            // Bounded work before sqlparser tokenizes anything (comments are
            // lexemes here, not tokens there, hence the factor).
            return Err(PolicyError::SqlUnsupported("command too long"));
        }
        let next = b.get(i + 1).copied();
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            b'-' if next == Some(b'-') => {
                let end = find(b, i + 2, b"\n").unwrap_or(b.len());
                let text = sql[i + 2..end].trim_end_matches('\r');
                out.push(Lexeme::Comment(text.to_owned()));
                i = end;
            }
            b'/' if next == Some(b'*') => {
                let Some(close) = find(b, i + 2, b"*/") else {
                    return Err(ambiguous(
                        "unterminated block comment (SQLite runs it to the end of the text)",
                    ));
                };
                // `/*` anywhere after the opener, the closing `*` included
                // (`/*/*/` nests for SQL Server).
                if find(&b[..close + 1], i + 2, b"/*").is_some() {
                    return Err(ambiguous(
                        "`/*` inside a block comment (comments nest in some dialects, not in SQLite)",
                    ));
                }
                out.push(Lexeme::Comment(sql[i + 2..close].to_owned()));
                i = close + 2;
            }
            b'\'' => {
                let (value, end) = quoted(sql, i, b'\'')?;
                out.push(Lexeme::Str(value));
                i = end;
            }
            b'"' | b'`' => {
                let (value, end) = quoted(sql, i, c)?;
                out.push(Lexeme::Word(value, Some(char::from(c))));
                i = end;
            }
            b'[' => {
                let Some(close) = find(b, i + 1, b"]") else {
                    return Err(ambiguous("unterminated string or quoted name"));
                };
                if b.get(close + 1) == Some(&b']') {
                    return Err(ambiguous(
                        "`]]` after a bracketed name (SQLite ends the name at the first `]`)",
                    ));
                }
                out.push(Lexeme::Word(sql[i + 1..close].to_owned(), Some('[')));
                i = close + 1;
            }
            b'0'..=b'9' => i = number(sql, i, &mut out)?,
            b'.' if next.is_some_and(|n| n.is_ascii_digit()) => i = number(sql, i, &mut out)?,
            b'?' => {
                let end = digits_end(b, i + 1);
                if b.get(end).is_some_and(|&n| sqlite_id_char(n)) {
                    return Err(ambiguous("a parameter number runs into a name"));
                }
                out.push(Lexeme::Param(sql[i..end].to_owned()));
                i = end;
            }
            b':' | b'@' => {
                let mut end = i + 1;
                while b
                    .get(end)
                    .is_some_and(|&n| n.is_ascii_alphanumeric() || n == b'_')
                {
                    end += 1;
                }
                match b.get(end) {
                    _ if end == i + 1 => {
                        return Err(ambiguous("`:` or `@` not followed by a parameter name"));
                    }
                    Some(b'(' | b':' | b'$') => {
                        return Err(ambiguous(
                            "a parameter followed by `(`, `:` or `$` (SQLite reads Tcl-style names)",
                        ));
                    }
                    Some(&n) if n >= 0x80 => {
                        return Err(ambiguous("a parameter name with non-ascii characters"));
                    }
                    _ => {}
                }
                out.push(Lexeme::Param(sql[i..end].to_owned()));
                i = end;
            }
            b'$' => {
                return Err(ambiguous(
                    "`$` outside a string (a parameter or a letter for SQLite, a string quote elsewhere)",
                ));
            }
            b'#' => {
                return Err(ambiguous(
                    "`#` outside a string (a parameter for SQLite, a comment elsewhere)",
                ));
            }
            b'x' | b'X' if next == Some(b'\'') => {
                let (digits, end) = quoted(sql, i + 1, b'\'')?;
                if digits.len() % 2 != 0 || !digits.bytes().all(|d| d.is_ascii_hexdigit()) {
                    return Err(ambiguous(
                        "a blob literal that is not an even number of hex digits",
                    ));
                }
                out.push(Lexeme::Hex(digits));
                i = end;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut end = i + 1;
                while b
                    .get(end)
                    .is_some_and(|&n| n.is_ascii_alphanumeric() || n == b'_')
                {
                    end += 1;
                }
                match b.get(end) {
                    Some(b'\'') => {
                        return Err(ambiguous(
                            "a string literal with a prefix (N'', E'', B'', ...); only X'' blobs are read alike",
                        ));
                    }
                    Some(b'"' | b'`' | b'[') => {
                        return Err(ambiguous("a quoted name directly after a word"));
                    }
                    Some(&n) if n >= 0x80 => {
                        return Err(ambiguous(
                            "non-ascii character outside a string or quoted name",
                        ));
                    }
                    _ => {}
                }
                out.push(Lexeme::Word(sql[i..end].to_owned(), None));
                i = end;
            }
            b'(' | b')' | b';' | b',' | b'+' | b'-' | b'*' | b'/' | b'%' | b'&' | b'~' | b'='
            | b'<' | b'>' | b'|' | b'.' => i += 1,
            b'!' if next == Some(b'=') => i += 2,
            c if c >= 0x80 => {
                return Err(ambiguous(
                    "non-ascii character outside a string or quoted name",
                ));
            }
            _ => {
                return Err(ambiguous(
                    "a character SQLite does not accept outside a string",
                ));
            }
        }
    }
    Ok(out)
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Reads a number starting at `start` as SQLite does; returns its end.
fn number(sql: &str, start: usize, out: &mut Vec<Lexeme>) -> Result<usize, PolicyError> {
    let b = sql.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let mut i;
    if at(start) == Some(b'0')
        && matches!(at(start + 1), Some(b'x' | b'X'))
        && at(start + 2).is_some_and(|h| h.is_ascii_hexdigit())
    {
        i = start + 2;
        while at(i).is_some_and(|h| h.is_ascii_hexdigit()) {
            i += 1;
        }
        out.push(Lexeme::Hex(sql[start + 2..i].to_owned()));
    } else {
        i = digits_end(b, start);
        if at(i) == Some(b'.') {
            i = digits_end(b, i + 1);
        }
        if matches!(at(i), Some(b'e' | b'E')) {
            let digit_at = |j: usize| at(j).is_some_and(|d| d.is_ascii_digit());
            if digit_at(i + 1) {
                i = digits_end(b, i + 1);
            } else if matches!(at(i + 1), Some(b'+' | b'-')) && digit_at(i + 2) {
                i = digits_end(b, i + 2);
            }
        }
        out.push(Lexeme::Number(sql[start..i].to_owned()));
    }
    if at(i).is_some_and(sqlite_id_char) {
        return Err(ambiguous(
            "a number runs into a name (`1_000`, `1abc`, `0x1g`)",
        ));
    }
    Ok(i)
}

/// Joins `:` / `@` and the name that directly follows into one placeholder (the
/// SQLite dialect splits them; SQLite reads one parameter).
pub(super) fn join_parameters(tokens: Vec<TokenWithSpan>) -> Vec<TokenWithSpan> {
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    for t in tokens {
        let prefix = match out.last().map(|p| &p.token) {
            Some(Token::Colon) => Some(':'),
            Some(Token::AtSign) => Some('@'),
            _ => None,
        };
        let name = match (&t.token, prefix) {
            (
                Token::Word(Word {
                    value,
                    quote_style: None,
                    ..
                }),
                Some(_),
            ) => Some(value.clone()),
            (Token::Number(n, false), Some(_)) => Some(n.clone()),
            _ => None,
        };
        match (prefix, name, out.last_mut()) {
            (Some(p), Some(name), Some(last)) => {
                last.token = Token::Placeholder(format!("{p}{name}"));
                last.span = last.span.union(&t.span);
            }
            _ => out.push(t),
        }
    }
    out
}

/// Checks that sqlparser's tokens are exactly the lexemes SQLite reads: the same
/// names, strings, numbers, parameters and comments in the same order, and no
/// token of a kind SQLite does not have.
pub(super) fn check_agreement(
    lexemes: &[Lexeme],
    tokens: &[TokenWithSpan],
) -> Result<(), PolicyError> {
    let mut theirs = Vec::with_capacity(lexemes.len());
    for t in tokens {
        let l = match &t.token {
            Token::Word(w) => Lexeme::Word(w.value.clone(), w.quote_style),
            Token::SingleQuotedString(s) => Lexeme::Str(s.clone()),
            Token::HexStringLiteral(s) => Lexeme::Hex(s.clone()),
            Token::Number(n, false) => Lexeme::Number(n.clone()),
            Token::Placeholder(p) => Lexeme::Param(p.clone()),
            Token::Whitespace(Whitespace::SingleLineComment { comment, prefix })
                if prefix == "--" =>
            {
                let text = comment.strip_suffix('\n').unwrap_or(comment);
                Lexeme::Comment(text.trim_end_matches('\r').to_owned())
            }
            Token::Whitespace(Whitespace::MultiLineComment(c)) => Lexeme::Comment(c.clone()),
            Token::Whitespace(Whitespace::Space | Whitespace::Newline | Whitespace::Tab)
            | Token::EOF
            | Token::Comma
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::Period
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::StringConcat
            | Token::Ampersand
            | Token::Pipe
            | Token::Tilde
            | Token::ShiftLeft
            | Token::ShiftRight => continue,
            _ => {
                return Err(ambiguous(
                    "a token SQLite does not have or reads differently (`->`, `::`, ...)",
                ));
            }
        };
        theirs.push(l);
    }
    if theirs != lexemes {
        return Err(ambiguous(
            "the analyser and SQLite would split this command differently",
        ));
    }
    Ok(())
}
