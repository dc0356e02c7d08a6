//! Stage and Production, which never mix.

use std::fmt;
use std::str::FromStr;

use crate::error::{Field, IdError, Rule};

/// The environment of a Link, a site or a subscription key. A Stage key never
/// reaches a Production site, and the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Environment {
    /// Developer and test installs; demo databases live here, with no quotas.
    Stage,
    /// Real practices; quotas and rate limits apply.
    Production,
}

impl Environment {
    /// Both environments.
    pub const ALL: [Environment; 2] = [Environment::Stage, Environment::Production];

    /// The canonical text: `stage` or `production`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Environment::Stage => "stage",
            Environment::Production => "production",
        }
    }
}

impl FromStr for Environment {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(IdError::new(Field::Environment, Rule::Empty, input));
        }
        if trimmed.eq_ignore_ascii_case("stage") || trimmed.eq_ignore_ascii_case("staging") {
            Ok(Environment::Stage)
        } else if trimmed.eq_ignore_ascii_case("production") {
            Ok(Environment::Production)
        } else {
            Err(IdError::new(
                Field::Environment,
                Rule::UnknownEnvironment,
                input,
            ))
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::serde_str::string_serde!(Environment);
