//! A real OpenID Connect provider for tests: panva's `oidc-provider` (npm), run by
//! `tests/fixtures/oidc/server.mjs` on 127.0.0.1 and killed when dropped.
//!
//! Its clients (see server.mjs): `pitwall-cli` (confidential, client_credentials; tokens for
//! `urn:<audience>` have `aud` = audience and `preferred_username` = `alice`) and
//! `pitwall-device` (public, device_code + refresh_token; tokens carry the signed-in login as
//! `preferred_username`). The user's side of a device login goes through the provider's
//! development interaction pages, where any login and password sign in:
//! [`OidcProvider::approve_device`] plays that user. Test-only endpoints sign any claims with
//! the provider's real key ([`OidcProvider::sign`]) and give its public key
//! ([`OidcProvider::public_key_pem`]), for hostile tokens.
//!
//! Needs `node` and the fixture's `node_modules` (`scripts/setup.sh` installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Client of the client_credentials grant, and its secret.
pub const CLIENT_CREDENTIALS_CLIENT: (&str, &str) = ("pitwall-cli", "pitwall-secret");
/// Public client of the device authorization grant (and refresh tokens).
pub const DEVICE_CLIENT: &str = "pitwall-device";

/// A running `oidc-provider`, killed when dropped.
pub struct OidcProvider {
    issuer: String,
    http: reqwest::Client,
    _child: Child,
}

/// The fixture directory: `tests/fixtures/oidc` of the workspace.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/oidc")
}

impl OidcProvider {
    /// Start the provider and wait (at most 30 s) until it listens.
    pub async fn start() -> anyhow::Result<OidcProvider> {
        let dir = fixture_dir();
        ensure!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{} has no node_modules/oidc-provider: run scripts/setup.sh (it runs `npm ci` \
             there; needs node and npm)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run `node`: install Node.js 20+ and run scripts/setup.sh")?;
        // Through the test harness, so the provider's warnings show only when a test fails.
        let stderr = child.stderr.take().context("the provider's stderr")?;
        let mut stderr = BufReader::new(stderr).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("oidc-provider: {line}");
            }
        });
        let stdout = child.stdout.take().context("the provider's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        // Generous: node loading oidc-provider while the suite runs many tests and builds on
        // two cores has been seen to take tens of seconds. A bound, not a measurement.
        let port = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(port) = line.strip_prefix("listening ") {
                    return port
                        .trim()
                        .parse::<u16>()
                        .with_context(|| format!("the provider printed {line:?}"));
                }
            }
            bail!("the OIDC provider exited before listening (its stderr is above)")
        })
        .await
        .context("the OIDC provider did not start listening within 30 s")??;
        // Keep draining stdout so the provider never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(OidcProvider {
            issuer: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _child: child,
        })
    }

    /// The issuer URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A plain HTTP client (no cookies).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A JWT access token of client `pitwall-cli` (client_credentials, user `alice`) whose
    /// `aud` is `audience`.
    pub async fn token(&self, audience: &str) -> anyhow::Result<String> {
        let (client_id, secret) = CLIENT_CREDENTIALS_CLIENT;
        let response: serde_json::Value = self
            .http
            .post(format!("{}/token", self.issuer))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("client_secret", secret),
                ("resource", &format!("urn:{audience}")),
            ])
            .send()
            .await
            .context("token request")?
            .error_for_status()
            .context("the token endpoint refused")?
            .json()
            .await
            .context("the token response is not JSON")?;
        response["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no access_token in {response}"))
    }

    /// Sign new tokens with a fresh key (the old ones stay published); returns its `kid`.
    pub async fn rotate(&self) -> anyhow::Result<String> {
        let response: serde_json::Value = self
            .http
            .post(format!("{}/__rotate", self.issuer))
            .send()
            .await
            .context("rotate request")?
            .error_for_status()
            .context("/__rotate refused")?
            .json()
            .await
            .context("the rotate response is not JSON")?;
        response["kid"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no kid in {response}"))
    }

    /// `claims` signed RS256 with the provider's current signing key (test-only `POST
    /// /__sign`), under the header `{"alg": "RS256", "typ": "JWT", "kid": <current kid>}`
    /// with the members of `header` (an object, or null) overriding it; the signature stays
    /// RS256 by the real key whatever `header` says. For hostile tokens whose only flaw is the
    /// one under test.
    pub async fn sign(
        &self,
        claims: &serde_json::Value,
        header: &serde_json::Value,
    ) -> anyhow::Result<String> {
        let response: serde_json::Value = self
            .http
            .post(format!("{}/__sign", self.issuer))
            .json(&serde_json::json!({ "claims": claims, "header": header }))
            .send()
            .await
            .context("sign request")?
            .error_for_status()
            .context("/__sign refused")?
            .json()
            .await
            .context("the sign response is not JSON")?;
        response["token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no token in {response}"))
    }

    /// The current signing key's public half as SPKI PEM (test-only `GET /__public.pem`).
    pub async fn public_key_pem(&self) -> anyhow::Result<String> {
        let pem = self
            .http
            .get(format!("{}/__public.pem", self.issuer))
            .send()
            .await
            .context("public key request")?
            .error_for_status()
            .context("/__public.pem refused")?
            .text()
            .await
            .context("reading the public key")?;
        ensure!(
            pem.starts_with("-----BEGIN PUBLIC KEY-----"),
            "not an SPKI PEM: {pem}"
        );
        Ok(pem)
    }

    /// Play `user` in a browser for a pending device login: open `verification_uri` (the
    /// complete one with the code in it, or the plain one, where `user_code` is typed in),
    /// confirm the code, sign in as `user` and consent. Fails unless the provider ends on
    /// its success page.
    pub async fn approve_device(
        &self,
        verification_uri: &str,
        user_code: &str,
        user: &str,
    ) -> anyhow::Result<()> {
        let browser = Browser::new()?;
        let (action, fields) = browser.confirm_page(verification_uri, user_code).await?;
        ensure!(
            fields.contains(&("confirm".into(), "yes".into())),
            "the confirm form has no confirm=yes: {fields:?}"
        );
        // confirming redirects to the sign-in page
        let (url, html) = browser.post(&action, &fields).await?;
        ensure!(
            url.contains("/interaction/"),
            "not the sign-in page: {url}\n{html}"
        );
        let login = [("prompt", "login"), ("login", user), ("password", "any")];
        let (url, html) = browser.post(&url, &login).await?;
        ensure!(
            html.contains("consent") || url.contains("/interaction/"),
            "not the consent page after signing in: {url}\n{html}"
        );
        let (url, html) = browser.post(&url, &[("prompt", "consent")]).await?;
        ensure!(
            html.to_lowercase().contains("success"),
            "no success page after consenting: {url}\n{html}"
        );
        Ok(())
    }

    /// Like [`OidcProvider::approve_device`] up to the confirm page, where the user aborts.
    pub async fn deny_device(&self, verification_uri: &str, user_code: &str) -> anyhow::Result<()> {
        let browser = Browser::new()?;
        let (action, mut fields) = browser.confirm_page(verification_uri, user_code).await?;
        fields.retain(|(k, _)| k != "confirm");
        fields.push(("abort".into(), "yes".into()));
        browser.post(&action, &fields).await?;
        Ok(())
    }
}

/// An HTTP client with cookies, as a browser on the provider's interaction pages.
struct Browser(reqwest::Client);

impl Browser {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(
            reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .context("cannot build an HTTP client")?,
        ))
    }

    /// The final URL and body of a successful response.
    async fn page(
        response: reqwest::Result<reqwest::Response>,
    ) -> anyhow::Result<(String, String)> {
        let response = response.context("the provider did not answer")?;
        let url = response.url().to_string();
        let status = response.status();
        let html = response.text().await.context("reading a page")?;
        ensure!(status.is_success(), "{url} answered {status}:\n{html}");
        Ok((url, html))
    }

    async fn get(&self, url: &str) -> anyhow::Result<(String, String)> {
        Self::page(self.0.get(url).send().await).await
    }

    async fn post<T: serde::Serialize + ?Sized>(
        &self,
        url: &str,
        form: &T,
    ) -> anyhow::Result<(String, String)> {
        Self::page(self.0.post(url).form(form).send().await).await
    }

    /// Open the verification URI and submit the code (with the form's xsrf token): the
    /// confirm page's form, which shows the code.
    async fn confirm_page(
        &self,
        verification_uri: &str,
        user_code: &str,
    ) -> anyhow::Result<(String, Vec<(String, String)>)> {
        let (_, html) = self.get(verification_uri).await?;
        let (action, mut fields) = form(&html)?;
        if !fields.iter().any(|(k, _)| k == "user_code") {
            fields.push(("user_code".into(), user_code.into()));
        }
        let (_, html) = self.post(&action, &fields).await?;
        ensure!(
            html.contains(user_code),
            "the confirm page does not show the code {user_code}:\n{html}"
        );
        form(&html)
    }
}

/// The action of the first form in `html` and the `(name, value)` of its `<input>`s that
/// have a value.
fn form(html: &str) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(tag[start..start + len].replace("&amp;", "&"))
    };
    let form_at = html
        .find("<form")
        .ok_or_else(|| anyhow!("no form in:\n{html}"))?;
    let form_html = &html[form_at..];
    let open_tag = &form_html[..form_html.find('>').unwrap_or(form_html.len())];
    let action =
        attr(open_tag, "action").ok_or_else(|| anyhow!("a form without action:\n{html}"))?;
    let body = &form_html[..form_html.find("</form>").unwrap_or(form_html.len())];
    let inputs = body
        .split("<input")
        .skip(1)
        .filter_map(|tag| {
            let tag = &tag[..tag.find('>').unwrap_or(tag.len())];
            Some((attr(tag, "name")?, attr(tag, "value")?))
        })
        .collect();
    Ok((action, inputs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_reads_action_and_valued_inputs() {
        let html = r#"<p>x</p><form method="post" action="/device?a=1&amp;b=2">
            <input type="hidden" name="xsrf" value="t0k"/>
            <input type="text" name="user_code" placeholder="code">
            </form><form action="/other"><input name="n" value="v"></form>"#;
        let (action, fields) = form(html).unwrap();
        assert_eq!(action, "/device?a=1&b=2");
        assert_eq!(fields, vec![("xsrf".to_string(), "t0k".to_string())]);
        assert!(form("<p>no form</p>").is_err());
    }
}
