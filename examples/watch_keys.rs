//! Mirrors an introspectd's signing keys through `WatchKeys` and verifies a token
//! locally, without calling Validate.
//!
//! ```text
//! introspectd serve --dev &
//! cargo run --example watch_keys -- --token "$(introspectd token)" --audience introspectd-dev
//! ```
//!
//! It prints each change of the mirror and, once synced, verifies `--token` against the
//! mirror after every change and prints the outcome.

#[path = "watch_keys/mirror.rs"]
mod mirror;

use clap::Parser;
use introspectd::grpc::pb::{WatchKeysRequest, token_service_client::TokenServiceClient};
use mirror::{Change, KeyMirror};

/// Mirror introspectd's keys and verify a token locally.
#[derive(Debug, Parser)]
struct Args {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Only these tenants (repeatable).
    #[arg(long = "tenant")]
    tenants: Vec<String>,
    /// A token to verify once the mirror is synced.
    #[arg(long)]
    token: Option<String>,
    /// Accepted audiences (repeatable; default: not checked).
    #[arg(long = "audience")]
    audiences: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    introspectd::install_crypto();
    let args = Args::parse();
    let mut client = TokenServiceClient::connect(args.addr.clone()).await?;
    let mut stream = client
        .watch_keys(WatchKeysRequest {
            tenants: args.tenants.clone(),
        })
        .await?
        .into_inner();
    let audiences: Vec<&str> = args.audiences.iter().map(String::as_str).collect();
    let mut keys = KeyMirror::new();
    while let Some(event) = stream.message().await? {
        let change = keys.apply(&event);
        match &change {
            Ok(Change::Staged(_)) => {}
            Ok(Change::Synced(n)) => {
                println!("synced: {n} key(s)");
                for ((tenant, policy, kid), thumbprint) in keys.keys() {
                    println!("  {tenant}/{policy}/{kid} {thumbprint}");
                }
            }
            Ok(Change::Added((tenant, policy, kid))) => println!("added {tenant}/{policy}/{kid}"),
            Ok(Change::Removed((tenant, policy, kid))) => {
                println!("removed {tenant}/{policy}/{kid}")
            }
            Ok(Change::RefreshFailed(why)) => println!("{}: refresh failed: {why}", event.tenant),
            Err(e) => eprintln!("skipped an event: {e}"),
        }
        // Verify after every change once synced: a rotated-in key verifies at once.
        let changed = matches!(
            change,
            Ok(Change::Synced(_) | Change::Added(_) | Change::Removed(_))
        );
        if let (true, true, Some(token)) = (changed, keys.is_synced(), &args.token) {
            match keys.verify(token, &audiences) {
                Ok(claims) => println!("token verified locally: {claims}"),
                Err(e) => println!("token rejected locally: {e}"),
            }
        }
    }
    println!("the server ended the stream");
    Ok(())
}
