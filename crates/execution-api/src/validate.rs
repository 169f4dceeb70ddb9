//! Shape checks on everything that comes from outside, before any of it reaches the domain or
//! NATS. Each error names the field and says what is allowed.

use crate::error::ApiError;
use runcast_contract::v1::{ExecutionStatus, StepStatus};
use runcast_contract::{EntityId, WireEnum};
use std::collections::HashMap;

// The bounds of DESIGN §7: what one execution may hold, so its state (carried by every event)
// stays small enough to fan out and store at every change.
pub(crate) const MAX_LABELS: usize = 64;
pub(crate) const MAX_LABEL_KEY_BYTES: usize = 256;
pub(crate) const MAX_LABEL_VALUE_BYTES: usize = 256;
pub(crate) const MAX_NAME_BYTES: usize = 256;
pub(crate) const MAX_TEXT_BYTES: usize = 4096;
pub(crate) const MAX_INPUT_BYTES: usize = 64 * 1024;
/// The longest `heartbeat_timeout_seconds` a create may ask for (7 days).
pub(crate) const MAX_HEARTBEAT_TIMEOUT_SECONDS: u32 = 7 * 24 * 3600;
pub(crate) const MAX_PAGE_SIZE: u32 = 500;
pub(crate) const DEFAULT_PAGE_SIZE: u32 = 50;

pub(crate) fn id(field: &'static str, value: &str) -> Result<EntityId, ApiError> {
    EntityId::parse(field, value).map_err(|err| {
        ApiError::invalid(
            err.field,
            format!("{}: ids are 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'", err.problem),
        )
    })
}

/// An optional id: empty means absent.
pub(crate) fn optional_id(field: &'static str, value: &str) -> Result<Option<EntityId>, ApiError> {
    if value.is_empty() { Ok(None) } else { id(field, value).map(Some) }
}

pub(crate) fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        Err(ApiError::invalid(field, format!("is {} bytes long; at most {max} are allowed", value.len())))
    } else {
        Ok(())
    }
}

pub(crate) fn labels(labels: &HashMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::invalid(
            "labels",
            format!("has {} entries; at most {MAX_LABELS} are allowed", labels.len()),
        ));
    }
    for (key, value) in labels {
        if key.is_empty() || key.len() > MAX_LABEL_KEY_BYTES {
            return Err(ApiError::invalid("labels", format!("key {key:?} must be 1 to {MAX_LABEL_KEY_BYTES} bytes")));
        }
        text(&format!("labels[{key}]"), value, MAX_LABEL_VALUE_BYTES)?;
    }
    Ok(())
}

pub(crate) fn input(value: Option<&prost_types::Struct>) -> Result<(), ApiError> {
    let size = value.map_or(0, prost::Message::encoded_len);
    if size > MAX_INPUT_BYTES {
        Err(ApiError::invalid("input", format!("is {size} bytes encoded; at most {MAX_INPUT_BYTES} are allowed")))
    } else {
        Ok(())
    }
}

pub(crate) fn percent(value: u32) -> Result<u32, ApiError> {
    if value > 100 {
        Err(ApiError::invalid("percent", format!("is {value}; it must be between 0 and 100")))
    } else {
        Ok(value)
    }
}

fn known<E: WireEnum>(field: &str, raw: i32) -> Result<E, ApiError> {
    match E::try_from(raw) {
        Ok(value) if value.into() != 0 => Ok(value),
        Ok(_) => Err(ApiError::invalid(field, format!("is required: one of {}", E::expected()))),
        Err(_) => {
            Err(ApiError::invalid(field, format!("has the unknown value {raw}: expected one of {}", E::expected())))
        }
    }
}

pub(crate) fn execution_status(field: &str, raw: i32) -> Result<ExecutionStatus, ApiError> {
    known(field, raw)
}

pub(crate) fn step_status(field: &str, raw: i32) -> Result<StepStatus, ApiError> {
    known(field, raw)
}

pub(crate) fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_field() {
        assert!(id("execution_id", "a.b").expect_err("dot").to_string().starts_with("execution_id contains '.'"));
        assert!(id("workflow_id", "").expect_err("empty").to_string().starts_with("workflow_id is empty"));
        assert!(percent(101).expect_err("range").to_string().starts_with("percent is 101"));
        assert_eq!(percent(100), Ok(100));
        let err = execution_status("status", 0).expect_err("unspecified");
        assert!(err.to_string().contains("status is required: one of pending, running"), "{err}");
        assert!(execution_status("status", 42).expect_err("unknown").to_string().contains("unknown value 42"));
        assert!(text("message", &"x".repeat(MAX_TEXT_BYTES + 1), MAX_TEXT_BYTES).is_err());
        assert_eq!(optional_id("workflow_id", ""), Ok(None));
    }

    #[test]
    fn labels_are_bounded() {
        let many: HashMap<_, _> = (0..=MAX_LABELS).map(|n| (format!("k{n}"), "v".to_owned())).collect();
        assert!(labels(&many).expect_err("too many").to_string().starts_with("labels has 65 entries"));
        let at_limit: HashMap<_, _> = (0..MAX_LABELS).map(|n| (format!("k{n}"), "v".repeat(256))).collect();
        assert!(labels(&at_limit).is_ok());
        let long_key = HashMap::from([("k".repeat(MAX_LABEL_KEY_BYTES + 1), "v".to_owned())]);
        assert!(labels(&long_key).expect_err("long key").to_string().contains("must be 1 to 256 bytes"));
        let long_value = HashMap::from([("team".to_owned(), "x".repeat(MAX_LABEL_VALUE_BYTES + 1))]);
        assert!(labels(&long_value).expect_err("long").to_string().starts_with("labels[team] is 257 bytes"));
        assert!(labels(&HashMap::from([(String::new(), "v".to_owned())])).is_err());
        assert!(labels(&HashMap::from([("team".to_owned(), "infra".to_owned())])).is_ok());
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!((page_size(0), page_size(10), page_size(10_000)), (DEFAULT_PAGE_SIZE, 10, MAX_PAGE_SIZE));
    }
}
