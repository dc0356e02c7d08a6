//! Commands are analysed as SQLite (the Link's database) reads them, and text the
//! analyser and SQLite could lex differently is refused with a reason
//! ([`PolicyError::SqlAmbiguous`]), never guessed at (issue 10, "dialect
//! smuggling").
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use halo_policy::{Deny, DenyCode, PolicyError, StatementKind, extract_components};
use proptest::prelude::*;

/// Each smuggling form, with a word its reason must contain.
const AMBIGUOUS: &[(&str, &str)] = &[
    // The reported attack: SQL Server nests comments, SQLite does not.
    (
        "SELECT 1 /* /* */ , length(randomblob(400000000)) AS n -- */",
        "inside a block comment",
    ),
    (
        "SELECT * FROM patients /*/*/ UNION SELECT * FROM secrets",
        "inside a block comment",
    ),
    (
        "SELECT * FROM patients /* runs to the end",
        "unterminated block comment",
    ),
    ("SELECT * FROM patients # ; SELECT * FROM secrets", "`#`"),
    ("SELECT $$ FROM secrets $$", "`$`"),
    ("SELECT * FROM patients WHERE Id = $id", "`$`"),
    ("SELECT a$b FROM patients", "`$`"),
    (
        "SELECT * FROM patients WHERE Id = @x(') UNION SELECT * FROM secrets --')",
        "Tcl",
    ),
    ("SELECT * FROM patients WHERE Id = :x::y", "Tcl"),
    ("SELECT * FROM patients WHERE Name = N'x'", "prefix"),
    (
        "SELECT * FROM patients WHERE Name = E'\\' UNION SELECT * FROM secrets --'",
        "prefix",
    ),
    (
        "SELECT * FROM [patients]] UNION SELECT * FROM secrets --]",
        "`]]`",
    ),
    (
        "SELECT * FROM patients WHERE Id = 1_000",
        "number runs into a name",
    ),
    (
        "SELECT * FROM patients WHERE Id = 0x1g",
        "number runs into a name",
    ),
    ("SELECT x\u{feff}FROM\u{feff}secrets", "byte-order mark"),
    ("SELECT * FROM patients\u{a0}secrets", "whitespace"),
    (
        "SELECT * FROM patients --x\rSELECT * FROM secrets",
        "control character",
    ),
    ("SELECT 1\0; DELETE FROM patients", "nul"),
    ("SELECT * FROM p\u{0430}tients", "non-ascii"),
    (
        "SELECT * FROM patients WHERE Name = 'unterminated",
        "unterminated string",
    ),
    ("SELECT * FROM patients WHERE Id = x'abc'", "hex digits"),
    ("SELECT {fn now()}", "does not accept"),
    ("SELECT Name -> '$.a' FROM patients", "`->`"),
];

#[test]
fn smuggling_forms_are_refused_with_a_reason() {
    for (sql, reason) in AMBIGUOUS {
        match extract_components(sql) {
            Err(e @ PolicyError::SqlAmbiguous(r)) => {
                assert!(r.contains(reason), "{sql:?}: {r:?} should say {reason:?}");
                let deny = Deny::unanalysable(&e);
                assert_eq!(deny.code(), DenyCode::ComponentNotAuthorised);
                assert!(deny.message().contains(reason), "{}", deny.message());
                assert!(deny.message().contains("SQLite"), "{}", deny.message());
            }
            other => panic!("{sql:?}: expected an ambiguity, got {other:?}"),
        }
    }
}

#[test]
fn forms_sqlite_and_the_analyser_read_alike_are_accepted() {
    for (sql, tables) in [
        ("SELECT * FROM patients /* a */ -- b", &["patients"][..]),
        (
            "SELECT * FROM patients /**/ WHERE 1 = 1 /*/ ok */",
            &["patients"],
        ),
        (
            "SELECT * FROM \"Patients\", [Appointments], `providers`",
            &["appointments", "patients", "providers"],
        ),
        ("SELECT * FROM \"a\"\"b\", `c``d`", &["a\"b", "c`d"]),
        (
            "SELECT 'a\\', 'it''s', X'00ff', 0x1F, 1e5, .5 FROM patients",
            &["patients"],
        ),
        (
            "SELECT * FROM patients WHERE Id = ? OR Id = ?3 OR Id = :id OR Id = @id",
            &["patients"],
        ),
        (
            "SELECT * FROM main.patients\r\nWHERE Name = 'P\u{e4}tients \u{1f600}'",
            &["patients"],
        ),
        ("SELECT * FROM \"P\u{c4}tients\"", &["p\u{c4}tients"]),
        (
            "SELECT a || b, a == b, a != b, a <> b, a & b, a | b FROM t",
            &["t"],
        ),
    ] {
        let c = extract_components(sql).unwrap_or_else(|e| panic!("{sql:?}: {e}"));
        assert_eq!(c.tables().collect::<Vec<_>>(), tables, "{sql:?}");
    }
}

#[test]
fn sqlite_internals_and_virtual_tables_are_never_allowed() {
    for sql in [
        "SELECT * FROM sqlite_master",
        "SELECT * FROM main.sqlite_schema",
        "SELECT * FROM temp.sqlite_temp_master",
        "SELECT * FROM \"SQLITE_STAT1\"",
        "SELECT * FROM pragma_database_list",
        "SELECT * FROM pragma_table_info('patients')",
        "SELECT * FROM patients p, json_each(p.Name)",
        "SELECT * FROM generate_series(1, 10)",
    ] {
        let c = extract_components(sql).unwrap();
        assert!(c.has(StatementKind::Other), "{sql}: {c:?}");
    }
}

#[test]
fn match_and_regexp_are_refused_not_a_panic() {
    // sqlparser's SQLite dialect unwraps the right operand of these operators.
    for sql in [
        "SELECT 1 REGEXP",
        "SELECT 1 MATCH",
        "SELECT a MATCH 'x' FROM t",
    ] {
        assert!(
            matches!(extract_components(sql), Err(PolicyError::SqlUnsupported(_))),
            "{sql}"
        );
    }
}

/// Commands the analyser accepts, to wrap comments and strings around.
const BASE: &[&str] = &[
    "SELECT * FROM patients",
    "SELECT p.Name FROM patients p JOIN appointments a ON a.PatientId = p.Id",
    "SELECT count(*) FROM patients WHERE Id IN (SELECT PatientId FROM appointments)",
    "INSERT INTO audit.log SELECT 1",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    /// Nothing inside a block comment changes the analysis: the comment is
    /// transparent, or (with a `/*` inside) the command is refused.
    #[test]
    fn block_comments_hide_nothing(base in 0..BASE.len(), junk in "[ -~\u{e9}\u{1f600}]{0,40}") {
        prop_assume!(!junk.contains("*/"));
        let sql = format!("{} /* {junk} */", BASE[base]);
        let got = extract_components(&sql);
        if format!(" {junk} *").contains("/*") {
            prop_assert!(matches!(got, Err(PolicyError::SqlAmbiguous(_))), "{sql:?}: {got:?}");
        } else {
            prop_assert_eq!(got.unwrap(), extract_components(BASE[base]).unwrap(), "{}", sql);
        }
    }

    /// Nothing after `--` up to the line end changes the analysis.
    #[test]
    fn line_comments_hide_nothing(base in 0..BASE.len(), junk in "[ -~\u{e9}]{0,40}") {
        let sql = format!("{} --{junk}", BASE[base]);
        prop_assert_eq!(extract_components(&sql).unwrap(), extract_components(BASE[base]).unwrap());
    }

    /// Nothing inside a string literal changes the analysis.
    #[test]
    fn strings_hide_nothing(junk in "[ -~\u{e9}\u{1f600}]{0,40}") {
        let literal = junk.replace('\'', "''");
        let sql = format!("{} WHERE 'x' <> '{literal}'", BASE[0]);
        prop_assert_eq!(extract_components(&sql).unwrap(), extract_components(BASE[0]).unwrap());
    }

    /// SQL-like noise never panics the analyser, and a refusal says why briefly.
    #[test]
    fn sql_like_noise_never_panics(pieces in proptest::collection::vec(prop_oneof![
        Just("SELECT"), Just(" "), Just("*"), Just("FROM"), Just("t"), Just("MATCH"),
        Just("REGEXP"), Just("'"), Just("\""), Just("`"), Just("["), Just("]"), Just("/*"),
        Just("*/"), Just("--"), Just("\n"), Just("#"), Just("$"), Just("@a"), Just(":a"),
        Just("?"), Just("("), Just(")"), Just("N'"), Just("x'"), Just("0x"), Just("1"),
        Just("."), Just(","), Just(";"), Just("\u{feff}"), Just("\u{e9}"), Just("->"),
        Just("CASE"), Just("END"), Just("WITH"), Just("AS"),
    ], 0..24)) {
        let sql: String = pieces.concat();
        if let Err(e) = extract_components(&sql) {
            prop_assert!(e.to_string().len() < 400, "{e}");
        }
    }
}

#[test]
fn a_quoted_name_with_a_dot_inside_is_refused_not_confused_with_schema_and_table() {
    // `[audit.log]` is one table named "audit.log"; `audit.log` is table `log` in
    // schema `audit`. Normalised alike, one grant would cover the other.
    for sql in [
        "SELECT * FROM [audit.log]",
        "SELECT * FROM \"audit.log\"",
        "SELECT * FROM `audit.log`",
        "SELECT * FROM main.[audit.log]",
    ] {
        let e = extract_components(sql).unwrap_err();
        assert!(
            matches!(e, PolicyError::SqlUnsupported(m) if m.contains("dot inside")),
            "{sql}: {e:?}"
        );
    }
    let two_parts = extract_components("SELECT * FROM audit.log").unwrap();
    assert_eq!(two_parts.tables().collect::<Vec<_>>(), ["audit.log"]);
}
