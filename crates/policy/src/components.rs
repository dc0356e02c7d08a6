//! Finding the database components a SQL command touches, with a real SQL parser.
//!
//! [`extract_components`] reads each command in the dialect of the database that
//! will run it: SQLite, which the Link executes. It lexes the text twice, once as
//! SQLite's own tokenizer does (the lexical gate, [`lex`]) and once with sqlparser's
//! `SQLiteDialect`, refuses the command unless both agree on every name, string,
//! number, parameter and comment, then parses it and walks the whole tree with a
//! [`Visitor`], so tables in joins, subqueries, `UNION` arms, `EXISTS`,
//! `INSERT ... SELECT`, `UPDATE ... FROM`, upserts and CTE bodies are all found.
//! Fail closed everywhere:
//!
//! - text that does not parse, or holds no statement, is an error;
//! - so is text the analyser and SQLite could lex differently
//!   ([`PolicyError::SqlAmbiguous`]): NUL and other control characters (other than
//!   tab, LF and CRLF), non-ASCII whitespace, non-ASCII characters outside strings
//!   and quoted names, nested or unterminated block comments, `#` and `$`,
//!   prefixed strings (`N''`), Tcl-style parameters, `]]` in bracketed names,
//!   numbers running into names (see [`lex`] for the full list);
//! - constructs this module does not analyse (four-part names, `TABLE t`, the
//!   `MATCH` and `REGEXP` operators, `->` and `->>`) are errors;
//! - table-valued functions (SQLite's eponymous virtual tables: `pragma_*(...)`,
//!   `json_each(...)`, ...), SQLite's internal tables (`sqlite_*`) and `pragma_*`
//!   tables make the command [`StatementKind::Other`], which no grant allows; so do
//!   the SQL Server escape hatches integrators used to Halo might still send
//!   (`OPENROWSET`, `sp_executesql`, `xp_` procedures, ...);
//! - a function that is not one of [`SQLITE_FUNCTIONS`] (or is schema-qualified)
//!   counts as a routine that must be authorised like a stored procedure (the Link
//!   refuses it anyway: it runs only the functions of the same list);
//! - a CTE name hides a table only inside the query that defines it, and only for
//!   the CTEs after it and the main query: a CTE body naming its own CTE is treated as
//!   the real table (a false deny for recursive CTEs, never a false allow).
//!
//! Names are normalised as SQLite resolves them: identifier quotes (`[x]`, `"x"`,
//! `` `x` ``) are removed, ASCII case is folded to lowercase (SQLite compares names
//! ignoring ASCII case only, so other letters keep their case), the `main` schema is
//! dropped (`main.Patients` and `patients` are the same table), and so is `dbo`, so
//! grants and commands written for SQL Server still read (`dbo.Patients` names
//! `patients`; SQLite itself then refuses the unknown schema), other schemas stay
//! (`temp.x`, `audit.log`), and a three-part name's first part is recorded as a
//! catalogue reference (SQLite refuses such names at run time).
//!
//! The Link enforces the allowlist again at the database (authorizer, function
//! allowlist, read-only connection), so a wrong assumption here costs a false deny
//! there, not a leak.

mod lex;

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, FromTable, ObjectName, ObjectNamePart, Query, SetExpr, Statement, TableFactor,
    TableWithJoins, UpdateTableFromKind, Value, Visit, Visitor,
};
use sqlparser::dialect::SQLiteDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::PolicyError;

/// What kind of statement a command holds. A batch holds the union of its kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StatementKind {
    /// `SELECT` (without `INTO`), `VALUES`.
    Read,
    /// `INSERT`, `UPDATE`, `DELETE`, `MERGE` (also inside a CTE).
    Write,
    /// `EXEC` / `CALL` of a named stored procedure.
    Call,
    /// Schema changes: `CREATE`, `ALTER`, `DROP`, `TRUNCATE`, `SELECT INTO`,
    /// `GRANT`/`REVOKE`/`DENY`.
    Ddl,
    /// Anything else (`SET`, `USE`, `DECLARE`, `PRAGMA`, `ATTACH`, transactions,
    /// dynamic SQL, `OPENROWSET`, ...). Never allowed.
    Other,
}

impl StatementKind {
    const fn bit(self) -> u8 {
        match self {
            StatementKind::Read => 1,
            StatementKind::Write => 2,
            StatementKind::Call => 4,
            StatementKind::Ddl => 8,
            StatementKind::Other => 16,
        }
    }
}

/// The components one command (possibly a `;` batch) references, normalised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Components {
    tables: Vec<String>,
    procedures: Vec<String>,
    catalogues: Vec<String>,
    kinds: u8,
    statements: usize,
}

impl Components {
    /// Tables and views, normalised, sorted, without duplicates.
    pub fn tables(&self) -> impl ExactSizeIterator<Item = &str> {
        self.tables.iter().map(String::as_str)
    }

    /// Stored procedures and user functions, normalised, sorted, without duplicates.
    pub fn procedures(&self) -> impl ExactSizeIterator<Item = &str> {
        self.procedures.iter().map(String::as_str)
    }

    /// Catalogues named by three-part names, lowercase, sorted, without duplicates.
    pub fn catalogues(&self) -> impl ExactSizeIterator<Item = &str> {
        self.catalogues.iter().map(String::as_str)
    }

    /// Whether any statement is of `kind`.
    pub fn has(&self, kind: StatementKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// Whether anything writes or changes the schema.
    pub fn writes(&self) -> bool {
        self.has(StatementKind::Write) || self.has(StatementKind::Ddl)
    }

    /// Number of top-level statements in the batch.
    pub fn statement_count(&self) -> usize {
        self.statements
    }
}

/// The parser's recursion limit (sqlparser's default is 50), and the deepest
/// nesting of parentheses a command may have. Real commands nest far less; deeper
/// ones are refused (fail closed) before parsing.
pub const MAX_NESTING: usize = 24;

/// Parses `sql` and returns every component it touches.
///
/// ```
/// use halo_policy::{extract_components, StatementKind};
/// let c = extract_components(
///     "WITH recent AS (SELECT * FROM [dbo].[Appointments]) \
///      SELECT p.Name FROM Patients p JOIN recent r ON r.PatientId = p.Id",
/// )?;
/// assert_eq!(c.tables().collect::<Vec<_>>(), ["appointments", "patients"]);
/// assert!(c.has(StatementKind::Read) && !c.writes());
/// # Ok::<(), halo_policy::PolicyError>(())
/// ```
///
/// # Errors
/// [`PolicyError::EmptySql`], [`PolicyError::SqlParse`],
/// [`PolicyError::SqlAmbiguous`] or [`PolicyError::SqlUnsupported`]: the command
/// must then be denied.
pub fn extract_components(sql: &str) -> Result<Components, PolicyError> {
    check_characters(sql)?;
    let lexemes = lex::scan(sql)?;
    let tokens = Tokenizer::new(&SQLiteDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| parse_error(&e))?;
    let tokens = lex::join_parameters(tokens);
    lex::check_agreement(&lexemes, &tokens)?;
    let significant = check_tokens(&tokens)?;
    // Parsing, walking and dropping the tree all recurse once per level of nesting
    // (a chain `a + b + c ...` is as deep as it is long). Run them on a stack sized
    // for the worst case of this many tokens: in place when the current stack has
    // room (short commands), else on a fresh segment.
    let need = STACK_BASE.saturating_add(significant.saturating_mul(STACK_PER_TOKEN));
    stacker::maybe_grow(need, need, || parse_and_collect(tokens))
}

/// Most tokens (other than whitespace and comments) a command may hold.
pub const MAX_TOKENS: usize = 4096;

/// Deepest nesting of `CASE` expressions (the parser backtracks on them, so deep
/// nesting costs exponential time).
pub const MAX_CASE_NESTING: usize = 8;

/// Stack reserved per significant token, generous enough for a debug build.
const STACK_PER_TOKEN: usize = 64 * 1024;
/// Stack reserved for any command.
const STACK_BASE: usize = 256 * 1024;

fn parse_error(e: &dyn std::fmt::Display) -> PolicyError {
    let text = e.to_string();
    PolicyError::SqlParse(text.chars().take(200).collect())
}

/// Bounds the work the parser may do: at most [`MAX_TOKENS`] significant tokens,
/// parentheses nested at most [`MAX_NESTING`] deep, `CASE` at most
/// [`MAX_CASE_NESTING`]. Returns the number of significant tokens.
fn check_tokens(tokens: &[TokenWithSpan]) -> Result<usize, PolicyError> {
    let (mut count, mut parens, mut cases) = (0usize, 0usize, 0usize);
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::LParen => {
                parens += 1;
                if parens > MAX_NESTING {
                    return Err(PolicyError::SqlUnsupported("nesting too deep"));
                }
            }
            Token::RParen => parens = parens.saturating_sub(1),
            Token::Word(w) if w.keyword == Keyword::CASE => {
                cases += 1;
                if cases > MAX_CASE_NESTING {
                    return Err(PolicyError::SqlUnsupported(
                        "case expressions nested too deep",
                    ));
                }
            }
            Token::Word(w) if w.keyword == Keyword::END => cases = cases.saturating_sub(1),
            // sqlparser's SQLite dialect panics on a `MATCH` or `REGEXP` with no
            // right operand; neither works on the Link (no full-text tables, no
            // `regexp` function), so both are refused before parsing.
            Token::Word(w)
                if w.quote_style.is_none()
                    && matches!(w.keyword, Keyword::MATCH | Keyword::REGEXP) =>
            {
                return Err(PolicyError::SqlUnsupported(
                    "the MATCH and REGEXP operators",
                ));
            }
            _ => {}
        }
        count += 1;
        if count > MAX_TOKENS {
            return Err(PolicyError::SqlUnsupported("command too long"));
        }
    }
    Ok(count)
}

fn parse_and_collect(tokens: Vec<TokenWithSpan>) -> Result<Components, PolicyError> {
    let statements = Parser::new(&SQLiteDialect {})
        .with_recursion_limit(MAX_NESTING)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| parse_error(&e))?;
    if statements.is_empty() {
        return Err(PolicyError::EmptySql);
    }
    let mut c = Collector::default();
    for s in &statements {
        if let ControlFlow::Break(e) = s.visit(&mut c) {
            return Err(e);
        }
    }
    Ok(Components {
        tables: c.tables.into_iter().collect(),
        procedures: c.procedures.into_iter().collect(),
        catalogues: c.catalogues.into_iter().collect(),
        kinds: c.kinds,
        statements: statements.len(),
    })
}

/// Refuses characters on which the analyser and SQLite could disagree about where a
/// comment, string or identifier ends: NUL (SQLite stops reading there), other
/// control characters than tab, line feed and a carriage return that starts a CRLF
/// pair (a lone CR does not end a `--` comment), whitespace other than ASCII (NBSP,
/// U+2028, NEL...) and the byte-order mark (SQLite reads U+FEFF as a space, even
/// inside a word).
fn check_characters(sql: &str) -> Result<(), PolicyError> {
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        let ok = match c {
            '\0' => {
                return Err(PolicyError::SqlAmbiguous(
                    "nul character (SQLite stops reading at it)",
                ));
            }
            '\t' | '\n' | ' ' => true,
            '\r' => chars.peek() == Some(&'\n'),
            '\u{feff}' => false,
            c => !c.is_control() && !c.is_whitespace(),
        };
        if !ok {
            return Err(PolicyError::SqlAmbiguous(
                "control character, byte-order mark or non-ascii whitespace",
            ));
        }
    }
    Ok(())
}

/// A normalised object name: optional catalogue, and `name` or `schema.name`.
struct Normalised {
    catalogue: Option<String>,
    object: String,
    single_part: bool,
}

fn normalise_name(name: &ObjectName) -> Result<Normalised, PolicyError> {
    let mut parts = Vec::with_capacity(name.0.len());
    for part in &name.0 {
        match part {
            // A quoted name with a dot inside (`[audit.log]`) would normalise like
            // schema `audit`, table `log`: refuse it rather than let one grant
            // cover the other.
            ObjectNamePart::Identifier(ident) if ident.value.contains('.') => {
                return Err(PolicyError::SqlUnsupported(
                    "a quoted name with a dot inside",
                ));
            }
            ObjectNamePart::Identifier(ident) => parts.push(ident.value.to_ascii_lowercase()),
            ObjectNamePart::Function(_) => {
                return Err(PolicyError::SqlUnsupported("function in an object name"));
            }
        }
    }
    let (catalogue, schema, object) = match parts.as_slice() {
        [o] => (None, None, o.clone()),
        [s, o] => (None, Some(s.clone()), o.clone()),
        [c, s, o] => (Some(c.clone()), Some(s.clone()), o.clone()),
        _ => {
            return Err(PolicyError::SqlUnsupported(
                "four-part (linked server) names",
            ));
        }
    };
    if object.trim().is_empty() || catalogue.as_ref().is_some_and(|c| c.trim().is_empty()) {
        return Err(PolicyError::SqlUnsupported("empty name part"));
    }
    let object = match schema.as_deref() {
        None | Some("") | Some("main") | Some("dbo") => object,
        Some(s) => format!("{s}.{object}"),
    };
    Ok(Normalised {
        catalogue,
        single_part: name.0.len() == 1,
        object,
    })
}

/// Normalises the name of a procedure as grants, commands and the Link's
/// configured procedures all name it: ASCII case folded, identifier quotes removed,
/// `main.` and `dbo.` dropped (`[dbo].[GetPatient]` is `getpatient`).
///
/// # Errors
/// [`PolicyError::InvalidName`] for anything but a one- or two-part name.
pub fn normalise_procedure(name: &str) -> Result<String, PolicyError> {
    normalise_object(name)
}

/// The components of a call of the named procedure (`command.type:
/// storedProcedure`): that one procedure, of kind [`StatementKind::Call`], and
/// nothing else: the Link runs the text it has configured under that name. SQL
/// Server's escape hatches (`sp_executesql`, `xp_...`, `sys.` ...) are
/// [`StatementKind::Other`], which no grant allows.
///
/// # Errors
/// [`PolicyError::InvalidName`] when `name` is not a procedure name.
pub fn procedure_components(name: &str) -> Result<Components, PolicyError> {
    let object = normalise_object(name)?;
    let mut kinds = StatementKind::Call.bit();
    if FORBIDDEN_ROWSETS.contains(&object.as_str())
        || DYNAMIC_SQL_PROCEDURES.contains(&object.as_str())
        || object.starts_with("xp_")
        || object.starts_with("sys.")
    {
        kinds |= StatementKind::Other.bit();
    }
    Ok(Components {
        tables: Vec::new(),
        procedures: vec![object],
        catalogues: Vec::new(),
        kinds,
        statements: 1,
    })
}

/// Normalises a table or procedure name given in a grant, exactly as names in
/// commands are normalised (one- or two-part; a catalogue belongs in `catalogues`),
/// read with the same SQLite dialect.
pub(crate) fn normalise_object(text: &str) -> Result<String, PolicyError> {
    let bad = || PolicyError::InvalidName(text.chars().take(40).collect());
    let mut parser = Parser::new(&SQLiteDialect {})
        .try_with_sql(text)
        .map_err(|_| bad())?;
    let name = parser.parse_object_name(false).map_err(|_| bad())?;
    if parser.peek_token().token != Token::EOF || name.0.len() > 2 {
        return Err(bad());
    }
    normalise_name(&name).map(|n| n.object).map_err(|_| bad())
}

/// Normalises a catalogue name given in a grant or a request.
pub(crate) fn normalise_catalogue(text: &str) -> Result<String, PolicyError> {
    let bad = || PolicyError::InvalidName(text.chars().take(40).collect());
    let mut parser = Parser::new(&SQLiteDialect {})
        .try_with_sql(text)
        .map_err(|_| bad())?;
    let name = parser.parse_object_name(false).map_err(|_| bad())?;
    if parser.peek_token().token != Token::EOF || name.0.len() != 1 {
        return Err(bad());
    }
    normalise_name(&name).map(|n| n.object).map_err(|_| bad())
}

/// The SQL functions a command may call without a grant: SQLite built-ins that are
/// cheap, read nothing but their arguments (and the clock, for the date functions)
/// and whose result size is bounded by the Link's value-length limit. Lowercase,
/// sorted.
///
/// The Link allows exactly these (its authorizer denies every other function, so
/// `randomblob`, `zeroblob`, `load_extension`, the JSON and full-text helpers and
/// the `sqlite_*` introspection functions never run there); anything else called as
/// a function here is a routine that needs a grant. `LIKE` is listed because SQLite
/// runs the operator as the function `like`.
pub const SQLITE_FUNCTIONS: &[&str] = &[
    "abs",
    "avg",
    "char",
    "coalesce",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_date",
    "current_time",
    "current_timestamp",
    "date",
    "datetime",
    "dense_rank",
    "first_value",
    "format",
    "group_concat",
    "hex",
    "if",
    "ifnull",
    "iif",
    "instr",
    "julianday",
    "lag",
    "last_value",
    "lead",
    "length",
    "like",
    "likelihood",
    "likely",
    "lower",
    "ltrim",
    "max",
    "min",
    "nth_value",
    "ntile",
    "nullif",
    "octet_length",
    "percent_rank",
    "printf",
    "quote",
    "rank",
    "replace",
    "round",
    "row_number",
    "rtrim",
    "strftime",
    "string_agg",
    "substr",
    "substring",
    "sum",
    "time",
    "timediff",
    "total",
    "trim",
    "typeof",
    "unicode",
    "unixepoch",
    "unlikely",
    "upper",
];

/// SQL Server rowset functions that reach outside the database (integrators used to
/// Halo may still send them): never allowed.
const FORBIDDEN_ROWSETS: &[&str] = &["openrowset", "openquery", "opendatasource", "openxml"];

/// SQL Server procedures that run dynamic SQL (whose components cannot be known):
/// never allowed.
const DYNAMIC_SQL_PROCEDURES: &[&str] = &[
    "sp_executesql",
    "sp_sqlexec",
    "sp_prepare",
    "sp_prepexec",
    "sp_execute",
    "sp_cursoropen",
];

#[derive(Default)]
struct Collector {
    /// Visible CTE names, innermost query last.
    scopes: Vec<Vec<String>>,
    /// CTE bodies (by address) and the CTE names visible inside each.
    cte_bodies: Vec<(usize, Vec<String>)>,
    tables: BTreeSet<String>,
    procedures: BTreeSet<String>,
    catalogues: BTreeSet<String>,
    kinds: u8,
    /// `UPDATE p ... FROM patients p`: the target `p` is an alias, not a table; the
    /// next relation visit with this name is skipped once.
    alias_targets: Vec<String>,
}

/// Aliases given to table sources in a `FROM` list.
fn aliases(from: &[TableWithJoins]) -> Vec<String> {
    let mut out = Vec::new();
    for twj in from {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            let alias = match factor {
                TableFactor::Table { alias, .. } | TableFactor::Derived { alias, .. } => alias,
                _ => &None,
            };
            if let Some(a) = alias {
                out.push(a.name.value.to_ascii_lowercase());
            }
        }
    }
    out
}

impl Collector {
    fn mark(&mut self, kind: StatementKind) {
        self.kinds |= kind.bit();
    }

    fn in_cte_scope(&self, name: &str) -> bool {
        self.scopes
            .last()
            .is_some_and(|s| s.iter().any(|n| n == name))
    }

    fn add_table(&mut self, name: &ObjectName) -> Result<(), PolicyError> {
        let n = normalise_name(name)?;
        if n.single_part && self.in_cte_scope(&n.object) {
            return Ok(());
        }
        if n.single_part {
            if let Some(i) = self.alias_targets.iter().position(|a| *a == n.object) {
                self.alias_targets.swap_remove(i);
                return Ok(());
            }
        }
        let last = n.object.rsplit('.').next().unwrap_or_default();
        if FORBIDDEN_ROWSETS.contains(&last)
            || last.starts_with("sqlite_")
            || last.starts_with("pragma_")
        {
            // SQLite's own tables (`sqlite_schema`, `sqlite_stat1`, ...) and its
            // pragma virtual tables are never a component an integrator may read.
            self.mark(StatementKind::Other);
        }
        if let Some(c) = n.catalogue {
            self.catalogues.insert(c);
        }
        self.tables.insert(n.object);
        Ok(())
    }

    fn add_routine(&mut self, name: &ObjectName, is_procedure: bool) -> Result<(), PolicyError> {
        let n = normalise_name(name)?;
        let o = n.object.as_str();
        if !is_procedure && n.single_part && SQLITE_FUNCTIONS.contains(&o) {
            return Ok(());
        }
        if FORBIDDEN_ROWSETS.contains(&o)
            || DYNAMIC_SQL_PROCEDURES.contains(&o)
            || o.starts_with("xp_")
            || o.starts_with("sys.")
        {
            self.mark(StatementKind::Other);
        }
        if let Some(c) = n.catalogue {
            self.catalogues.insert(c);
        }
        self.procedures.insert(n.object);
        Ok(())
    }

    /// Marks writes and `SELECT INTO` in a query body (set operations included).
    fn classify_body(&mut self, body: &SetExpr) -> Result<(), PolicyError> {
        match body {
            SetExpr::Select(select) => {
                if let Some(into) = &select.into {
                    self.mark(StatementKind::Ddl);
                    self.add_table(&into.name)?;
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.classify_body(left)?;
                self.classify_body(right)?;
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                self.mark(StatementKind::Write);
            }
            SetExpr::Query(_) | SetExpr::Values(_) => {}
            SetExpr::Table(_) => return Err(PolicyError::SqlUnsupported("TABLE statement")),
        }
        Ok(())
    }
}

fn flow(r: Result<(), PolicyError>) -> ControlFlow<PolicyError> {
    match r {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => ControlFlow::Break(e),
    }
}

impl Visitor for Collector {
    type Break = PolicyError;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<PolicyError> {
        let addr = query as *const Query as usize;
        let outer = self.scopes.last().cloned().unwrap_or_default();
        let scope = match self.cte_bodies.iter().position(|(a, _)| *a == addr) {
            Some(i) => self.cte_bodies.swap_remove(i).1,
            None => {
                let mut scope = outer.clone();
                if let Some(with) = &query.with {
                    let mut earlier = outer.clone();
                    for cte in &with.cte_tables {
                        let body = &*cte.query as *const Query as usize;
                        self.cte_bodies.push((body, earlier.clone()));
                        let name = cte.alias.name.value.to_ascii_lowercase();
                        earlier.push(name.clone());
                        scope.push(name);
                    }
                }
                scope
            }
        };
        self.scopes.push(scope);
        flow(self.classify_body(&query.body))
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<PolicyError> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<PolicyError> {
        flow(self.add_table(relation))
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<PolicyError> {
        match factor {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    // A table-valued function: in SQLite an eponymous virtual table
                    // (`pragma_table_info(...)`, `json_each(...)`, `dbstat`, ...),
                    // never allowed. Still listed as a routine (and, as the visitor
                    // also reports the name as a relation, as a table).
                    self.mark(StatementKind::Other);
                    return flow(self.add_routine(name, true));
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { .. }
            | TableFactor::NestedJoin { .. }
            | TableFactor::Pivot { .. }
            | TableFactor::Unpivot { .. } => ControlFlow::Continue(()),
            _ => ControlFlow::Break(PolicyError::SqlUnsupported("table source")),
        }
    }

    fn pre_visit_value(&mut self, value: &Value) -> ControlFlow<PolicyError> {
        // Only the literal forms SQLite has (the lexical gate refuses the others
        // before parsing; this is the second line). Others (`$$dollar$$`, `E'..'`,
        // `N'..'`, raw and triple-quoted strings) would make the parser skip text
        // that SQLite reads as code.
        match value {
            Value::Number(..)
            | Value::SingleQuotedString(_)
            | Value::HexStringLiteral(_)
            | Value::Boolean(_)
            | Value::Null
            | Value::Placeholder(_) => ControlFlow::Continue(()),
            _ => ControlFlow::Break(PolicyError::SqlUnsupported("literal form")),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<PolicyError> {
        match expr {
            Expr::Function(f) => flow(self.add_routine(&f.name, false)),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<PolicyError> {
        let kind = match statement {
            Statement::Query(_) => StatementKind::Read,
            Statement::Insert(_)
            | Statement::Update { .. }
            | Statement::Delete(_)
            | Statement::Merge { .. } => StatementKind::Write,
            Statement::Execute {
                name: Some(name),
                immediate: false,
                ..
            } => {
                if let ControlFlow::Break(e) = flow(self.add_routine(name, true)) {
                    return ControlFlow::Break(e);
                }
                StatementKind::Call
            }
            Statement::Call(f) => {
                if let ControlFlow::Break(e) = flow(self.add_routine(&f.name, true)) {
                    return ControlFlow::Break(e);
                }
                StatementKind::Call
            }
            Statement::CreateView { .. }
            | Statement::CreateTable(_)
            | Statement::CreateVirtualTable { .. }
            | Statement::CreateIndex(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateFunction(_)
            | Statement::CreateTrigger(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateType { .. }
            | Statement::CreateRole { .. }
            | Statement::AlterTable { .. }
            | Statement::AlterIndex { .. }
            | Statement::AlterView { .. }
            | Statement::AlterRole { .. }
            | Statement::Drop { .. }
            | Statement::DropFunction { .. }
            | Statement::DropProcedure { .. }
            | Statement::DropTrigger(_)
            | Statement::Truncate { .. }
            | Statement::RenameTable(_)
            | Statement::Grant { .. }
            | Statement::Revoke { .. }
            | Statement::Deny(_) => StatementKind::Ddl,
            _ => StatementKind::Other,
        };
        self.mark(kind);
        match statement {
            Statement::Delete(delete) => {
                // `DELETE t FROM u`: `t` is a target the visitor does not report; a
                // table unless it is an alias of the FROM list.
                let from = match &delete.from {
                    FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
                };
                let known = aliases(from);
                for name in &delete.tables {
                    if name.0.len() == 1
                        && known
                            .iter()
                            .any(|a| normalise_name(name).is_ok_and(|n| n.object == *a))
                    {
                        continue;
                    }
                    if let ControlFlow::Break(e) = flow(self.add_table(name)) {
                        return ControlFlow::Break(e);
                    }
                }
            }
            Statement::Update {
                table,
                from: Some(from),
                ..
            } => {
                let from = match from {
                    UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f) => f,
                };
                if let TableFactor::Table {
                    name, args: None, ..
                } = &table.relation
                {
                    if let Ok(n) = normalise_name(name) {
                        if n.single_part
                            && table.joins.is_empty()
                            && aliases(from).contains(&n.object)
                        {
                            self.alias_targets.push(n.object);
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}
