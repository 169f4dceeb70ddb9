use event_persister::{Application, Cli, Command};
use runcast_runtime::{allocator, config, shutdown, telemetry};
use std::process::ExitCode;

// Decoding and batching allocate many small buffers: glibc malloc was 7 % of the drain's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let allocator = allocator::configure(None);
    let cli: Cli = config::parse_or_exit();
    let _telemetry = telemetry::init(&cli.config.telemetry, event_persister::SERVICE);
    allocator.report();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => event_persister::schema::migrate_once(&cli.config).await,
        Command::Rebuild { reset, page_size } => event_persister::rebuild_once(&cli.config, page_size, reset).await,
        Command::Run => match Application::build(cli.config).await {
            Ok(app) => app.run_until_stopped(shutdown::on_signal()).await,
            Err(err) => Err(err),
        },
    };
    config::exit_code(event_persister::SERVICE, result)
}
