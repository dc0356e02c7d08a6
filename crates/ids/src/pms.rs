//! Practice management system types and PMS IDs.

use std::fmt;
use std::str::FromStr;

use crate::Crn;
use crate::error::{Field, IdError, Rule};

/// Which practice management system a database belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PmsType {
    /// Dental4Windows, D4W Cloud and Dental4Web, from Centaur Software.
    D4w,
    /// Best Practice.
    BestPractice,
    /// Zedmed.
    Zedmed,
}

impl PmsType {
    /// Every PMS type, in declaration order.
    pub const ALL: [PmsType; 3] = [PmsType::D4w, PmsType::BestPractice, PmsType::Zedmed];

    /// The API name (`D4w`, `BestPractice`, `Zedmed`): the canonical text.
    pub fn api_name(&self) -> &'static str {
        match self {
            PmsType::D4w => "D4w",
            PmsType::BestPractice => "BestPractice",
            PmsType::Zedmed => "Zedmed",
        }
    }

    /// The query-string name (`D4w`, `Best Practice`, `Zedmed`).
    pub fn query_name(&self) -> &'static str {
        match self {
            PmsType::D4w => "D4w",
            PmsType::BestPractice => "Best Practice",
            PmsType::Zedmed => "Zedmed",
        }
    }
}

impl FromStr for PmsType {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(IdError::new(Field::PmsType, Rule::Empty, input));
        }
        PmsType::ALL
            .into_iter()
            .find(|t| {
                t.api_name().eq_ignore_ascii_case(trimmed)
                    || t.query_name().eq_ignore_ascii_case(trimmed)
            })
            .ok_or_else(|| IdError::new(Field::PmsType, Rule::UnknownPmsType, input))
    }
}

impl fmt::Display for PmsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

crate::serde_str::string_serde!(PmsType);

/// A PMS ID: the PMS type and the site id that PMS gives a practice. For D4W the
/// site id is the parent CRN; every PMS type's site id follows the CRN rule today.
///
/// Canonical text: `<api name>:<site id>`, for example `D4w:AB123`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PmsId {
    pms_type: PmsType,
    site_id: Crn,
}

impl PmsId {
    /// Pairs a PMS type with a site id.
    pub fn new(pms_type: PmsType, site_id: Crn) -> Self {
        Self { pms_type, site_id }
    }

    /// The PMS type.
    pub fn pms_type(&self) -> PmsType {
        self.pms_type
    }

    /// The site id (the parent CRN for D4W).
    pub fn site_id(&self) -> Crn {
        self.site_id
    }
}

impl FromStr for PmsId {
    type Err = IdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let trimmed = input.trim_ascii();
        if trimmed.is_empty() {
            return Err(IdError::new(Field::PmsId, Rule::Empty, input));
        }
        let (kind, site) = trimmed
            .split_once(':')
            .ok_or_else(|| IdError::new(Field::PmsId, Rule::PmsIdShape, input))?;
        let pms_type = kind
            .parse::<PmsType>()
            .map_err(|e| e.with_field(Field::PmsId))?;
        let site_id = site
            .parse::<Crn>()
            .map_err(|e| e.with_field(Field::PmsId))?;
        Ok(Self { pms_type, site_id })
    }
}

impl fmt::Display for PmsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.pms_type.api_name(), self.site_id)
    }
}

crate::serde_str::string_serde!(PmsId);
