//! A profile of the whole machine while a benchmark measures, for finding where the CPU went.

/// `perf record -a` of the whole machine from `start` until dropped, into the file `BENCH_PERF`
/// names (nothing when it is not set): where the CPU of every process went while a rate was measured.
/// `BENCH_PERF_CALL_GRAPH=dwarf` unwinds binaries built without frame pointers (PostgreSQL).
pub struct SystemProfile(Option<std::process::Child>);

impl SystemProfile {
    pub fn start() -> Self {
        let Ok(output) = std::env::var("BENCH_PERF") else { return Self(None) };
        let call_graph = std::env::var("BENCH_PERF_CALL_GRAPH").unwrap_or_else(|_| "fp".to_owned());
        let perf = std::process::Command::new("perf")
            .args(["record", "-a", "-F", "499", "-q", "--call-graph", &call_graph, "-o", &output])
            .stdout(std::process::Stdio::null())
            .spawn();
        Self(perf.inspect_err(|err| eprintln!("BENCH_PERF: cannot start perf: {err}")).ok())
    }
}

impl Drop for SystemProfile {
    fn drop(&mut self) {
        if let Some(mut perf) = self.0.take() {
            // perf writes its file on SIGINT.
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(perf.id() as i32), nix::sys::signal::Signal::SIGINT);
            let _ = perf.wait();
        }
    }
}
