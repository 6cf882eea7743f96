//! The operator commands: `watch` (WatchKeys as JSON lines) and `issuers` (ListIssuers as
//! an aligned table). The JSON lives in [`super::json`]; this module owns the arguments,
//! the client calls and the table layout.

use std::{
    io::Write as _,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use clap::Args;

use super::{DEFAULT_ADDR, json};
use crate::grpc::pb::{
    self, admin_service_client::AdminServiceClient, token_service_client::TokenServiceClient,
};

/// `watch` options.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Server address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Only this tenant's keys (repeatable; default every tenant).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
}

/// `issuers` options.
#[derive(Debug, Args)]
pub struct IssuersArgs {
    /// Address serving AdminService: `server.admin_listen` (e.g. after
    /// `kubectl port-forward deploy/introspectd 50053`), or `server.listen` when
    /// `server.admin` is true.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Only this tenant (repeatable; default every tenant).
    #[arg(long = "tenant")]
    pub tenants: Vec<String>,
    /// The admin token (`server.admin_auth`), sent as `authorization: Bearer`.
    #[arg(long, env = "INTROSPECTD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the admin token (instead of --token; keeps it out of `ps`).
    #[arg(long, conflicts_with = "token")]
    pub token_file: Option<std::path::PathBuf>,
}

impl IssuersArgs {
    /// The admin token, from --token, the environment or --token-file.
    fn admin_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading --token-file {}", path.display()))?;
            return Ok(Some(text.trim().to_string()));
        }
        Ok(self.token.as_ref().map(|t| t.trim().to_string()))
    }
}

/// An AdminService call's failure, with what an operator can do about it.
fn admin_error(call: &str, s: &tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unimplemented => {
            "this address does not serve AdminService: it is off on server.listen unless \
             server.admin is true; point --addr at server.admin_listen"
        }
        tonic::Code::Unauthenticated => {
            "the server requires an admin token (server.admin_auth): pass --token, \
             --token-file or INTROSPECTD_ADMIN_TOKEN"
        }
        tonic::Code::PermissionDenied => "the admin token lacks a scope server.admin_auth requires",
        _ => return rpc_error(call, s),
    };
    anyhow::anyhow!("{call}: {hint} ({:?}: {})", s.code(), s.message())
}

fn rpc_error(call: &str, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{call} failed: {:?}: {}", s.code(), s.message())
}

/// Streams WatchKeys and prints one JSON object per event until the server ends the
/// stream (its shutdown) or Ctrl-C / SIGTERM.
pub async fn watch(args: WatchArgs) -> anyhow::Result<()> {
    let mut client = TokenServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut stream = client
        .watch_keys(pb::WatchKeysRequest {
            tenants: args.tenants,
        })
        .await
        .map_err(|s| rpc_error("WatchKeys", &s))?
        .into_inner();
    let stop = super::shutdown_signal();
    tokio::pin!(stop);
    let mut out = std::io::stdout();
    loop {
        let event = tokio::select! {
            m = stream.message() => m.map_err(|s| rpc_error("WatchKeys", &s))?,
            _ = &mut stop => return Ok(()),
        };
        let Some(event) = event else {
            return Ok(());
        };
        let line = serde_json::to_string(&json::key_event_json(&event))?;
        let written = writeln!(out, "{line}").and_then(|_| out.flush());
        match written {
            Ok(()) => {}
            // The reader went away (`| head`): not an error of ours.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing to stdout"),
        }
    }
}

/// Calls ListIssuers (with the admin token, when given) and prints the table.
pub async fn issuers(args: IssuersArgs) -> anyhow::Result<()> {
    let token = args.admin_token()?;
    let mut client = AdminServiceClient::connect(args.addr.clone())
        .await
        .with_context(|| format!("connecting to {}", args.addr))?;
    let mut request = tonic::Request::new(pb::ListIssuersRequest {
        tenants: args.tenants,
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .context("the admin token cannot be sent as metadata")?;
        request.metadata_mut().insert("authorization", value);
    }
    let resp = client
        .list_issuers(request)
        .await
        .map_err(|s| admin_error("ListIssuers", &s))?
        .into_inner();
    print!("{}", issuers_table(&resp.issuers, SystemTime::now()));
    Ok(())
}

/// A duration in at most two units: `45s`, `3m07s`, `2h05m`, `3d04h`.
pub fn compact_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn ago(now: SystemTime, t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = json::timestamp_to_system_time(t?)?;
    Some(match now.duration_since(t) {
        Ok(d) => format!("{} ago", compact_duration(d)),
        Err(_) => "just now".to_string(),
    })
}

fn until(now: SystemTime, t: Option<&prost_types::Timestamp>) -> Option<String> {
    let t = json::timestamp_to_system_time(t?)?;
    Some(match t.duration_since(now) {
        Ok(d) => format!("in {}", compact_duration(d)),
        Err(_) => "due".to_string(),
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Longest key-list and error cells, in characters.
const KEYS_WIDTH: usize = 40;
const ERROR_WIDTH: usize = 60;

/// Who fetched a key set's keys in use, for a fleet: `r2 (gen 7)`, `r1 (this replica,
/// gen 7)`, or `-` before any fetch.
fn fetched_by(i: &pb::IssuerStatus) -> String {
    if i.fetched_by.is_empty() {
        return "-".to_string();
    }
    let this = if i.fetched_by == i.replica {
        "this replica, "
    } else {
        ""
    };
    format!("{} ({this}gen {})", i.fetched_by, i.shared_generation)
}

/// ListIssuers as an aligned text table, one row per key set, ages relative to `now`.
/// With a fleet (`shared_state`), two more columns: which replica fetched the keys in
/// use, and how many fetches this replica avoided.
pub fn issuers_table(issuers: &[pb::IssuerStatus], now: SystemTime) -> String {
    let fleet = issuers.iter().any(|i| !i.replica.is_empty());
    let mut header = vec![
        "TENANT/POLICY",
        "ISSUER",
        "KEYS",
        "LAST SUCCESS",
        "LAST ERROR",
        "NEXT REFRESH",
        "OK/FAILED",
    ];
    if fleet {
        header.extend(["FETCHED BY", "AVOIDED"]);
    }
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for i in issuers {
        let name = if i.policy.is_empty() {
            i.tenant.clone()
        } else {
            format!("{}/{}", i.tenant, i.policy)
        };
        let kids: Vec<&str> = i
            .keys
            .iter()
            .map(|k| {
                if k.key_id.is_empty() {
                    "(no kid)"
                } else {
                    k.key_id.as_str()
                }
            })
            .collect();
        let keys = if kids.is_empty() {
            "0".to_string()
        } else {
            truncate(&format!("{} ({})", kids.len(), kids.join(", ")), KEYS_WIDTH)
        };
        let last_error = if i.last_error.is_empty() {
            "-".to_string()
        } else {
            let when = ago(now, i.last_error_at.as_ref()).unwrap_or_default();
            let state = if i.last_failed { "" } else { " (recovered)" };
            truncate(&format!("{when}{state}: {}", i.last_error), ERROR_WIDTH)
        };
        let mut row = vec![
            name,
            i.issuer.clone(),
            keys,
            ago(now, i.last_success.as_ref()).unwrap_or_else(|| "never".into()),
            last_error,
            until(now, i.next_refresh.as_ref()).unwrap_or_else(|| "-".into()),
            format!("{}/{}", i.fetches_ok, i.fetches_failed),
        ];
        if fleet {
            row.extend([fetched_by(i), i.fetches_avoided.to_string()]);
        }
        rows.push(row);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell}{}", " ".repeat(w - cell.chars().count())))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(Duration::from_secs(0)), "0s");
        assert_eq!(compact_duration(Duration::from_secs(59)), "59s");
        assert_eq!(compact_duration(Duration::from_secs(187)), "3m07s");
        assert_eq!(
            compact_duration(Duration::from_secs(2 * 3600 + 5 * 60 + 9)),
            "2h05m"
        );
        assert_eq!(
            compact_duration(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d04h"
        );
    }

    #[test]
    fn the_table_is_aligned_and_says_what_an_operator_needs() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |offset: i64| {
            Some(crate::grpc::convert::system_time(
                SystemTime::UNIX_EPOCH + Duration::from_secs((1_000_000 + offset) as u64),
            ))
        };
        let key = |kid: &str| pb::KeySummary {
            key_id: kid.into(),
            algorithm: "RS256".into(),
            key_type: "RSA".into(),
            thumbprint: "t".into(),
        };
        let issuers = vec![
            pb::IssuerStatus {
                tenant: "demo".into(),
                issuer: "https://idp.example".into(),
                keys: vec![key("k1"), key("k2")],
                last_success: at(-12),
                next_refresh: at(3600 * 11 + 60),
                fetches_ok: 3,
                ..Default::default()
            },
            pb::IssuerStatus {
                tenant: "contoso-b2c".into(),
                policy: "B2C_1_signin".into(),
                issuer: "https://contoso.b2clogin.com/x/v2.0/".into(),
                last_error: "HTTP status 500".into(),
                last_error_at: at(-3),
                last_failed: true,
                next_refresh: at(1),
                fetches_failed: 2,
                ..Default::default()
            },
        ];
        let table = issuers_table(&issuers, now);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("TENANT/POLICY"));
        assert!(lines[1].starts_with("demo "));
        assert!(
            lines[1].contains("2 (k1, k2)")
                && lines[1].contains("12s ago")
                && lines[1].contains("in 11h01m")
        );
        assert!(lines[1].ends_with("3/0"));
        assert!(lines[2].starts_with("contoso-b2c/B2C_1_signin"));
        assert!(lines[2].contains("never") && lines[2].contains("3s ago: HTTP status 500"));
        assert!(lines[2].ends_with("0/2"));
        // Every column starts at the same offset on every line.
        let col = |l: &str, name: &str| l.find(name).expect("cell");
        let issuer_at = col(lines[0], "ISSUER");
        assert_eq!(col(lines[1], "https://idp"), issuer_at);
        assert_eq!(col(lines[2], "https://contoso"), issuer_at);
        let ok_at = col(lines[0], "OK/FAILED");
        assert_eq!(col(lines[1], "3/0"), ok_at);
        assert_eq!(col(lines[2], "0/2"), ok_at);
    }

    #[test]
    fn with_a_fleet_the_table_says_which_replica_fetched() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let row = |fetched_by: &str| pb::IssuerStatus {
            tenant: "demo".into(),
            issuer: "https://idp.example".into(),
            replica: "r1".into(),
            fetched_by: fetched_by.into(),
            shared_generation: 7,
            fetches_avoided: 12,
            ..Default::default()
        };
        let table = issuers_table(&[row("r2"), row("r1"), row("")], now);
        let lines: Vec<&str> = table.lines().collect();
        let at = lines[0].find("FETCHED BY").expect("column");
        assert!(lines[0].ends_with("AVOIDED"), "{table}");
        assert_eq!(lines[1].find("r2 (gen 7)"), Some(at), "{table}");
        assert_eq!(
            lines[2].find("r1 (this replica, gen 7)"),
            Some(at),
            "{table}"
        );
        assert_eq!(lines[3][at..].chars().next(), Some('-'), "{table}");
        assert!(lines[1].ends_with("12"), "{table}");
        let plain = issuers_table(&[pb::IssuerStatus::default()], now);
        assert!(
            !plain.contains("FETCHED BY"),
            "no fleet columns without one"
        );
    }

    #[test]
    fn long_cells_are_truncated() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
