use runcast_runtime::{allocator, config, shutdown, telemetry};
use std::process::ExitCode;
use ws_gateway::{Application, Config, SERVICE};

// A connection's queue and its writer's batch are allocated per burst and freed once drained (an
// idle connection holds neither); glibc's malloc and free were 5 % of the gateway's samples with
// one frame per burst, and mimalloc carries the overload and the storm better (issue 11; docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Pages purged 10 ms after their free: an idle replica holds no memory a burst freed.
    let allocator = allocator::configure(Some(10));
    let config: Config = config::parse_or_exit();
    let runtime = match ws_gateway::scheduler::builder().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{SERVICE}: cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let _telemetry = telemetry::init(&config.telemetry, SERVICE);
        allocator.report();
        let result = match Application::build(config).await {
            Ok(app) => app.run_until_stopped(shutdown::on_signal()).await,
            Err(err) => Err(err),
        };
        config::exit_code(SERVICE, result)
    })
}
