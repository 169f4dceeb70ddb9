use execution_api::{Application, Config, SERVICE};
use runcast_runtime::{allocator, config, shutdown, telemetry};
use std::process::ExitCode;

// glibc malloc's arena locks were 17 % of the api's CPU under ingest load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let allocator = allocator::configure(None);
    let config: Config = config::parse_or_exit();
    let _telemetry = telemetry::init(&config.telemetry, SERVICE);
    allocator.report();
    let result = match Application::build(config).await {
        Ok(app) => app.run_until_stopped(shutdown::on_signal()).await,
        Err(err) => Err(err),
    };
    config::exit_code(SERVICE, result)
}
