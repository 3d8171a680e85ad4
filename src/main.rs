//! `aaa`: durable ingestion of X Account Activity into Postgres through Kafka.

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod dashboards;
mod error;
mod ops;
mod sim_cli;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let json = cli.json();
    match cli.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error.report(json);
            error.exit_code()
        }
    }
}
