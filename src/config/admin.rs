//! Where AdminService is served and who may call it: `server.admin` (on `server.listen`),
//! `server.admin_listen` (a listener of its own) and `server.admin_auth` (the token an
//! admin call must carry). AdminService on a non-loopback address without
//! `admin_auth` is refused at start-up, naming `server.admin_auth`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, ServerSettings, TenantSettings};

/// `server.admin_auth`: every admin call carries `authorization: Bearer <token>`, and the
/// token must pass Validate for `tenant` with these `audiences` and `required_scopes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of server.admin_auth keys")]
pub struct AdminAuthSettings {
    /// The tenant whose tokens may call AdminService.
    pub tenant: String,
    /// Accepted audiences (any one); empty: the tenant's own.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Scopes every admin token must be granted.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

const KEY: &str = "server.admin_auth";

impl AdminAuthSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tenant.is_empty() {
            return Err(ConfigError::new(
                format!("{KEY}.tenant"),
                "must not be empty",
            ));
        }
        if self.audiences.is_empty() && self.required_scopes.is_empty() {
            return Err(ConfigError::new(
                KEY,
                "names neither audiences nor required_scopes, so every token of the tenant would be an admin token",
            ));
        }
        for (name, list) in [
            ("audiences", &self.audiences),
            ("required_scopes", &self.required_scopes),
        ] {
            if let Some(i) = list.iter().position(String::is_empty) {
                return Err(ConfigError::new(
                    format!("{KEY}.{name}[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}

/// True when only this host can reach `addr`.
fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The rules of AdminService's exposure that need only `server:`: `admin_auth` itself
/// well-formed, and present whenever AdminService listens on a non-loopback address
/// (`admin: true` on `listen`, or `admin_listen`).
pub fn check_exposure(server: &ServerSettings) -> Result<(), ConfigError> {
    if let Some(auth) = &server.admin_auth {
        return auth.validate();
    }
    if server.admin && !loopback(&server.listen) {
        return Err(ConfigError::new(
            KEY,
            format!(
                "is required: server.admin serves AdminService on server.listen ({}), which is not a loopback address; set admin_auth, or serve AdminService on a loopback server.admin_listen instead",
                server.listen
            ),
        ));
    }
    if let Some(addr) = server.admin_listen
        && !loopback(&addr)
    {
        return Err(ConfigError::new(
            KEY,
            format!("is required: server.admin_listen ({addr}) is not a loopback address"),
        ));
    }
    Ok(())
}

/// `admin_auth.tenant` names a configured tenant.
pub(super) fn check_tenant(
    server: &ServerSettings,
    tenants: &[TenantSettings],
) -> Result<(), ConfigError> {
    match &server.admin_auth {
        Some(auth) if !tenants.iter().any(|t| t.id == auth.tenant) => Err(ConfigError::new(
            format!("{KEY}.tenant"),
            format!("`{}` is not a configured tenant", auth.tenant),
        )),
        _ => Ok(()),
    }
}
