//! Authentication set-up of `pitwalld`: the external OIDC issuer when one is configured,
//! else the built-in issuer (creating `admin` on first start and printing its one-time
//! password once); the deployment CA for client certificates in both cases.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pitwall_control::auth::issuer::BuiltinIssuer;
use pitwall_control::auth::jwt::ValidatorConfig;
use pitwall_control::auth::oidc::OidcKeySource;
use pitwall_control::auth::ssh_ca::SshCa;
use pitwall_control::auth::x509::DeploymentCa;
use pitwall_control::auth::Auth;
use pitwall_store::Store;

use crate::config::{self, Config};

/// `iss` of the built-in issuer's tokens: stable across restarts and listen addresses.
pub const BUILTIN_ISSUER: &str = "urn:pitwall:builtin";

/// The [`Auth`] of this daemon, and the deployment CA (also inside it).
pub async fn build(
    cfg: &Config,
    store: Arc<dyn Store>,
) -> anyhow::Result<(Auth, Arc<DeploymentCa>)> {
    let ca = Arc::new(
        DeploymentCa::open(&cfg.data_dir.join("ca"))
            .context("cannot open the deployment certificate authority")?,
    );
    let a = &cfg.auth;
    let auth = match &a.issuer {
        Some(issuer) => {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("cannot build an HTTP client")?;
            let keys = OidcKeySource::discover(issuer, http)
                .await
                .with_context(|| format!("cannot use the OIDC issuer {issuer} (auth.issuer)"))?;
            let mut vcfg = ValidatorConfig::new(issuer.clone(), a.audience.clone());
            vcfg.claims = a.claims.clone();
            vcfg.admin_role = a.admin_role.clone();
            let client = pitwall_api::AuthConfig {
                issuer: issuer.clone(),
                audience: a.audience.clone(),
                builtin: false,
                client_id: Some(a.client_id.clone()),
                device_authorization_endpoint: keys
                    .device_authorization_endpoint()
                    .map(String::from),
                token_endpoint: keys.token_endpoint().map(String::from),
                scope: Some(a.scope.clone()),
                resource: a.resource.clone(),
            };
            tracing::info!(issuer = %issuer, audience = %a.audience, "authenticating with an external OIDC issuer; the built-in issuer is off");
            Auth::external(vcfg, Arc::new(keys), client, a.default_policy.clone())
        }
        None => {
            let lifetime = config::duration("auth.token_lifetime", &a.token_lifetime)?;
            let (issuer, boot) = BuiltinIssuer::open(
                &cfg.data_dir,
                store,
                BUILTIN_ISSUER.into(),
                a.audience.clone(),
                &a.admin_role,
            )
            .await
            .context("cannot start the built-in issuer")?;
            if let Some(boot) = boot {
                announce_admin(&boot.username, &boot.password, &boot.credentials_file);
            }
            Auth::builtin(
                Arc::new(issuer.with_token_lifetime(lifetime)),
                &a.admin_role,
                a.default_policy.clone(),
            )
        }
    };
    let ssh_ca = Arc::new(
        SshCa::open(&cfg.data_dir.join("ca"))
            .context("cannot open the SSH certificate authority")?,
    );
    Ok((auth.with_ca(ca.clone()).with_ssh_ca(ssh_ca), ca))
}

/// Print the bootstrapped admin's one-time password, once, with how to use it.
fn announce_admin(username: &str, password: &str, file: &Path) {
    println!(
        "pitwalld: created the administrator {username:?} with a one-time password, shown only now \
         (also in {}, mode 0600):\n  {password}\n\
         pitwalld: log in with: sed -n 's/^password=//p' {} | pitwall login --user {username} --password-stdin",
        file.display(),
        file.display()
    );
}
