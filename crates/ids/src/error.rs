//! The one error type of this crate.

use std::fmt;

/// Which identifier failed to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// A [`LinkGuid`](crate::LinkGuid).
    LinkGuid,
    /// A [`HaloGuid`](crate::HaloGuid).
    HaloGuid,
    /// A [`Crn`](crate::Crn).
    Crn,
    /// A [`PmsType`](crate::PmsType).
    PmsType,
    /// A [`PmsId`](crate::PmsId).
    PmsId,
    /// An [`Environment`](crate::Environment).
    Environment,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::LinkGuid => "link guid",
            Field::HaloGuid => "halo guid",
            Field::Crn => "crn",
            Field::PmsType => "pms type",
            Field::PmsId => "pms id",
            Field::Environment => "environment",
        })
    }
}

/// The rule an input broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Rule {
    /// Nothing but whitespace was given.
    Empty,
    /// A GUID was not 32 hex digits, hyphenated 8-4-4-4-12, or braced hyphenated.
    GuidShape,
    /// The all-zero (nil) GUID names nothing.
    NilGuid,
    /// A CRN was longer than [`Crn::MAX_LEN`](crate::Crn::MAX_LEN) characters.
    CrnTooLong,
    /// A CRN held something other than ASCII letters and digits.
    CrnCharacter,
    /// The name is not one of the known PMS types.
    UnknownPmsType,
    /// A PMS ID was not of the form `<pms type>:<site id>`.
    PmsIdShape,
    /// The name is not one of the known environments.
    UnknownEnvironment,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Empty => "must not be empty",
            Rule::GuidShape => {
                "must be 32 hex digits, hyphenated 8-4-4-4-12, or that form in braces"
            }
            Rule::NilGuid => "must not be the nil guid",
            Rule::CrnTooLong => "must be at most 20 characters",
            Rule::CrnCharacter => "must hold only ascii letters and digits",
            Rule::UnknownPmsType => "must be one of D4w, BestPractice (Best Practice), Zedmed",
            Rule::PmsIdShape => "must be <pms type>:<site id>",
            Rule::UnknownEnvironment => "must be stage (or staging) or production",
        })
    }
}

/// An identifier that failed validation.
///
/// The message names the field, the rule broken and an escaped excerpt of the input
/// of at most [`IdError::EXCERPT_MAX`] characters, never the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {rule} (input \"{excerpt}\")")]
pub struct IdError {
    field: Field,
    rule: Rule,
    excerpt: String,
}

impl IdError {
    /// The longest excerpt of the input an error carries, in characters.
    pub const EXCERPT_MAX: usize = 40;

    pub(crate) fn new(field: Field, rule: Rule, input: &str) -> Self {
        Self {
            field,
            rule,
            excerpt: excerpt(input),
        }
    }

    /// The identifier that failed.
    pub fn field(&self) -> Field {
        self.field
    }

    /// The rule it broke.
    pub fn rule(&self) -> Rule {
        self.rule
    }

    /// The escaped excerpt of the input.
    pub fn excerpt(&self) -> &str {
        &self.excerpt
    }

    /// The same error, reported against another field (used by composite ids).
    pub(crate) fn with_field(mut self, field: Field) -> Self {
        self.field = field;
        self
    }
}

/// Escapes `input` and cuts it to at most [`IdError::EXCERPT_MAX`] characters,
/// ending in `...` when cut.
fn excerpt(input: &str) -> String {
    const ELLIPSIS: &str = "...";
    let escaped = input.chars().flat_map(char::escape_debug);
    let whole: String = escaped.clone().take(IdError::EXCERPT_MAX + 1).collect();
    if whole.chars().count() <= IdError::EXCERPT_MAX {
        return whole;
    }
    let mut out: String = escaped
        .take(IdError::EXCERPT_MAX - ELLIPSIS.len())
        .collect();
    out.push_str(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_short_input_whole() {
        assert_eq!(excerpt("abc"), "abc");
        let forty = "x".repeat(40);
        assert_eq!(excerpt(&forty), forty);
    }

    #[test]
    fn excerpt_cuts_long_input_to_forty_chars() {
        let long = "y".repeat(500);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), 40);
        assert!(e.ends_with("..."));
    }

    #[test]
    fn excerpt_escapes_control_characters() {
        let e = excerpt("a\u{0}b\n");
        assert_eq!(e, "a\\0b\\n");
        let many = "\u{1}".repeat(100);
        assert!(excerpt(&many).chars().count() <= 40);
    }
}
