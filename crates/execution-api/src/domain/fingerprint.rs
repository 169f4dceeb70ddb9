//! A request's fingerprint: what a retry under the same `request_id` must repeat.
//!
//! A `request_id` makes a retry safe: the retry is answered by its first try. A caller that reuses
//! an id for another change (a constant id, a bug) would otherwise be answered by a change it did
//! not ask for, and its own would be lost without a word. So the first try's event carries the
//! fingerprint of its request, and a retry whose fingerprint differs is refused.
//!
//! The fingerprint covers the change only, not its conditions: a retry that re-read the execution
//! and now expects another version is still the same change. Replicas of different releases must
//! agree on it during a rolling upgrade, so its encoding is fixed (see the stability test) and
//! independent of Rust's `Hash` or `Debug`.

use super::state_machine::Command;
use prost::Message as _;
use runcast_contract::v1::LogLine;
use sha2::{Digest, Sha256};

/// Bumped if the encoding below ever changes (fingerprints of different formats never match).
const FORMAT: &str = "runcast.request.v1";

/// A SHA-256 over length-prefixed fields, so `("ab", "c")` and `("a", "bc")` differ.
struct Canonical(Sha256);

impl Canonical {
    fn new(kind: &str) -> Self {
        let mut canonical = Self(Sha256::new());
        canonical.text(FORMAT).text(kind);
        canonical
    }

    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.0.update((value.len() as u64).to_le_bytes());
        self.0.update(value);
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.bytes(value.as_bytes())
    }

    fn number(&mut self, value: i64) -> &mut Self {
        self.0.update(value.to_le_bytes());
        self
    }

    /// 128 bits in hex: collisions between two changes of one caller are out of the question.
    fn finish(self) -> String {
        hex::encode(&self.0.finalize()[..16])
    }
}

impl Command {
    /// The fingerprint of this change (see the module's doc).
    pub(crate) fn fingerprint(&self) -> String {
        let mut canonical = Canonical::new(self.name());
        match self {
            Self::Create {
                tenant_id,
                execution_id,
                workflow_id,
                idempotency_key,
                labels,
                input,
                heartbeat_timeout_seconds,
            } => {
                canonical.text(tenant_id).text(execution_id).text(workflow_id).text(idempotency_key);
                let mut labels: Vec<_> = labels.iter().collect();
                labels.sort_unstable();
                canonical.number(labels.len() as i64);
                for (key, value) in labels {
                    canonical.text(key).text(value);
                }
                // prost encodes a `Struct` deterministically: its maps are ordered.
                canonical.bytes(&input.as_ref().map(|input| input.encode_to_vec()).unwrap_or_default());
                canonical.number(i64::from(*heartbeat_timeout_seconds));
            }
            Self::SetStatus { to, message, error, agent_id } => {
                canonical.number(i64::from(i32::from(*to))).text(message).text(error).text(agent_id);
            }
            Self::ReportStep { step_id, name, status, error } => {
                canonical.text(step_id).text(name).number(i64::from(i32::from(*status))).text(error);
            }
            Self::ReportProgress { percent, current_step, message } => {
                canonical.number(i64::from(*percent)).text(current_step).text(message);
            }
            Self::Cancel { reason } | Self::Pause { reason } | Self::Resume { reason } => {
                canonical.text(reason);
            }
            Self::RequestApproval { approval_id, reason, deadline } => {
                canonical.text(approval_id).text(reason);
                match deadline {
                    Some(deadline) => canonical.number(1).number(deadline.seconds).number(i64::from(deadline.nanos)),
                    None => canonical.number(0),
                };
            }
            Self::ResolveApproval { approval_id, granted, comment, resolved_by } => {
                canonical.text(approval_id).number(i64::from(*granted)).text(comment).text(resolved_by);
            }
            Self::ExpireApproval { approval_id } => {
                canonical.text(approval_id);
            }
            Self::FailForLostAgent { agent_id } => {
                canonical.text(agent_id);
            }
            Self::FailForSilence => {}
        }
        canonical.finish()
    }
}

/// The fingerprint of an upload of log lines: their texts and streams, in order (numbers are the
/// server's).
pub(crate) fn of_log_lines(lines: &[LogLine]) -> String {
    let mut canonical = Canonical::new("append logs");
    canonical.number(lines.len() as i64);
    for line in lines {
        canonical.text(&line.text).number(i64::from(line.stream));
    }
    canonical.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::{Struct, Timestamp, Value, value::Kind};
    use runcast_contract::v1::{ExecutionStatus, StepStatus};
    use std::collections::{BTreeMap, HashMap};

    fn create(labels: &[(&str, &str)], input: Option<Struct>) -> Command {
        Command::Create {
            tenant_id: "acme".into(),
            execution_id: "e1".into(),
            workflow_id: "wf".into(),
            idempotency_key: "k".into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>(),
            input,
            heartbeat_timeout_seconds: 30,
        }
    }

    fn input(entries: &[(&str, f64)]) -> Struct {
        let fields: BTreeMap<String, Value> = entries
            .iter()
            .map(|(key, number)| ((*key).to_owned(), Value { kind: Some(Kind::NumberValue(*number)) }))
            .collect();
        Struct { fields }
    }

    fn progress(percent: u32, current_step: &str, message: &str) -> Command {
        Command::ReportProgress { percent, current_step: current_step.into(), message: message.into() }
    }

    #[test]
    fn the_same_change_has_the_same_fingerprint_and_any_other_field_value_another() {
        assert_eq!(progress(40, "build", "").fingerprint(), progress(40, "build", "").fingerprint());
        let variants = [
            progress(40, "build", ""),
            progress(41, "build", ""),
            progress(40, "test", ""),
            progress(40, "build", "slow"),
            // Length prefixes: moving bytes from one field to the next is another change.
            progress(40, "buil", "d"),
            Command::SetStatus {
                to: ExecutionStatus::Running,
                message: String::new(),
                error: String::new(),
                agent_id: String::new(),
            },
            Command::SetStatus {
                to: ExecutionStatus::Completed,
                message: String::new(),
                error: String::new(),
                agent_id: String::new(),
            },
            Command::SetStatus {
                to: ExecutionStatus::Running,
                message: String::new(),
                error: String::new(),
                agent_id: "agent-7".into(),
            },
            // Same fields, another command.
            Command::Pause { reason: "r".into() },
            Command::Resume { reason: "r".into() },
            Command::Cancel { reason: "r".into() },
            Command::ReportStep {
                step_id: "s1".into(),
                name: "n".into(),
                status: StepStatus::Completed,
                error: String::new(),
            },
            Command::ReportStep {
                step_id: "s1".into(),
                name: "n".into(),
                status: StepStatus::Failed,
                error: String::new(),
            },
            Command::RequestApproval { approval_id: "a".into(), reason: String::new(), deadline: None },
            Command::RequestApproval {
                approval_id: "a".into(),
                reason: String::new(),
                deadline: Some(Timestamp { seconds: 0, nanos: 0 }),
            },
            Command::ResolveApproval {
                approval_id: "a".into(),
                granted: true,
                comment: String::new(),
                resolved_by: "u".into(),
            },
            Command::ResolveApproval {
                approval_id: "a".into(),
                granted: false,
                comment: String::new(),
                resolved_by: "u".into(),
            },
            Command::ExpireApproval { approval_id: "a".into() },
            Command::FailForLostAgent { agent_id: "a".into() },
            Command::FailForSilence,
            create(&[], None),
            create(&[("team", "ml")], None),
            create(&[], Some(input(&[("n", 1.0)]))),
        ];
        let fingerprints: std::collections::HashSet<String> = variants.iter().map(Command::fingerprint).collect();
        assert_eq!(fingerprints.len(), variants.len(), "every change is told apart");
    }

    #[test]
    fn labels_and_input_fields_in_any_order_are_the_same_create() {
        let labels = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5"), ("f", "6")];
        let reversed: Vec<_> = labels.iter().rev().copied().collect();
        let (one, other) = (create(&labels, None), create(&reversed, None));
        assert_eq!(one.fingerprint(), other.fingerprint());
        let entries = [("x", 1.0), ("y", 2.0)];
        let swapped = [("y", 2.0), ("x", 1.0)];
        assert_eq!(create(&[], Some(input(&entries))).fingerprint(), create(&[], Some(input(&swapped))).fingerprint());
    }

    #[test]
    fn log_uploads_differ_by_text_stream_and_order() {
        let line = |text: &str, stream: i32| LogLine { text: text.into(), stream, ..Default::default() };
        let first = [line("a", 1), line("b", 1)];
        assert_eq!(of_log_lines(&first), of_log_lines(&first));
        // The server numbers lines: a retry numbered differently is the same upload.
        let renumbered = [LogLine { line_number: 9, ..line("a", 1) }, line("b", 1)];
        assert_eq!(of_log_lines(&first), of_log_lines(&renumbered));
        for other in [vec![line("b", 1), line("a", 1)], vec![line("a", 2), line("b", 1)], vec![line("a", 1)]] {
            assert_ne!(of_log_lines(&first), of_log_lines(&other), "{other:?}");
        }
    }

    /// Replicas of two releases side by side (a rolling upgrade) must compute the same
    /// fingerprint for the same change: this value changing means the encoding did, and `FORMAT`
    /// must be bumped with it.
    #[test]
    fn the_encoding_is_stable_across_releases() {
        let canonical = {
            let mut expected = Sha256::new();
            for field in [FORMAT, "report progress"] {
                expected.update((field.len() as u64).to_le_bytes());
                expected.update(field.as_bytes());
            }
            expected.update(40_i64.to_le_bytes());
            for field in ["build", "halfway"] {
                expected.update((field.len() as u64).to_le_bytes());
                expected.update(field.as_bytes());
            }
            hex::encode(&expected.finalize()[..16])
        };
        assert_eq!(progress(40, "build", "halfway").fingerprint(), canonical);
        assert_eq!(canonical.len(), 32);
    }
}
