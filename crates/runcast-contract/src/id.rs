//! Ids that become part of a NATS subject (tenant, execution, agent, workflow) must match
//! `[A-Za-z0-9_-]{1,64}`: a dot, `*`, `>` or space would change which subjects a message reaches.
//! Everything from outside the process passes through [`EntityId::parse`] before it gets near NATS.

use std::fmt;

pub const MAX_ID_LEN: usize = 64;

/// A validated id, safe to put in a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntityId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}: ids are 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'")]
pub struct InvalidId {
    /// The request field the id came from, e.g. `execution_id`.
    pub field: &'static str,
    pub problem: String,
}

impl EntityId {
    pub fn parse(field: &'static str, value: &str) -> Result<Self, InvalidId> {
        let problem = if value.is_empty() {
            "is empty".to_owned()
        } else if value.len() > MAX_ID_LEN {
            format!("is {} bytes long", value.len())
        } else if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-')) {
            format!("contains {bad:?}")
        } else {
            return Ok(Self(value.to_owned()));
        };
        Err(InvalidId { field, problem })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for EntityId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet_up_to_64_characters() {
        for ok in ["a", "exec-01_X", "0", &"z".repeat(64), "01935f6e-8c1a-7c3e-9f00-000000000001"] {
            assert_eq!(EntityId::parse("execution_id", ok).map(|id| id.to_string()), Ok(ok.to_owned()));
        }
    }

    #[test]
    fn refuses_everything_that_could_change_a_subject() {
        let too_long = "a".repeat(65);
        let cases = [
            ("", "is empty"),
            ("a.b", "contains '.'"),
            ("*", "contains '*'"),
            (">", "contains '>'"),
            ("a b", "contains ' '"),
            (too_long.as_str(), "is 65 bytes long"),
            ("café", "contains 'é'"),
            ("tab\there", "contains '\\t'"),
            ("a/b", "contains '/'"),
        ];
        for (value, problem) in cases {
            let err = EntityId::parse("tenant_id", value).expect_err(value);
            assert_eq!(err.field, "tenant_id");
            assert_eq!(err.problem, problem, "for {value:?}");
            assert!(err.to_string().starts_with("tenant_id "), "{err}");
        }
    }
}
