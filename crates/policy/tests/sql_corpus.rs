//! The SQL corpus: tricky commands, each with the decision expected for a read-only
//! integrator and for one allowed to write. Write permission is checked before
//! the component lists, so a read-only integrator sending a write gets
//! `WriteNotAuthorised` even when the write also names unauthorised tables.
//!
//! Commands are analysed as SQLite reads them (the Link runs SQLite). SQL Server
//! forms that SQLite lacks either still name the same components (`TOP`, `dbo.`,
//! table hints: SQLite then refuses them at run time) or are refused here
//! (`[D4W]..[x]`, `N''` strings, nested comments, `#`).
//!
//! Authorised (both integrators): catalogue `D4W`; tables `patients`,
//! `appointments`, `providers`, `audit.log`; routines `getpatient`,
//! `reports.daily`, `fn_age`. Everything else is not authorised.

mod support;

use halo_policy::{DenyCode, ExecutionMode};
use support::*;

use DenyCode::{ComponentNotAuthorised as C, WriteNotAuthorised as W};
use ExecutionMode::{NonQuery as N, Reader as R};

/// Expected outcome: `None` is allow, `Some(code)` a deny with that code.
type Expect = Option<DenyCode>;
const A: Expect = None;
const fn d(code: DenyCode) -> Expect {
    Some(code)
}

#[rustfmt::skip]
const CORPUS: &[(&str, ExecutionMode, Expect, Expect)] = &[
    // (command, mode, reader expects, writer expects)
    // Plain reads and name normalisation.
    ("SELECT * FROM patients", R, A, A),
    ("select * from PATIENTS", R, A, A),
    ("SELECT * FROM [dbo].[Patients]", R, A, A),
    ("SELECT * FROM \"dbo\".\"PATIENTS\"", R, A, A),
    ("SELECT * FROM dbo.patients WITH (NOLOCK)", R, A, A),
    ("SELECT * FROM D4W.dbo.Patients", R, A, A),
    ("SELECT * FROM main.Patients", R, A, A),
    ("SELECT * FROM \"main\".[patients]", R, A, A),
    ("SELECT * FROM `Patients`", R, A, A),
    ("SELECT * FROM [D4W]..[Patients]", R, d(C), d(C)),
    ("SELECT * FROM temp.patients", R, d(C), d(C)),
    ("SELECT * FROM \"P\u{c4}TIENTS\"", R, d(C), d(C)),
    ("SELECT * FROM OtherDb.dbo.Patients", R, d(C), d(C)),
    ("SELECT * FROM srv.D4W.dbo.Patients", R, d(C), d(C)),
    ("SELECT * FROM AUDIT.LOG", R, A, A),
    ("SELECT * FROM log", R, d(C), d(C)),
    ("SELECT * FROM other.patients", R, d(C), d(C)),
    ("SELECT * FROM [pat ients]", R, d(C), d(C)),
    ("SELECT * FROM [dbo.patients]", R, d(C), d(C)),
    ("SELECT * FROM p\u{0430}tients", R, d(C), d(C)),
    ("SELECT TOP 10 p.Name, a.[When] FROM Patients p JOIN Appointments a ON a.PatientId = p.Id ORDER BY a.[When]", R, A, A),
    ("SELECT COUNT(*), MAX(Id), datetime('now'), IFNULL(Name, ''), iif(Id > 1, 'a', 'b') FROM patients", R, A, A),
    ("SELECT printf('%d', Id), substr(Name, 1, 2), strftime('%Y', BirthDate), group_concat(Name, ',') FROM patients", R, A, A),
    ("SELECT row_number() OVER (ORDER BY Id), CURRENT_TIMESTAMP FROM patients", R, A, A),
    ("SELECT GETDATE(), ISNULL(Name, '') FROM patients", R, d(C), d(C)),
    ("SELECT CAST(Id AS varchar(10)), CONVERT(varchar, Id) FROM patients", R, A, A),
    ("SELECT 1", R, A, A),
    ("SELECT * FROM patients WHERE name = 'x; DROP TABLE y'", R, A, A),
    ("SELECT * FROM patients WHERE name = 'it''s'; ", R, A, A),
    ("SELECT * FROM patients WHERE name LIKE '%secrets%'", R, A, A),
    ("SELECT * FROM patients WHERE name LIKE N'%secrets%'", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Id = ? OR Id = ?2 OR Name = :name OR Name = @name", R, A, A),
    ("SELECT * FROM patients LIMIT 10 OFFSET 5", R, A, A),
    ("SELECT * FROM patients LIMIT 5, 10", R, A, A),
    // Comment tricks.
    ("SELECT * FROM patients -- ; DROP TABLE patients", R, A, A),
    ("SELECT * FROM patients /* ; DROP TABLE patients */", R, A, A),
    ("SELECT * FROM patients /**/ WHERE Id = 1 /*/ still a comment */", R, A, A),
    // Dialect smuggling: SQL Server nests comments, SQLite does not. Refused.
    ("SELECT 1 /* /* */ , length(randomblob(400000000)) AS n -- */", R, d(C), d(C)),
    ("SELECT * FROM patients /* /* */ ; DROP TABLE patients */", R, d(C), d(C)),
    ("SELECT * FROM patients /*/*/ UNION SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients /* /* */ */ ; DROP TABLE patients", R, d(C), d(C)),
    ("SELECT/**/*/**/FROM/**/secrets", R, d(C), d(C)),
    ("SELECT * FROM patients /* unterminated", R, d(C), d(C)),
    ("SELECT * FROM patients --\n; SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients --x\rSELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients --x\u{2028}SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients --x\u{85}SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients\r\nWHERE Id = 1", R, A, A),
    ("SELECT * FROM patients\tWHERE Id = 1", R, A, A),
    ("SELECT * FROM patients\u{a0}secrets", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE 1 = 1 --\u{0}\nUNION SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients # ; SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Id = $id", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Id = @x(') UNION SELECT * FROM secrets --')", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Id = :x::y", R, d(C), d(C)),
    ("SELECT x\u{feff}FROM\u{feff}secrets", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Id = 1_000", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Name = 'a\\' AND Id = 1", R, A, A),
    ("SELECT 'a\\', (SELECT x FROM secrets LIMIT 1) AS y, '\\' FROM patients", R, d(C), d(C)),
    ("SELECT $$ FROM secrets $$", R, d(C), d(C)),
    ("SELECT 'a\\', (SELECT TOP 1 x FROM secrets) AS y, '\\'", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Name = 'a'' + (SELECT TOP 1 n FROM secrets) + ''b'", R, A, A),
    ("SELECT * FROM patients WHERE Name = N'x' + (SELECT TOP 1 n FROM secrets)", R, d(C), d(C)),
    ("SELECT `secrets`.* FROM `secrets`", R, d(C), d(C)),
    ("SELECT * FROM [patients] WHERE [x]]] = 1", R, d(C), d(C)),
    ("SELECT * FROM [patients]] UNION SELECT * FROM secrets --]", R, d(C), d(C)),
    ("SELECT * FROM \"pati\"\"ents\"", R, d(C), d(C)),
    // Batches.
    ("SELECT * FROM patients; SELECT * FROM appointments", R, A, A),
    ("SELECT * FROM patients; SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients; DROP TABLE patients", R, d(C), d(C)),
    ("SELECT * FROM patients DROP TABLE x", R, d(C), d(C)),
    ("SELECT * FROM patients\nGO\nDROP TABLE x", R, d(C), d(C)),
    ("SELECT * FROM patients; EXEC GetPatient 1", R, A, A),
    ("", R, d(C), d(C)),
    (";", R, d(C), d(C)),
    ("   \n -- only a comment", R, d(C), d(C)),
    // Unions, subqueries, joins into unauthorised tables.
    ("SELECT Name FROM patients UNION SELECT secret FROM passwords", R, d(C), d(C)),
    ("SELECT 1 UNION ALL SELECT * FROM secrets", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE EXISTS (SELECT 1 FROM secrets)", R, d(C), d(C)),
    ("SELECT (SELECT TOP 1 x FROM secrets) FROM patients", R, d(C), d(C)),
    ("SELECT * FROM patients p LEFT JOIN secrets s ON 1 = 1", R, d(C), d(C)),
    ("SELECT * FROM patients p CROSS APPLY (SELECT * FROM secrets s WHERE s.id = p.id) x", R, d(C), d(C)),
    ("SELECT * FROM (SELECT * FROM secrets) AS patients", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE id = (SELECT MAX(id) FROM D4W.dbo.secrets)", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE 1 = (SELECT COUNT(*) FROM sys.objects)", R, d(C), d(C)),
    ("SELECT * FROM sqlite_master", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE 1 = (SELECT count(*) FROM main.sqlite_schema)", R, d(C), d(C)),
    ("SELECT * FROM pragma_table_info('patients')", R, d(C), d(C)),
    ("SELECT * FROM patients p, json_each(p.Name)", R, d(C), d(C)),
    ("SELECT * FROM dbstat", R, d(C), d(C)),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c", R, d(C), d(C)),
    ("SELECT * FROM INFORMATION_SCHEMA.TABLES", R, d(C), d(C)),
    // CTEs.
    ("WITH recent AS (SELECT * FROM appointments) SELECT * FROM recent", R, A, A),
    ("WITH a AS (SELECT * FROM patients), b AS (SELECT * FROM a) SELECT * FROM b", R, A, A),
    ("WITH patients AS (SELECT * FROM secrets) SELECT * FROM patients", R, d(C), d(C)),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT * FROM patients) SELECT * FROM a", R, d(C), d(C)),
    ("WITH x AS (SELECT 1 AS a) SELECT * FROM x; SELECT * FROM x", R, d(C), d(C)),
    ("SELECT * FROM (WITH secrets AS (SELECT 1 AS a) SELECT * FROM secrets) t JOIN secrets s ON 1 = 1", R, d(C), d(C)),
    ("WITH d AS (DELETE FROM patients RETURNING *) SELECT * FROM d", R, d(W), A),
    ("WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d", R, d(W), d(C)),
    // Writes.
    ("INSERT INTO patients (Name) VALUES ('x')", N, d(W), A),
    ("INSERT INTO patients (Name) VALUES ('x')", R, d(W), A),
    ("INSERT INTO patients SELECT * FROM secrets", N, d(W), d(C)),
    ("INSERT INTO audit.log SELECT 1", N, d(W), A),
    ("UPDATE patients SET Name = 'x' WHERE Id = 1", N, d(W), A),
    ("UPDATE p SET Name = 'x' FROM patients p JOIN appointments a ON a.PatientId = p.Id", N, d(W), A),
    ("UPDATE secrets SET Name = 'x' FROM patients p", N, d(W), d(C)),
    ("DELETE FROM patients WHERE id IN (SELECT id FROM secrets)", N, d(W), d(C)),
    ("DELETE secrets FROM patients", N, d(W), d(C)),
    ("DELETE p FROM patients p WHERE p.Id = 1", N, d(W), A),
    ("MERGE INTO patients t USING appointments s ON t.Id = s.PatientId WHEN MATCHED THEN UPDATE SET t.Name = s.Note;", N, d(W), A),
    ("MERGE INTO patients t USING secrets s ON t.id = s.id WHEN MATCHED THEN UPDATE SET t.name = s.name;", N, d(W), d(C)),
    ("INSERT INTO patients (Name) VALUES ('x') ON CONFLICT DO UPDATE SET Name = 'y'", N, d(W), A),
    ("INSERT OR REPLACE INTO patients SELECT * FROM secrets", N, d(W), d(C)),
    ("REPLACE INTO patients VALUES (1)", N, d(W), A),
    ("DELETE FROM patients WHERE Id = 1 RETURNING *", N, d(W), A),
    ("SELECT * FROM patients", N, d(W), A),
    // SELECT INTO and DDL: never allowed.
    ("SELECT * INTO newtable FROM patients", R, d(C), d(C)),
    ("SELECT * INTO #tmp FROM patients", R, d(C), d(C)),
    ("SELECT * INTO appointments FROM patients", N, d(C), d(C)),
    ("TRUNCATE TABLE patients", N, d(C), d(C)),
    ("DROP TABLE patients", N, d(C), d(C)),
    ("CREATE TABLE x (id int)", N, d(C), d(C)),
    ("ALTER TABLE patients ADD c int", N, d(C), d(C)),
    ("CREATE VIEW v AS SELECT * FROM patients", N, d(C), d(C)),
    ("GRANT SELECT ON patients TO public", N, d(C), d(C)),
    // Other statement kinds: never allowed.
    ("ATTACH DATABASE 'x.db' AS y", R, d(C), d(C)),
    ("PRAGMA table_info(patients)", R, d(C), d(C)),
    ("SET NOCOUNT ON", R, d(C), d(C)),
    ("USE master", R, d(C), d(C)),
    ("DECLARE @x int", R, d(C), d(C)),
    ("BEGIN TRANSACTION", R, d(C), d(C)),
    ("SHUTDOWN", R, d(C), d(C)),
    ("WAITFOR DELAY '00:00:05'", R, d(C), d(C)),
    ("IF 1 = 1 SELECT * FROM patients", R, d(C), d(C)),
    ("PRAGMA writable_schema = 1", R, d(C), d(C)),
    ("ATTACH 'x.db' AS y", R, d(C), d(C)),
    ("DETACH DATABASE y", R, d(C), d(C)),
    ("VACUUM", R, d(C), d(C)),
    ("CREATE TEMP TABLE t (a)", N, d(C), d(C)),
    ("CREATE VIRTUAL TABLE t USING fts5(a)", N, d(C), d(C)),
    // Procedures and functions.
    ("EXEC GetPatient 1", R, A, A),
    ("EXEC dbo.GetPatient @id = 1", R, A, A),
    ("EXECUTE [reports].[Daily]", R, A, A),
    ("CALL GetPatient(1)", R, A, A),
    ("EXEC DeletePatient 1", N, d(W), d(C)),
    ("EXECUTE sp_executesql N'SELECT * FROM patients'", R, d(C), d(C)),
    ("EXEC ('SELECT * FROM patients')", R, d(C), d(C)),
    ("EXEC xp_cmdshell 'dir'", R, d(C), d(C)),
    ("SELECT dbo.fn_age(BirthDate) FROM patients", R, A, A),
    ("SELECT dbo.fn_secret(1) FROM patients", R, d(C), d(C)),
    ("SELECT * FROM dbo.fn_table(1)", R, d(C), d(C)),
    ("SELECT * FROM patients p OUTER APPLY dbo.fn_x(p.id) f", R, d(C), d(C)),
    ("SELECT * FROM OPENROWSET('SQLNCLI', 'Server=x;', 'SELECT 1')", R, d(C), d(C)),
    ("SELECT * FROM OPENQUERY(srv, 'SELECT 1')", R, d(C), d(C)),
    ("SELECT * FROM OPENJSON(@j)", R, d(C), d(C)),
    ("SELECT * FROM STRING_SPLIT('a,b', ',')", R, d(C), d(C)),
    // SQLite functions outside the allowlist are routines nobody is granted.
    ("SELECT length(randomblob(400000000))", R, d(C), d(C)),
    ("SELECT zeroblob(1000000000)", R, d(C), d(C)),
    ("SELECT load_extension('/tmp/x.so')", R, d(C), d(C)),
    ("SELECT readfile('/etc/passwd')", R, d(C), d(C)),
    ("SELECT sqlite_version()", R, d(C), d(C)),
    ("SELECT json_extract(Name, '$.a') FROM patients", R, d(C), d(C)),
    ("SELECT Name -> '$.a' FROM patients", R, d(C), d(C)),
    ("SELECT * FROM patients WHERE Name MATCH 'x'", R, d(C), d(C)),
    ("SELECT 1 REGEXP", R, d(C), d(C)),
    // Temporary objects and variables are not authorised components.
    ("SELECT * FROM #temp", R, d(C), d(C)),
    ("SELECT * FROM @t", R, d(C), d(C)),
    // Garbage.
    ("SELEC * FROM patients", R, d(C), d(C)),
    ("SELECT * FROM", R, d(C), d(C)),
    ("'; DROP TABLE patients; --", R, d(C), d(C)),
    ("\u{0}\u{1}SELECT", R, d(C), d(C)),
];

#[test]
fn corpus_has_at_least_sixty_commands() {
    assert!(CORPUS.len() >= 60, "{} commands", CORPUS.len());
}

#[test]
fn corpus_decisions_match() {
    let policy = grants().compile();
    let site = stage_site();
    let mut failures = Vec::new();
    for (sql, mode, reader, writer) in CORPUS {
        for (key, expected) in [(READER_STAGE, reader), (WRITER_STAGE, writer)] {
            let got = decide(&policy, key, sql, *mode, &site)
                .err()
                .map(|d| d.code());
            if got != *expected {
                failures.push(format!(
                    "{key}: {sql:?} ({mode:?}): expected {expected:?}, got {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_corpus_deny_is_a_component_or_write_denial() {
    let policy = grants().compile();
    for (sql, mode, ..) in CORPUS {
        if let Err(d) = decide(&policy, READER_STAGE, sql, *mode, &stage_site()) {
            assert!(
                matches!(
                    d.code(),
                    DenyCode::ComponentNotAuthorised | DenyCode::WriteNotAuthorised
                ),
                "{sql:?}: {d}"
            );
        }
    }
}
