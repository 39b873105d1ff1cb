//! The `teresa-pooler` command: serve (the default), `dev` (a throwaway
//! PostgreSQL, dev certificates and demo tenants), `certs` (generate dev
//! certificates) and `admin` (status and apply against a running pooler).

#![forbid(unsafe_code)]

mod cli;
mod dev;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("teresa-pooler: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "teresa-pooler failed");
            eprintln!("teresa-pooler: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
