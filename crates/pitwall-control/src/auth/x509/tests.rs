use super::*;

use pitwall_api::cert::{generate_key_and_csr, parse_chain_pem, sign_csr};
use pitwall_api::Policy;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn policy(vms: u64) -> Policy {
    Policy {
        max_vms: Some(vms),
        hosts: Some(vec!["h1".into()]),
        ..Policy::default()
    }
}

fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
    parse_chain_pem(pem)
        .expect("parse")
        .into_iter()
        .map(|c| CertificateDer::from(c.der))
        .collect()
}

/// The CA's first-level certificate for `user`: `(cert_pem, key_pem, serial)`.
fn first_level(ca: &DeploymentCa, user: &str, p: &Policy) -> (String, String, String) {
    let (key, csr) = generate_key_and_csr("whatever-the-client-says").expect("csr");
    let s = ca.issue(&csr, user, p, true, 30 * DAY).expect("issue");
    (s.cert_pem, key, s.serial_hex)
}

fn sign(
    issuer: &(String, String, String),
    cn: &str,
    p: &Policy,
    ca: bool,
    validity: Duration,
) -> (String, String, String) {
    let (key, csr) = generate_key_and_csr(cn).expect("csr");
    let s = sign_csr(&csr, &issuer.0, &issuer.1, p, ca, validity).expect("sign");
    (s.cert_pem, key, s.serial_hex)
}

#[test]
fn opening_twice_yields_the_same_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = DeploymentCa::open(dir.path()).expect("first open");
    let second = DeploymentCa::open(dir.path()).expect("second open");
    assert_eq!(first.ca_pem(), second.ca_pem());
    assert_eq!(first.serial(), second.serial());
    let other = DeploymentCa::open(&dir.path().join("elsewhere")).expect("another");
    assert_ne!(first.ca_pem(), other.ca_pem());
}

#[test]
fn the_ca_key_is_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    DeploymentCa::open(dir.path()).expect("open");
    let mode = |f: &str| {
        std::fs::metadata(dir.path().join(f))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(CA_KEY_FILE), 0o600);
    assert_eq!(mode(CA_FILE), 0o644);
}

#[test]
fn a_ca_missing_its_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    DeploymentCa::open(dir.path()).expect("open");
    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).expect("rm");
    let err = DeploymentCa::open(dir.path()).unwrap_err();
    assert!(matches!(err, X509Error::HalfCa { .. }), "{err}");
}

#[test]
fn issue_forces_the_common_name_to_the_username() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DeploymentCa::open(dir.path()).expect("open");
    let (_, csr) = generate_key_and_csr("root").expect("csr");
    let s = ca
        .issue(&csr, "alice", &policy(3), false, DAY)
        .expect("issue");
    let info = &parse_chain_pem(&s.cert_pem).expect("parse")[0];
    assert_eq!(info.subject_cn, "alice");
    assert_eq!(info.policy, Some(policy(3)));
    assert_eq!(info.serial_hex, s.serial_hex);
    assert!(!info.is_ca);
}

#[test]
fn a_depth_three_chain_acts_for_the_first_level_holder() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DeploymentCa::open(dir.path()).expect("open");
    let alice = first_level(&ca, "alice", &policy(10));
    let bob = sign(&alice, "bob", &policy(5), true, 20 * DAY);
    let carol = sign(&bob, "carol", &policy(2), false, 10 * DAY);

    let chain = ders(&format!("{}{}{}", carol.0, bob.0, alice.0));
    let id = ca.verify_client_chain(&chain).expect("accepted");
    assert_eq!(id.username, "alice");
    assert_eq!(
        id.serials,
        [alice.2.clone(), bob.2.clone(), carol.2.clone()]
    );
    assert_eq!(
        id.charge_path,
        format!("/user:alice/c:{}/c:{}/c:{}/", alice.2, bob.2, carol.2)
    );
    assert_eq!(id.policies, [10, 5, 2].map(|n| core_policy(&policy(n))));
    assert_eq!(id.leaf_serial(), carol.2);

    // The CA at the end of the presented chain changes nothing.
    let mut with_ca = chain.clone();
    with_ca.push(ca.ca_der());
    assert_eq!(ca.verify_client_chain(&with_ca).expect("accepted"), id);
}

#[test]
fn a_chain_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ours = DeploymentCa::open(&dir.path().join("ours")).expect("open");
    let theirs = DeploymentCa::open(&dir.path().join("theirs")).expect("open");
    let alice = first_level(&theirs, "alice", &policy(10));
    let leaf = sign(&alice, "leaf", &policy(1), false, DAY);
    let err = ours
        .verify_client_chain(&ders(&format!("{}{}", leaf.0, alice.0)))
        .unwrap_err();
    assert!(
        matches!(err, X509Error::Chain(ref e) if matches!(**e, CertError::Linkage { .. })),
        "{err}"
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DeploymentCa::open(dir.path()).expect("open");
    let alice = first_level(&ca, "alice", &policy(10));
    let leaf = sign(&alice, "short", &policy(1), false, Duration::from_secs(1));
    let chain = ders(&format!("{}{}", leaf.0, alice.0));
    let now = OffsetDateTime::now_utc();
    ca.verify_client_chain_at(&chain, now)
        .expect("valid at first");
    let err = ca
        .verify_client_chain_at(&chain, now + time::Duration::seconds(5))
        .unwrap_err();
    match err {
        X509Error::Chain(e) if matches!(*e, CertError::NotValidNow { .. }) => {
            let CertError::NotValidNow {
                serial, problem, ..
            } = *e
            else {
                unreachable!()
            };
            assert_eq!(serial, leaf.2);
            assert!(problem.starts_with("expired"), "{problem}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn a_chain_without_its_first_level_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = DeploymentCa::open(dir.path()).expect("open");
    let alice = first_level(&ca, "alice", &policy(10));
    let leaf = sign(&alice, "leaf", &policy(1), false, DAY);
    // The leaf alone does not chain to the CA: bob cannot pose as the first level.
    let err = ca.verify_client_chain(&ders(&leaf.0)).unwrap_err();
    assert!(
        matches!(err, X509Error::Chain(ref e) if matches!(**e, CertError::Linkage { .. })),
        "{err}"
    );
    assert!(matches!(
        ca.verify_client_chain(&[]),
        Err(X509Error::NoCertificate)
    ));
}
