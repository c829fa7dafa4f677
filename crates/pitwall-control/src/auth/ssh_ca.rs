//! The deployment's SSH certificate authority: an Ed25519 key kept as `DATA_DIR/ca/ssh-ca`
//! (OpenSSH format, 0600; generated on first start, never replaced) that signs short-lived
//! OpenSSH **user certificates** for one VM at a time. Guests trust certificates of this CA
//! whose principal names them (`vm:<VM id>`), so a certificate issued to reach one VM opens no
//! other, and it expires in minutes. The control plane issues one only to a caller who may
//! connect to the VM (`access::resolve_for_connect`).
//!
//! With `ssh-key` (RustCrypto): keys, certificates and their OpenSSH encodings.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_key::certificate::{Builder, CertType};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use super::x509::{read_opt, warn_if_readable_by_others, write_atomically, X509Error};

const KEY_FILE: &str = "ssh-ca";
/// Longest validity a certificate may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Validity when none is asked for.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// Clock skew allowed between the control plane and guests (certificates start this early).
const SKEW: Duration = Duration::from_secs(60);

/// The principal a guest accepts in certificates for itself.
pub fn vm_principal(vm_id: &str) -> String {
    format!("vm:{vm_id}")
}

#[derive(Debug, thiserror::Error)]
pub enum SshCaError {
    #[error(transparent)]
    File(#[from] X509Error),
    #[error("the SSH CA key {path} cannot be read: {why}; restore it from a backup, or move it away to make a new CA (guests then need the new CA key: restart their VMs)")]
    BadKey { path: PathBuf, why: String },
    #[error("cannot make the SSH CA key: {0}")]
    Generate(String),
    #[error("the public key is not an OpenSSH public key ({0}); give one line like `ssh-ed25519 AAAA… comment`")]
    BadPublicKey(String),
    #[error("a certificate may be valid for at most {max} s; {asked} s were asked for", max = MAX_TTL.as_secs())]
    TooLong { asked: u64 },
    #[error("cannot sign the certificate: {0}")]
    Sign(String),
}

/// The SSH CA, loaded once.
pub struct SshCa {
    key: PrivateKey,
    public: String,
}

/// A signed user certificate and what it allows.
#[derive(Debug, Clone)]
pub struct Issued {
    /// OpenSSH text (`ssh-ed25519-cert-v01@openssh.com AAAA… key-id`).
    pub certificate: String,
    pub principals: Vec<String>,
    pub key_id: String,
    pub serial: u64,
    /// Unix seconds.
    pub valid_after: u64,
    pub valid_before: u64,
}

impl SshCa {
    /// Loads the CA from `dir`, making it on first use.
    pub fn open(dir: &Path) -> Result<SshCa, SshCaError> {
        let path = dir.join(KEY_FILE);
        let key = match read_opt(&path)? {
            Some(text) => {
                warn_if_readable_by_others(&path);
                PrivateKey::from_openssh(text.as_bytes()).map_err(|e| SshCaError::BadKey {
                    path: path.clone(),
                    why: e.to_string(),
                })?
            }
            None => {
                std::fs::create_dir_all(dir).map_err(|source| X509Error::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                    .map_err(|e| SshCaError::Generate(e.to_string()))?;
                key.set_comment("pitwall SSH CA");
                let text = key
                    .to_openssh(LineEnding::LF)
                    .map_err(|e| SshCaError::Generate(e.to_string()))?;
                write_atomically(&path, text.as_bytes(), 0o600)?;
                tracing::info!(path = %path.display(), "SSH CA generated");
                key
            }
        };
        let public = key
            .public_key()
            .to_openssh()
            .map_err(|e| SshCaError::BadKey {
                path,
                why: e.to_string(),
            })?;
        Ok(SshCa { key, public })
    }

    /// The CA's public key, one OpenSSH line (what guests trust).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Signs `public_key` (OpenSSH text) as a user certificate for `principals`, valid from a
    /// minute ago for `ttl` (at most [`MAX_TTL`]). `key_id` names the holder in guests' logs.
    pub fn sign_user(
        &self,
        public_key: &str,
        principals: &[String],
        key_id: &str,
        ttl: Duration,
    ) -> Result<Issued, SshCaError> {
        if ttl > MAX_TTL {
            return Err(SshCaError::TooLong {
                asked: ttl.as_secs(),
            });
        }
        let subject = PublicKey::from_openssh(public_key.trim())
            .map_err(|e| SshCaError::BadPublicKey(e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| SshCaError::Sign(e.to_string()))?;
        let valid_after = now.saturating_sub(SKEW).as_secs();
        let valid_before = (now + ttl).as_secs();
        let serial = u64::from_be_bytes(rand_bytes());
        let mut b = Builder::new_with_random_nonce(&mut OsRng, subject, valid_after, valid_before)
            .map_err(|e| SshCaError::Sign(e.to_string()))?;
        let sign_err = |e: ssh_key::Error| SshCaError::Sign(e.to_string());
        b.serial(serial).map_err(sign_err)?;
        b.key_id(key_id).map_err(sign_err)?;
        b.cert_type(CertType::User).map_err(sign_err)?;
        for p in principals {
            b.valid_principal(p).map_err(sign_err)?;
        }
        for ext in ["permit-pty", "permit-port-forwarding"] {
            b.extension(ext, "").map_err(sign_err)?;
        }
        let cert = b.sign(&self.key).map_err(sign_err)?;
        Ok(Issued {
            certificate: cert.to_openssh().map_err(sign_err)?,
            principals: principals.to_vec(),
            key_id: key_id.to_string(),
            serial,
            valid_after,
            valid_before,
        })
    }
}

fn rand_bytes() -> [u8; 8] {
    use ssh_key::rand_core::RngCore;
    let mut b = [0u8; 8];
    OsRng.fill_bytes(&mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::Certificate;

    fn user_key() -> PrivateKey {
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).expect("key")
    }

    #[test]
    fn the_ca_is_made_once_kept_private_and_reloaded_the_same() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tmp");
        let a = SshCa::open(d.path()).expect("make");
        let mode = std::fs::metadata(d.path().join(KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = SshCa::open(d.path()).expect("reload");
        assert_eq!(a.public_key(), b.public_key());
        assert!(
            a.public_key().starts_with("ssh-ed25519 "),
            "{}",
            a.public_key()
        );
    }

    #[test]
    fn a_certificate_names_its_vm_expires_soon_and_verifies_against_the_ca() {
        let d = tempfile::tempdir().expect("tmp");
        let ca = SshCa::open(d.path()).expect("ca");
        let user = user_key();
        let public = user.public_key().to_openssh().expect("openssh");
        let principal = vm_principal("0193f1d2-0000-7000-8000-000000000000");
        let issued = ca
            .sign_user(
                &public,
                std::slice::from_ref(&principal),
                "alice",
                DEFAULT_TTL,
            )
            .expect("signed");
        let cert = Certificate::from_openssh(&issued.certificate).expect("parse");
        assert_eq!(cert.valid_principals(), [principal]);
        assert_eq!(cert.key_id(), "alice");
        assert_eq!(cert.cert_type(), CertType::User);
        assert_eq!(cert.public_key(), user.public_key().key_data());
        assert!(issued.valid_before - issued.valid_after <= DEFAULT_TTL.as_secs() + 60);
        let ca_public = PublicKey::from_openssh(ca.public_key()).expect("ca public");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        cert.validate_at(now, [&ca_public.fingerprint(Default::default())])
            .expect("valid now, signed by the CA");
        assert!(cert
            .validate_at(
                issued.valid_before + 1,
                [&ca_public.fingerprint(Default::default())]
            )
            .is_err());
        let other = SshCa::open(tempfile::tempdir().expect("tmp").path()).expect("other ca");
        let other = PublicKey::from_openssh(other.public_key()).expect("other public");
        assert!(cert
            .validate_at(now, [&other.fingerprint(Default::default())])
            .is_err());
    }

    #[test]
    fn bad_keys_and_long_lives_are_refused_with_a_reason() {
        let d = tempfile::tempdir().expect("tmp");
        let ca = SshCa::open(d.path()).expect("ca");
        let e = ca
            .sign_user("ssh-rsa nonsense", &["vm:x".into()], "a", DEFAULT_TTL)
            .unwrap_err();
        assert!(e.to_string().contains("OpenSSH public key"), "{e}");
        let public = user_key().public_key().to_openssh().expect("openssh");
        let e = ca
            .sign_user(&public, &["vm:x".into()], "a", Duration::from_secs(7200))
            .unwrap_err();
        assert!(e.to_string().contains("at most 3600 s"), "{e}");
    }
}
