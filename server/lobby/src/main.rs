//! `zone-lobby`: the front door of the zone servers. See `zone-lobby --help` and the crate docs.

use std::process::ExitCode;

use clap::Parser;
use zone_lobby::config::{Cli, resolve};
use zone_telemetry::logs::{self, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match resolve(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("zone-lobby: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        print!("{}", cfg.to_masked_toml());
        return ExitCode::SUCCESS;
    }
    let format = if cfg.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    let guard = logs::init(format, &cfg.log_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("zone-lobby: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let metrics = zone_lobby::server::install_metrics();
        let running = match zone_lobby::server::start(cfg, metrics).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "zone-lobby failed to start");
                eprintln!("zone-lobby: error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("stopping");
        running.stop().await;
        ExitCode::SUCCESS
    });
    drop(guard);
    code
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
