//! The command line: `serve`, `check-config`, the developer tools `token` and
//! `validate`, and the operator tools `watch` and `issuers` (in [`operator`]). Parsing
//! here, work in the library; `main` only dispatches.

pub mod json;
pub mod operator;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value};

use crate::{
    config::{self, ConfigError},
    dev::{self, DevKey},
    grpc::pb,
    telemetry::{self, LogFormat},
};

/// Exit code for a bad configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Default address of a running server for the client tools.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:50051";

/// introspectd: validates bearer tokens for many issuers over gRPC.
#[derive(Debug, Parser)]
#[command(name = "introspectd", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (TokenService, health, reflection).
    Serve(ServeArgs),
    /// Validate a configuration file without serving.
    CheckConfig {
        /// The YAML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Mint a token signed by the local development key (for `serve --dev`).
    Token(TokenArgs),
    /// Call Validate on a running server and print the answer as JSON.
    Validate(ValidateArgs),
    /// Stream key events (WatchKeys) from a running server as JSON lines.
    Watch(operator::WatchArgs),
    /// Show every issuer's keys and fetch state (AdminService.ListIssuers) as a table.
    Issuers(operator::IssuersArgs),
}

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The YAML configuration.
    #[arg(long, required_unless_present = "dev", conflicts_with = "dev")]
    pub config: Option<PathBuf>,
    /// Trust only a local development issuer; no configuration needed.
    #[arg(long)]
    pub dev: bool,
    /// Listen address (overrides `server.listen`; default 127.0.0.1:50051 with --dev).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, default_value = "text")]
    pub log_format: LogFormat,
    /// The development key file (with --dev).
    #[arg(long)]
    pub dev_key_file: Option<PathBuf>,
}

/// `token` options.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// Subject.
    #[arg(long, default_value = "dev-user")]
    pub sub: String,
    /// Audience (repeatable; default introspectd-dev).
    #[arg(long)]
    pub aud: Vec<String>,
    /// Space-separated scopes.
    #[arg(long)]
    pub scope: Option<String>,
    /// Lifetime, e.g. 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Extra claim as name=value (value read as JSON when it parses, else a string).
    #[arg(long = "claim")]
    pub claims: Vec<String>,
    /// The development key file.
    #[arg(long)]
    pub dev_key_file: Option<PathBuf>,
}

/// `validate` options.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Server address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Only this tenant may accept the token.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Accepted audience (repeatable).
    #[arg(long = "audience")]
    pub audiences: Vec<String>,
    /// Required scope (repeatable).
    #[arg(long = "scope")]
    pub scopes: Vec<String>,
    /// The token.
    pub token: String,
}

fn config_failure(err: &ConfigError) -> ExitCode {
    eprintln!("introspectd: {err}");
    ExitCode::from(EXIT_CONFIG)
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::CheckConfig { config } => match config::load_file(&config) {
            Ok(s) => {
                println!("configuration OK: {} tenant(s)", s.tenants.len());
                // The choices an operator must see: which Entra tenants are trusted.
                for t in &s.tenants {
                    if let Some(trust) = t.entra_trust() {
                        println!("tenant `{}` ({}) {trust}", t.id, t.issuer);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_failure(&e),
        },
        Command::Token(args) => report(token(args)),
        Command::Validate(args) => report(validate(args).await),
        Command::Watch(args) => report(operator::watch(args).await),
        Command::Issuers(args) => report(operator::issuers(args).await),
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("introspectd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> ExitCode {
    let shutdown = shutdown_signal();
    telemetry::init(args.log_format);
    let settings = if args.dev {
        let path = args
            .dev_key_file
            .clone()
            .unwrap_or_else(dev::default_key_path);
        let key = match DevKey::load_or_create(&path) {
            Ok(k) => k,
            Err(e) => {
                eprintln!("introspectd: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let listen = args.listen.unwrap_or(dev::DEV_LISTEN);
        tracing::info!(key_file = %path.display(), issuer = dev::DEV_ISSUER, audience = dev::DEV_AUDIENCE,
            "development mode: mint tokens with `introspectd token`");
        key.settings(listen)
    } else {
        let Some(path) = args.config.as_ref() else {
            return config_failure(&ConfigError {
                key: "--config".into(),
                message: "is required".into(),
            });
        };
        match config::load_file(path) {
            Ok(mut s) => {
                if let Some(l) = args.listen {
                    s.server.listen = l;
                    if let Err(e) = config::check_admin_exposure(&s.server) {
                        return config_failure(&e);
                    }
                }
                s
            }
            Err(e) => return config_failure(&e),
        }
    };
    let listener = match tokio::net::TcpListener::bind(settings.server.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "introspectd: cannot listen on {}: {e}",
                settings.server.listen
            );
            return ExitCode::FAILURE;
        }
    };
    match crate::app::run(settings, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ConfigError>() {
            // Files the configuration names (TLS) are only read when serving starts.
            Some(ce) => config_failure(ce),
            None => {
                tracing::error!(error = %format!("{e:#}"), "server failed");
                ExitCode::FAILURE
            }
        },
    }
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed when this is called, not
/// when the future is first polled, so a SIGTERM during start-up is not fatal. Must be
/// called inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    async move {
        #[cfg(unix)]
        if let Ok((mut term, mut int)) = handlers {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let path = args.dev_key_file.unwrap_or_else(dev::default_key_path);
    let key = DevKey::load_or_create(&path)?;
    let mut extra = Map::new();
    for c in &args.claims {
        let (name, value) = c
            .split_once('=')
            .with_context(|| format!("--claim `{c}` is not name=value"))?;
        let v = serde_json::from_str::<Value>(value)
            .unwrap_or_else(|_| Value::String(value.to_string()));
        extra.insert(name.to_string(), v);
    }
    let t = key.mint(
        &args.sub,
        &args.aud,
        args.scope.as_deref(),
        args.ttl,
        &extra,
    )?;
    println!("{t}");
    Ok(())
}

async fn validate(args: ValidateArgs) -> anyhow::Result<()> {
    let mut client = pb::token_service_client::TokenServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let resp = client
        .validate(pb::ValidateRequest {
            token: args.token,
            tenant: args.tenant.unwrap_or_default(),
            audiences: args.audiences,
            required_scopes: args.scopes,
            nonce: String::new(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("Validate failed: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    println!(
        "{}",
        serde_json::to_string_pretty(&json::validate_response_json(&resp))?
    );
    Ok(())
}
