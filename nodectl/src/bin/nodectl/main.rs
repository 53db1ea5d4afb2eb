//! `nodectl`: the operator's command line over the `nodectl` library and
//! [`fleet_client::Client`]. One file a command group:
//! - `args`: every flag and subcommand;
//! - `query`: nodes, get, discover, watch, alerts, audit, health (any reader);
//! - `admin`: drain, resume, cordon, uncordon, deregister (the leader
//!   answers); profiles;
//! - `token`: join tokens;
//! - `auth`: the auth directory;
//! - `dashboard`: serving the fleet page;
//! - `print`: lines and JSON for the terminal.

mod admin;
mod args;
mod auth;
mod dashboard;
mod print;
mod query;
mod token;

use std::process::ExitCode;

use args::{Cli, Command};
use clap::{CommandFactory as _, FromArgMatches as _};
use fleet_client::Client;
use nodectl::Error;
use schemas::status::AdminOp;
use tracing::Instrument as _;

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let name = matches.subcommand_name().unwrap_or("nodectl").to_owned();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Every command is one trace: its requests carry a traceparent the
    // registry continues, exported when --otlp-endpoint is given.
    let telemetry = fleet_telemetry::Telemetry::start(
        fleet_telemetry::TelemetryConfig {
            otlp_endpoint: cli.otlp_endpoint.clone(),
            trace_without_export: true,
            ..fleet_telemetry::TelemetryConfig::new("nodectl", std::process::id().to_string())
        },
        runtime_support::CancellationToken::new(),
    )
    .await;
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("nodectl: {e}");
            return ExitCode::from(2);
        }
    };
    runtime_support::init_tracing_quiet(telemetry.tracing_layer());
    let span = tracing::info_span!("nodectl", command = name);
    let result = run(cli).instrument(span).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodectl: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How this invocation proves who it is to NATS.
fn nats_auth(cli: &Cli) -> runtime_support::NatsAuth {
    cli.auth.nats_auth()
}

/// A client with this invocation's credentials and timeout.
async fn connect(cli: &Cli) -> Result<Client, Error> {
    Ok(Client::connect_with(&cli.nats_url, &nats_auth(cli))
        .await?
        .with_timeout(std::time::Duration::from_secs(cli.timeout)))
}

async fn run(cli: Cli) -> Result<(), Error> {
    // The auth directory works without a registry (init comes first).
    if let Command::Auth { dir, command } = &cli.command {
        return auth::run(&cli, dir, command).await;
    }
    // The page talks to NATS itself: serving it needs no connection.
    if let Command::Dashboard { listen, ws_url } = &cli.command {
        return dashboard::run(*listen, ws_url, cli.auth.creds.as_deref()).await;
    }
    let client = connect(&cli).await?;
    let by = admin::who(cli.auth.creds.as_deref());
    match cli.command {
        Command::Nodes { output, reasons } => query::nodes(&client, output, reasons).await,
        Command::Health { output } => query::health(&client, output).await,
        Command::Get { id } => query::get(&client, &id).await,
        Command::Discover(args) => query::discover(&client, &args).await,
        Command::Fit(args) => query::fit(&client, &args).await,
        Command::Watch { selector } => query::watch(&client, selector.unwrap_or_default()).await,
        Command::Alerts {
            since,
            follow,
            output,
        } => query::alerts(&client, since.as_deref(), follow, output).await,
        Command::Audit {
            node,
            since,
            until,
            types,
            output,
        } => query::audit(&client, node, &since, until.as_deref(), types, output).await,
        Command::Drain {
            ids,
            reason,
            for_,
            until,
        } => {
            let details = admin::Details {
                reason: Some(reason),
                by,
                for_,
                until,
                ..admin::Details::default()
            };
            admin::each(&client, AdminOp::Drain, &ids, details).await
        }
        Command::Resume { ids } => {
            let details = admin::Details {
                by,
                ..admin::Details::default()
            };
            admin::each(&client, AdminOp::Resume, &ids, details).await
        }
        Command::Cordon { id, gpu, reason } => {
            let details = admin::Details {
                reason,
                by,
                gpu,
                ..admin::Details::default()
            };
            admin::cordon(&client, &id, details).await
        }
        Command::Uncordon { id, gpu } => {
            let details = admin::Details {
                by,
                gpu,
                ..admin::Details::default()
            };
            admin::uncordon(&client, &id, details).await
        }
        Command::Deregister { id, reason } => {
            let details = admin::Details {
                reason,
                by,
                ..admin::Details::default()
            };
            admin::deregister(&client, &id, details).await
        }
        Command::Profile { command } => admin::profile(&client, command).await,
        Command::Token { dir, command } => token::run(&client, &dir, command).await,
        // Handled before connecting.
        Command::Auth { .. } | Command::Dashboard { .. } => Ok(()),
    }
}
