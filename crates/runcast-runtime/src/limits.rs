//! Process limits a server should set for itself rather than leave to the shell that started it.

/// Raises the soft limit on open files to the hard limit and returns the new soft limit. A
/// gateway holds one descriptor per connection, and the common soft default (1024) would cap a
/// replica far below its design load while the hard limit allows much more.
pub fn raise_open_files_limit() -> Result<u64, nix::Error> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(getrlimit(Resource::RLIMIT_NOFILE)?.0)
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit};

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let raised = super::raise_open_files_limit().expect("allowed: soft ≤ hard");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("readable");
        assert_eq!((raised, soft), (hard, hard));
    }
}
