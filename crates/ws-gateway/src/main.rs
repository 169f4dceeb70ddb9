use runcast_runtime::{config, shutdown, telemetry};
use std::process::ExitCode;
use ws_gateway::{Application, Config, SERVICE};

fn main() -> ExitCode {
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
        let result = match Application::build(config).await {
            Ok(app) => app.run_until_stopped(shutdown::on_signal()).await,
            Err(err) => Err(err),
        };
        config::exit_code(SERVICE, result)
    })
}
