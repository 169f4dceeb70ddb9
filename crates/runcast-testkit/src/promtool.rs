//! `promtool check metrics` (Debian's `prometheus` package) over a `/metrics` page: the
//! exposition format, names, help texts and units as Prometheus itself checks them.

use crate::{HarnessError, Result};
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `page`; the error carries promtool's complaints.
pub fn check_metrics(page: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| {
            HarnessError::io("cannot run promtool (install Debian's `prometheus` package; .ci/run does)", err)
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(page.as_bytes()).map_err(|err| HarnessError::io("cannot feed promtool", err))?;
    }
    let output = child.wait_with_output().map_err(|err| HarnessError::io("promtool did not finish", err))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError(format!(
            "promtool check metrics failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}
