//! `pitwalld` configuration: one TOML file (`--config`), then `PITWALL_*` environment
//! overrides, then command-line flags. Defaults work on a fresh machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where state lives: `control/` (database, uploads) and `host/` (images, VMs).
    pub data_dir: PathBuf,
    /// Address of the REST API.
    pub listen: String,
    pub host: HostSection,
    pub control: ControlSection,
    pub auth: AuthSection,
    pub overlay: OverlaySection,
}

/// `[overlay]`: how users reach VM services with no host port (ARCHITECTURE §7): the control
/// plane's edge, which terminators dial out to (QUIC, mutual TLS with the overlay CA).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OverlaySection {
    /// Off: no edge and no terminator (`pitwall ssh`/`proxy` answer 503). `PITWALL_OVERLAY`.
    pub enabled: bool,
    /// UDP address the edge listens on for terminators (port 0: any free one).
    /// `PITWALL_EDGE_LISTEN`.
    pub edge_listen: String,
    /// Where this host's terminator reaches the edge (`host:port`); default the edge's own
    /// address (127.0.0.1 for an unspecified one). `PITWALL_EDGE_ADDRESS`.
    pub edge_address: Option<String>,
    /// Names (DNS or IP) in the edge's certificate; the terminator checks the first one.
    /// `PITWALL_EDGE_NAMES` (comma-separated).
    pub edge_names: Vec<String>,
}

impl Default for OverlaySection {
    fn default() -> Self {
        Self {
            enabled: true,
            edge_listen: "127.0.0.1:0".into(),
            edge_address: None,
            edge_names: vec!["127.0.0.1".into(), "localhost".into()],
        }
    }
}

/// Who may use the API (ARCHITECTURE §8).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// URL of an external OIDC issuer (Keycloak: `https://HOST/realms/REALM`). When set, the
    /// built-in issuer is off and users log in there; when absent, pitwalld issues tokens
    /// itself for local users and creates `admin` on first start.
    pub issuer: Option<String>,
    /// Audience tokens must carry (Keycloak: a client or an audience mapper).
    pub audience: String,
    /// OAuth client the CLI uses at the external issuer (device authorization grant).
    pub client_id: String,
    /// Scopes the CLI asks the external issuer for.
    pub scope: String,
    /// Resource indicator (RFC 8707) the CLI sends, for issuers that set `aud` from it.
    pub resource: Option<String>,
    /// Role that makes a user an administrator.
    pub admin_role: String,
    /// Where the username, roles and groups are read from in tokens (Keycloak's by default).
    pub claims: pitwall_control::auth::jwt::ClaimMapping,
    /// Lifetime of the built-in issuer's access tokens, e.g. "1h".
    pub token_lifetime: String,
    /// Policy of users and groups that have none of their own (until an administrator sets
    /// a `default` one with `pitwall quota set default …`).
    pub default_policy: pitwall_core::Policy,
    /// Address of the mTLS listener that accepts client certificates (and bearer tokens)
    /// as identities, e.g. "127.0.0.1:7443"; absent: no such listener.
    pub tls_listen: Option<String>,
    /// Names (DNS names or IP addresses) the mTLS listener's server certificate is for.
    pub tls_names: Vec<String>,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: "pitwall".into(),
            client_id: "pitwall-cli".into(),
            scope: "openid offline_access".into(),
            resource: None,
            admin_role: "pitwall-admin".into(),
            claims: pitwall_control::auth::jwt::ClaimMapping::default(),
            token_lifetime: "1h".into(),
            default_policy: pitwall_core::Policy {
                max_vms: Some(10),
                max_vcpus: Some(20),
                max_memory_mib: Some(20 * 1024),
                max_disk_mib: Some(200 * 1024),
                networks: None,
                hosts: None,
            },
            tls_listen: None,
            tls_names: vec!["localhost".into(), "127.0.0.1".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HostSection {
    /// This host's name in routing keys; default: the machine's host name, sanitised.
    pub name: Option<String>,
    /// Guest kernels and initramfs images, shared by every data directory.
    pub cache_dir: PathBuf,
    /// The static powerunit binary; default: found beside the pitwalld binary.
    pub powerunit: Option<PathBuf>,
    pub qemu: PathBuf,
    /// `auto` (KVM where usable, else TCG), `kvm` or `tcg`.
    pub accel: String,
    /// e.g. "120s"
    pub boot_timeout: String,
    /// How this host pulls images from registries.
    pub registry: RegistrySection,
    /// The filesystem of base images built from now on: `erofs` (default; needs erofs-utils)
    /// or `ext4`. Images already in the cache keep theirs.
    pub base_format: String,
    /// `[host.network]`: host networking for VMs (bridge, a TAP and an address per VM, NAT).
    /// On by default; `enabled = false` (or `PITWALL_NETWORK=off`) runs VMs without any
    /// network interface.
    pub network: Option<pitwall_net::NetConfig>,
}

/// `[host.registry]`: how image pulls reach registries.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// Registries (`host[:port]`, as written in image references) reached over plain HTTP,
    /// e.g. `["127.0.0.1:5000"]`. `PITWALL_INSECURE_REGISTRIES` (comma-separated) replaces it.
    pub insecure: Vec<String>,
    /// Extra CA certificates (PEM files) trusted for HTTPS registries, beside the system's.
    pub ca_files: Vec<PathBuf>,
    /// A docker `config.json` to read credentials from (`auths`); absent:
    /// `$HOME/.docker/config.json` when it exists.
    pub docker_config: Option<PathBuf>,
    /// Layers downloaded at once.
    pub concurrency: usize,
    /// Attempts per blob download.
    pub attempts: u32,
    /// Credentials per registry (`[[host.registry.auth]]`), tried before the docker config.
    pub auth: Vec<RegistryAuth>,
}

/// One `[[host.registry.auth]]`: the password is read from a file, never written in the
/// config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    /// `host[:port]`; `docker.io` for Docker Hub.
    pub registry: String,
    pub username: String,
    /// A file holding the password or token (one trailing newline is ignored).
    pub password_file: PathBuf,
}

impl Default for RegistrySection {
    fn default() -> Self {
        let d = pitwall_host::RegistryOptions::default();
        Self {
            insecure: d.insecure,
            ca_files: d.ca_files,
            docker_config: d.docker_config,
            concurrency: d.concurrency,
            attempts: d.attempts,
            auth: Vec::new(),
        }
    }
}

impl RegistrySection {
    /// The host's registry options: reads every password file.
    pub fn options(&self) -> anyhow::Result<pitwall_host::RegistryOptions> {
        if self.concurrency == 0 || self.attempts == 0 {
            bail!("host.registry.concurrency and host.registry.attempts must be at least 1");
        }
        let mut credentials = Vec::new();
        for a in &self.auth {
            let text = std::fs::read_to_string(&a.password_file).with_context(|| {
                format!(
                    "cannot read the password file {} of registry {} (host.registry.auth)",
                    a.password_file.display(),
                    a.registry
                )
            })?;
            let password = text
                .strip_suffix('\n')
                .map(|p| p.strip_suffix('\r').unwrap_or(p))
                .unwrap_or(&text)
                .to_string();
            if password.is_empty() {
                bail!(
                    "the password file {} of registry {} is empty",
                    a.password_file.display(),
                    a.registry
                );
            }
            credentials.push((
                a.registry.clone(),
                pitwall_host::Credential::Basic {
                    username: a.username.clone(),
                    password,
                },
            ));
        }
        Ok(pitwall_host::RegistryOptions {
            insecure: self.insecure.clone(),
            ca_files: self.ca_files.clone(),
            credentials,
            docker_config: self.docker_config.clone(),
            concurrency: self.concurrency,
            attempts: self.attempts,
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSection {
    /// This replica's name; default "local".
    pub replica: String,
    /// Grace for a clean guest shutdown before the VMM is killed, e.g. "10s".
    pub stop_timeout: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("/var/lib/pitwall"),
            listen: "127.0.0.1:7070".into(),
            host: HostSection::default(),
            control: ControlSection::default(),
            auth: AuthSection::default(),
            overlay: OverlaySection::default(),
        }
    }
}

impl Default for HostSection {
    fn default() -> Self {
        Self {
            name: None,
            cache_dir: PathBuf::from("/var/cache/pitwall"),
            powerunit: None,
            qemu: PathBuf::from("qemu-system-x86_64"),
            accel: "auto".into(),
            boot_timeout: "120s".into(),
            registry: RegistrySection::default(),
            base_format: "erofs".into(),
            network: Some(pitwall_net::NetConfig::default()),
        }
    }
}

impl Default for ControlSection {
    fn default() -> Self {
        Self {
            replica: "local".into(),
            stop_timeout: "10s".into(),
        }
    }
}

/// Load the file (if any) and apply `PITWALL_*` overrides from `env`.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> anyhow::Result<Config> {
    let mut cfg = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("config file {} is not valid", p.display()))?
        }
        None => Config::default(),
    };
    let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(v) = get("PITWALL_DATA_DIR") {
        cfg.data_dir = v.into();
    }
    if let Some(v) = get("PITWALL_LISTEN") {
        cfg.listen = v;
    }
    if let Some(v) = get("PITWALL_HOST_NAME") {
        cfg.host.name = Some(v);
    }
    if let Some(v) = get("PITWALL_CACHE_DIR") {
        cfg.host.cache_dir = v.into();
    }
    if let Some(v) = get("PITWALL_POWERUNIT") {
        cfg.host.powerunit = Some(v.into());
    }
    if let Some(v) = get("PITWALL_QEMU") {
        cfg.host.qemu = v.into();
    }
    if let Some(v) = get("PITWALL_ACCEL") {
        cfg.host.accel = v;
    }
    if let Some(v) = get("PITWALL_BOOT_TIMEOUT") {
        cfg.host.boot_timeout = v;
    }
    if let Some(v) = get("PITWALL_BASE_FORMAT") {
        cfg.host.base_format = v;
    }
    if let Some(v) = get("PITWALL_NETWORK") {
        match v.as_str() {
            "on" | "1" | "true" => {
                cfg.host
                    .network
                    .get_or_insert_with(Default::default)
                    .enabled = true;
            }
            "off" | "0" | "false" => {
                cfg.host
                    .network
                    .get_or_insert_with(Default::default)
                    .enabled = false;
            }
            other => anyhow::bail!("PITWALL_NETWORK={other:?}: use \"on\" or \"off\""),
        }
    }
    if let Some(v) = get("PITWALL_NETNS") {
        // A namespace asked for is networking wanted (it wins over PITWALL_NETWORK=off).
        let n = cfg.host.network.get_or_insert_with(Default::default);
        n.netns = Some(v);
        n.enabled = true;
    }
    if let Some(v) = get("PITWALL_OVERLAY") {
        cfg.overlay.enabled = match v.as_str() {
            "on" | "1" | "true" => true,
            "off" | "0" | "false" => false,
            other => anyhow::bail!("PITWALL_OVERLAY={other:?}: use \"on\" or \"off\""),
        };
    }
    if let Some(v) = get("PITWALL_EDGE_LISTEN") {
        cfg.overlay.edge_listen = v;
    }
    if let Some(v) = get("PITWALL_EDGE_ADDRESS") {
        cfg.overlay.edge_address = Some(v);
    }
    if let Some(v) = get("PITWALL_EDGE_NAMES") {
        cfg.overlay.edge_names = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(v) = get("PITWALL_INSECURE_REGISTRIES") {
        cfg.host.registry.insecure = v
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(String::from)
            .collect();
    }
    if let Some(v) = get("PITWALL_REPLICA") {
        cfg.control.replica = v;
    }
    if let Some(v) = get("PITWALL_ISSUER") {
        cfg.auth.issuer = Some(v);
    }
    if let Some(v) = get("PITWALL_AUDIENCE") {
        cfg.auth.audience = v;
    }
    if let Some(v) = get("PITWALL_CLIENT_ID") {
        cfg.auth.client_id = v;
    }
    if let Some(v) = get("PITWALL_TLS_LISTEN") {
        cfg.auth.tls_listen = Some(v);
    }
    Ok(cfg)
}

pub fn duration(what: &str, s: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(s)
        .with_context(|| format!("{what} = {s:?} is not a duration; use e.g. 500ms, 30s, 2m"))
}

pub fn accel(s: &str) -> anyhow::Result<pitwall_vmm::Accel> {
    Ok(match s {
        "auto" => pitwall_vmm::Accel::Auto,
        "kvm" => pitwall_vmm::Accel::Kvm,
        "tcg" => pitwall_vmm::Accel::Tcg,
        other => bail!("accel = {other:?} is not known; use auto, kvm or tcg"),
    })
}

/// The machine's host name as a routing word: lower case, `[a-z0-9-]`, at most 63.
pub fn default_host_name() -> String {
    let raw = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let first = raw.split('.').next().unwrap_or("").to_ascii_lowercase();
    let clean: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let clean = clean.trim_matches('-').to_string();
    if clean.is_empty() {
        return "local".into();
    }
    // A host name that is a reserved routing word (a machine called "vm") gets a prefix.
    if pitwall_proto::routing::validate_host(&clean).is_ok() {
        clean
    } else {
        format!("host-{clean}")
    }
}

/// Where the static powerunit is, when the config does not say: beside the binary in an
/// install (`<prefix>/bin/pitwalld` → `<prefix>/lib/pitwall/powerunit`), or in the cargo
/// target directory as `scripts/setup.sh` builds it.
pub fn default_powerunit() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [
        dir.join("../lib/pitwall/powerunit"),
        dir.join("../x86_64-unknown-linux-gnu/release/powerunit"),
        dir.join("../../x86_64-unknown-linux-gnu/release/powerunit"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_a_file() {
        let c = load(None, &HashMap::new()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:7070");
        assert_eq!(c.host.accel, "auto");
    }

    #[test]
    fn file_then_env_overrides() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(&f, "listen = \"0.0.0.0:1\"\n[host]\naccel = \"tcg\"\n").unwrap();
        let env = HashMap::from([("PITWALL_LISTEN".to_string(), "127.0.0.1:9".to_string())]);
        let c = load(Some(&f), &env).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.host.accel, "tcg");
    }

    #[test]
    fn unknown_keys_are_refused_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = format!("{:#}", load(Some(&f), &HashMap::new()).unwrap_err());
        assert!(e.contains("p.toml") && e.contains("lisen"), "{e}");
    }

    #[test]
    fn auth_defaults_to_the_builtin_issuer_with_a_default_quota() {
        let c = load(None, &HashMap::new()).unwrap();
        assert_eq!(c.auth.issuer, None);
        assert_eq!(c.auth.audience, "pitwall");
        assert_eq!(c.auth.default_policy.max_vms, Some(10));
        assert_eq!(c.auth.tls_listen, None);
    }

    #[test]
    fn external_issuer_and_claims_come_from_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(
            &f,
            "[auth]\nissuer = \"https://kc/realms/r\"\n[auth.claims]\ngroups = \"teams\"\n\
             [auth.default_policy]\nmax_vms = 3\n",
        )
        .unwrap();
        let c = load(Some(&f), &HashMap::new()).unwrap();
        assert_eq!(c.auth.issuer.as_deref(), Some("https://kc/realms/r"));
        assert_eq!(c.auth.claims.groups, "teams");
        assert_eq!(c.auth.claims.username, "preferred_username");
        assert_eq!(c.auth.default_policy.max_vms, Some(3));
        assert_eq!(c.auth.default_policy.max_vcpus, None);
    }

    #[test]
    fn registry_settings_come_from_the_file_with_passwords_from_their_files() {
        let d = tempfile::tempdir().unwrap();
        let pw = d.path().join("ghcr.password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(
            &f,
            format!(
                "[host.registry]\ninsecure = [\"127.0.0.1:5000\"]\nca_files = [\"/etc/ca.pem\"]\n\
                 docker_config = \"/root/.docker/config.json\"\nconcurrency = 2\n\
                 [[host.registry.auth]]\nregistry = \"ghcr.io\"\nusername = \"bot\"\n\
                 password_file = \"{}\"\n",
                pw.display()
            ),
        )
        .unwrap();
        let c = load(Some(&f), &HashMap::new()).unwrap();
        let o = c.host.registry.options().unwrap();
        assert_eq!(o.insecure, ["127.0.0.1:5000"]);
        assert_eq!(o.ca_files, [PathBuf::from("/etc/ca.pem")]);
        assert_eq!(
            o.docker_config.as_deref(),
            Some(Path::new("/root/.docker/config.json"))
        );
        assert_eq!((o.concurrency, o.attempts), (2, 3));
        assert_eq!(
            o.credentials,
            [(
                "ghcr.io".to_string(),
                pitwall_host::Credential::Basic {
                    username: "bot".into(),
                    password: "s3cret".into()
                }
            )]
        );
    }

    #[test]
    fn a_password_in_the_config_is_refused_and_a_missing_password_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(
            &f,
            "[[host.registry.auth]]\nregistry = \"r\"\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let e = format!("{:#}", load(Some(&f), &HashMap::new()).unwrap_err());
        assert!(e.contains("password"), "{e}");
        std::fs::write(
            &f,
            "[[host.registry.auth]]\nregistry = \"r\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\"\n",
        )
        .unwrap();
        let c = load(Some(&f), &HashMap::new()).unwrap();
        let e = format!("{:#}", c.host.registry.options().unwrap_err());
        assert!(e.contains("/nonexistent/pw"), "{e}");
    }

    #[test]
    fn insecure_registries_from_the_environment_replace_the_files() {
        let env = HashMap::from([(
            "PITWALL_INSECURE_REGISTRIES".to_string(),
            "127.0.0.1:5000, reg.lan:8080,".to_string(),
        )]);
        let c = load(None, &env).unwrap();
        assert_eq!(c.host.registry.insecure, ["127.0.0.1:5000", "reg.lan:8080"]);
    }

    #[test]
    fn default_host_name_is_a_valid_routing_word() {
        let n = default_host_name();
        assert!(pitwall_proto::routing::validate_host(&n).is_ok(), "{n}");
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        assert!(accel("fast")
            .unwrap_err()
            .to_string()
            .contains("auto, kvm or tcg"));
        assert!(duration("boot_timeout", "soon")
            .unwrap_err()
            .to_string()
            .contains("30s"));
    }

    #[test]
    fn the_base_format_defaults_to_erofs_and_a_bad_one_says_what_is_allowed() {
        let c = load(None, &HashMap::new()).unwrap();
        let h = crate::host_config(&c).unwrap();
        assert_eq!(h.base_format.as_str(), "erofs");
        let env = HashMap::from([("PITWALL_BASE_FORMAT".to_string(), "ext4".to_string())]);
        let h = crate::host_config(&load(None, &env).unwrap()).unwrap();
        assert_eq!(h.base_format.as_str(), "ext4");
        let env = HashMap::from([("PITWALL_BASE_FORMAT".to_string(), "squashfs".to_string())]);
        let e = format!(
            "{:#}",
            crate::host_config(&load(None, &env).unwrap()).unwrap_err()
        );
        assert!(
            e.contains("base_format") && e.contains("\"erofs\" or \"ext4\""),
            "{e}"
        );
    }

    #[test]
    fn the_overlay_is_on_with_a_local_edge_unless_configured() {
        let c = load(None, &HashMap::new()).unwrap();
        assert!(c.overlay.enabled);
        assert_eq!(c.overlay.edge_listen, "127.0.0.1:0");
        let env = HashMap::from([
            ("PITWALL_OVERLAY".to_string(), "off".to_string()),
            (
                "PITWALL_EDGE_LISTEN".to_string(),
                "10.0.0.1:7443".to_string(),
            ),
            (
                "PITWALL_EDGE_NAMES".to_string(),
                "10.0.0.1, edge.example".to_string(),
            ),
        ]);
        let c = load(None, &env).unwrap();
        assert!(!c.overlay.enabled);
        assert_eq!(c.overlay.edge_listen, "10.0.0.1:7443");
        assert_eq!(c.overlay.edge_names, ["10.0.0.1", "edge.example"]);
        let bad = HashMap::from([("PITWALL_OVERLAY".to_string(), "perhaps".to_string())]);
        assert!(format!("{:#}", load(None, &bad).unwrap_err()).contains("PITWALL_OVERLAY"));
    }

    #[test]
    fn host_networking_is_on_unless_turned_off_and_keeps_its_pool_in_the_data_dir() {
        let c = load(None, &HashMap::new()).unwrap();
        let on = crate::host_config(&c)
            .unwrap()
            .network
            .expect("on by default");
        assert_eq!(on.bridge, "fcbr0");
        let d0 = tempfile::tempdir().unwrap();
        let off = d0.path().join("off.toml");
        std::fs::write(&off, "[host.network]\nenabled = false\n").unwrap();
        let c = load(Some(&off), &HashMap::new()).unwrap();
        assert_eq!(crate::host_config(&c).unwrap().network, None);
        let on_again = HashMap::from([("PITWALL_NETWORK".to_string(), "on".to_string())]);
        let c = load(Some(&off), &on_again).unwrap();
        assert!(crate::host_config(&c).unwrap().network.is_some());
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("p.toml");
        std::fs::write(
            &f,
            "data_dir = \"/srv/pw\"\n[host.network]\nbridge = \"pwbr1\"\nuplink = \"eth0\"\n",
        )
        .unwrap();
        let h = crate::host_config(&load(Some(&f), &HashMap::new()).unwrap()).unwrap();
        let n = h.network.expect("configured");
        assert_eq!(
            (n.bridge.as_str(), n.uplink.as_deref()),
            ("pwbr1", Some("eth0"))
        );
        assert_eq!(n.state_dir, std::path::Path::new("/srv/pw/host/net"));
        let off = HashMap::from([("PITWALL_NETWORK".to_string(), "off".to_string())]);
        assert_eq!(
            crate::host_config(&load(Some(&f), &off).unwrap())
                .unwrap()
                .network,
            None
        );
        let ns = HashMap::from([("PITWALL_NETNS".to_string(), "pw1".to_string())]);
        let n = crate::host_config(&load(None, &ns).unwrap())
            .unwrap()
            .network
            .unwrap();
        assert_eq!(
            (n.bridge.as_str(), n.netns.as_deref()),
            ("fcbr0", Some("pw1"))
        );
        let bad = HashMap::from([("PITWALL_NETWORK".to_string(), "maybe".to_string())]);
        assert!(format!("{:#}", load(None, &bad).unwrap_err()).contains("\"on\" or \"off\""));
        std::fs::write(&f, "[host.network]\nbrige = \"x\"\n").unwrap();
        let e = format!("{:#}", load(Some(&f), &HashMap::new()).unwrap_err());
        assert!(e.contains("brige"), "{e}");
    }
}
