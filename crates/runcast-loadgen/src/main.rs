//! `runcast-loadgen bench …`: see the crate documentation.

use clap::Parser;
use runcast_loadgen::bench;

#[derive(Debug, Parser)]
#[command(
    name = "runcast-loadgen",
    version,
    about = "Fan-out load client: ws-gateway vs NATS's own WebSocket listener."
)]
enum Command {
    /// Runs the scenarios of issue 11 against fresh servers and prints one markdown table.
    Bench(bench::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let Command::Bench(args) = Command::parse();
    let command_line = std::env::args().collect::<Vec<_>>().join(" ");
    let result = bench::pin_client(&args).and_then(|()| {
        // One thread: every connection is a task of it, pinned with it to the client's core.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(bench::run(&args, &command_line))
    });
    match result {
        Ok(table) => {
            println!("{table}");
            std::process::ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("runcast-loadgen: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
