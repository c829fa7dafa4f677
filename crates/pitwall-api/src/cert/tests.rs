use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn policy(vms: u64, hosts: &[&str]) -> Policy {
    Policy {
        max_vms: Some(vms),
        max_memory_mib: Some(vms * 1024),
        hosts: Some(hosts.iter().map(|h| h.to_string()).collect()),
        ..Policy::default()
    }
}

/// A certificate and its key, as files would hold them.
struct Holder {
    cert_pem: String,
    key_pem: String,
    serial: String,
}

fn root() -> Holder {
    let (cert_pem, key_pem) = generate_root_ca("Pitwall test CA", 365 * DAY).expect("root");
    let serial = parse_chain_pem(&cert_pem).expect("parse")[0]
        .serial_hex
        .clone();
    Holder {
        cert_pem,
        key_pem,
        serial,
    }
}

fn issue_by_root(root: &Holder, cn: &str, p: &Policy, ca: bool) -> Holder {
    let (key_pem, csr) = generate_key_and_csr("ignored").expect("csr");
    let s = sign_csr_as_root(&csr, &root.cert_pem, &root.key_pem, cn, p, ca, 30 * DAY)
        .expect("root signs");
    Holder {
        cert_pem: s.cert_pem,
        key_pem,
        serial: s.serial_hex,
    }
}

/// A validity one hour shorter than what remains of the issuer's.
fn shorter_than(issuer: &Holder) -> Duration {
    let info = &parse_chain_pem(&issuer.cert_pem).expect("issuer")[0];
    let left = info.not_after - OffsetDateTime::now_utc() - time::Duration::hours(1);
    Duration::try_from(left).expect("positive")
}

fn issue(issuer: &Holder, cn: &str, p: &Policy, ca: bool) -> Holder {
    let (key_pem, csr) = generate_key_and_csr(cn).expect("csr");
    let validity = shorter_than(issuer);
    let s = sign_csr(&csr, &issuer.cert_pem, &issuer.key_pem, p, ca, validity)
        .expect("intermediate signs");
    Holder {
        cert_pem: s.cert_pem,
        key_pem,
        serial: s.serial_hex,
    }
}

fn issue_unchecked(issuer: &Holder, cn: &str, p: &Policy, ca: bool) -> Holder {
    let (key_pem, csr) = generate_key_and_csr(cn).expect("csr");
    let info = parse_chain_pem(&issuer.cert_pem).expect("issuer")[0].clone();
    let validity = shorter_than(issuer);
    let s = sign_unchecked_policy(&csr, &info, &issuer.key_pem, None, p, ca, validity)
        .expect("unchecked signing");
    Holder {
        cert_pem: s.cert_pem,
        key_pem,
        serial: s.serial_hex,
    }
}

fn chain(certs: &[&Holder]) -> String {
    certs.iter().map(|h| h.cert_pem.as_str()).collect()
}

#[test]
fn policy_extension_round_trips_in_canonical_form() {
    let p = Policy {
        max_vms: Some(3),
        max_vcpus: None,
        max_memory_mib: Some(4096),
        max_disk_mib: Some(0),
        networks: Some(vec![]),
        hosts: Some(vec!["h2".into(), "h1".into(), "h2".into()]),
    };
    let der = encode_policy_extension(&p);
    assert_eq!(der[0], 0x0c, "a UTF8String");
    let back = decode_policy_extension(&der).expect("decode");
    assert_eq!(back, canonical_policy(&p));
    assert_eq!(back.hosts, Some(vec!["h1".to_string(), "h2".to_string()]));

    // Long form of the DER length (> 127 bytes of JSON).
    let long = policy(1, &["a-rather-long-host-name-0000000000000000000000000"; 4]);
    let long = Policy {
        networks: Some((0..20).map(|i| format!("network-{i}")).collect()),
        ..long
    };
    let der = encode_policy_extension(&long);
    assert_eq!(der[1], 0x82, "two length bytes");
    assert_eq!(
        decode_policy_extension(&der).expect("decode"),
        canonical_policy(&long)
    );
}

#[test]
fn malformed_policy_extensions_are_refused() {
    let good = encode_policy_extension(&policy(1, &[]));
    let mut trailing = good.clone();
    trailing.push(0);
    let mut octet = good.clone();
    octet[0] = 0x04;
    let unknown_field = {
        let json = br#"{"max_vm":1}"#;
        let mut v = vec![0x0c, json.len() as u8];
        v.extend_from_slice(json);
        v
    };
    let non_minimal = {
        let json = br#"{"max_vms":1}"#;
        let mut v = vec![0x0c, 0x81, json.len() as u8];
        v.extend_from_slice(json);
        v
    };
    for bad in [vec![], trailing, octet, unknown_field, non_minimal] {
        assert!(
            matches!(
                decode_policy_extension(&bad),
                Err(CertError::PolicyExtension(_))
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn a_depth_three_chain_parses_and_nests() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &["h1", "h2"]), true);
    let bob = issue(&alice, "bob", &policy(5, &["h1"]), true);
    let carol = issue(&bob, "carol", &policy(2, &["h1"]), false);

    let parsed = parse_chain_pem(&chain(&[&carol, &bob, &alice])).expect("parse");
    let cns: Vec<_> = parsed.iter().map(|c| c.subject_cn.as_str()).collect();
    assert_eq!(cns, ["carol", "bob", "alice"]);
    assert_eq!(parsed[2].issuer_cn, "Pitwall test CA");
    assert_eq!(parsed[0].issuer_cn, "bob");
    let serials: Vec<_> = parsed.iter().map(|c| c.serial_hex.clone()).collect();
    assert_eq!(
        serials,
        [
            carol.serial.clone(),
            bob.serial.clone(),
            alice.serial.clone()
        ]
    );
    assert!(serials
        .iter()
        .all(|s| s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())));
    assert_eq!(
        parsed.iter().map(|c| c.is_ca).collect::<Vec<_>>(),
        [false, true, true]
    );
    assert_eq!(parsed[2].path_len, Some(u32::from(FIRST_LEVEL_PATH_LEN)));
    assert_eq!(
        parsed[1].path_len,
        Some(u32::from(FIRST_LEVEL_PATH_LEN) - 1)
    );
    assert_eq!(parsed[0].policy, Some(policy(2, &["h1"])));

    verify_policy_nesting(&parsed).expect("nests");
    let anchor = parse_chain_pem(&ca.cert_pem).expect("root")[0].clone();
    verify_chain_links(&parsed, &anchor, OffsetDateTime::now_utc()).expect("links");
    assert!(anchor.policy.is_none() && ca.serial.len() == 32);
}

#[test]
fn the_root_forces_the_common_name() {
    let ca = root();
    let (_, csr) = generate_key_and_csr("mallory").expect("csr");
    let s = sign_csr_as_root(
        &csr,
        &ca.cert_pem,
        &ca.key_pem,
        "alice",
        &policy(1, &[]),
        false,
        DAY,
    )
    .expect("sign");
    let info = &parse_chain_pem(&s.cert_pem).expect("parse")[0];
    assert_eq!(info.subject_cn, "alice");
    assert!(!info.is_ca);
}

#[test]
fn nesting_names_the_link_that_exceeds_its_parent() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &["h1", "h2"]), true);
    let bob = issue(&alice, "bob", &policy(5, &["h1"]), true);
    // Bob signs beyond his own policy, bypassing the check `sign_csr` makes.
    let carol = issue_unchecked(&bob, "carol", &policy(7, &["h1", "h3"]), false);

    let parsed = parse_chain_pem(&chain(&[&carol, &bob, &alice])).expect("parse");
    let err = verify_policy_nesting(&parsed).unwrap_err();
    match &err {
        CertError::ExceedsParent {
            serial,
            cn,
            parent,
            excess,
        } => {
            assert_eq!((serial, cn.as_str()), (&carol.serial, "carol"));
            assert_eq!(parent, &format!("{} (bob)", bob.serial));
            assert!(
                excess.contains(&"max_vms 7 > parent's 5".to_string()),
                "{excess:?}"
            );
            assert!(
                excess
                    .iter()
                    .any(|e| e.starts_with("hosts h1,h3 not within")),
                "{excess:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.to_string().contains(&carol.serial), "{err}");
}

#[test]
fn nesting_refuses_a_certificate_without_policy() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &[]), true);
    let parsed = parse_chain_pem(&chain(&[&alice, &ca])).expect("parse");
    let err = verify_policy_nesting(&parsed).unwrap_err();
    assert!(matches!(err, CertError::NoPolicy { ref serial, .. } if serial == &ca.serial));
}

#[test]
fn signing_refuses_a_policy_beyond_the_issuers() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &["h1"]), true);
    let (_, csr) = generate_key_and_csr("bob").expect("csr");
    let unlimited_hosts = Policy {
        hosts: None,
        ..policy(2, &[])
    };
    for wider in [policy(11, &["h1"]), unlimited_hosts] {
        let err = sign_csr(&csr, &alice.cert_pem, &alice.key_pem, &wider, false, DAY).unwrap_err();
        assert!(
            matches!(err, CertError::ExceedsIssuer { ref serial, .. } if serial == &alice.serial),
            "{err}"
        );
    }
}

#[test]
fn signing_refuses_a_validity_beyond_the_issuers() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &[]), true); // 30 days
    let (_, csr) = generate_key_and_csr("bob").expect("csr");
    let err = sign_csr(
        &csr,
        &alice.cert_pem,
        &alice.key_pem,
        &policy(1, &[]),
        false,
        31 * DAY,
    )
    .unwrap_err();
    assert!(
        matches!(err, CertError::ValidityBeyondIssuer { .. }),
        "{err}"
    );
    sign_csr(
        &csr,
        &alice.cert_pem,
        &alice.key_pem,
        &policy(1, &[]),
        false,
        29 * DAY,
    )
    .expect("within the issuer's validity");
}

#[test]
fn signing_refuses_a_non_ca_issuer() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &[]), false);
    let (_, csr) = generate_key_and_csr("bob").expect("csr");
    let err = sign_csr(
        &csr,
        &alice.cert_pem,
        &alice.key_pem,
        &policy(1, &[]),
        false,
        DAY,
    )
    .unwrap_err();
    assert!(matches!(err, CertError::NotCa { .. }), "{err}");
}

#[test]
fn signing_refuses_an_issuer_without_policy_and_a_foreign_key() {
    let ca = root();
    let (_, csr) = generate_key_and_csr("bob").expect("csr");
    let err = sign_csr(&csr, &ca.cert_pem, &ca.key_pem, &policy(1, &[]), false, DAY).unwrap_err();
    assert!(matches!(err, CertError::NoPolicy { .. }), "{err}");

    let alice = issue_by_root(&ca, "alice", &policy(10, &[]), true);
    let other = issue_by_root(&ca, "other", &policy(10, &[]), true);
    let err = sign_csr(
        &csr,
        &alice.cert_pem,
        &other.key_pem,
        &policy(1, &[]),
        false,
        DAY,
    )
    .unwrap_err();
    assert!(matches!(err, CertError::KeyMismatch { .. }), "{err}");
}

#[test]
fn the_path_length_runs_out() {
    let ca = root();
    let mut holder = issue_by_root(&ca, "alice", &policy(10, &[]), true);
    for level in 0..FIRST_LEVEL_PATH_LEN {
        holder = issue(&holder, &format!("level{level}"), &policy(10, &[]), true);
    }
    let (_, csr) = generate_key_and_csr("too-deep").expect("csr");
    let err = sign_csr(
        &csr,
        &holder.cert_pem,
        &holder.key_pem,
        &policy(1, &[]),
        true,
        DAY,
    )
    .unwrap_err();
    assert!(matches!(err, CertError::PathLenExhausted { .. }), "{err}");
    // A leaf may still be signed.
    sign_csr(
        &csr,
        &holder.cert_pem,
        &holder.key_pem,
        &policy(1, &[]),
        false,
        DAY,
    )
    .expect("leaf");
}

#[test]
fn links_refuse_a_chain_out_of_order_or_from_another_root() {
    let ca = root();
    let alice = issue_by_root(&ca, "alice", &policy(10, &[]), true);
    let bob = issue(&alice, "bob", &policy(5, &[]), false);
    let anchor = parse_chain_pem(&ca.cert_pem).expect("root")[0].clone();
    let now = OffsetDateTime::now_utc();

    let reversed = parse_chain_pem(&chain(&[&alice, &bob])).expect("parse");
    assert!(matches!(
        verify_chain_links(&reversed, &anchor, now),
        Err(CertError::Linkage { .. })
    ));

    let other = root();
    let foreign_anchor = parse_chain_pem(&other.cert_pem).expect("root")[0].clone();
    let good = parse_chain_pem(&chain(&[&bob, &alice])).expect("parse");
    assert!(matches!(
        verify_chain_links(&good, &foreign_anchor, now),
        Err(CertError::Linkage { .. })
    ));
    let later = now + time::Duration::days(40);
    assert!(matches!(
        verify_chain_links(&good, &anchor, later),
        Err(CertError::NotValidNow { .. })
    ));
}

#[test]
fn check_within_mirrors_the_core_rules() {
    let parent = policy(5, &["a", "b"]);
    assert!(check_within(&policy(5, &["a"]), &parent).is_ok());
    assert_eq!(
        check_within(
            &Policy::default(),
            &Policy {
                max_vms: Some(5),
                ..Policy::default()
            }
        ),
        Err(vec!["max_vms unlimited > parent's 5".to_string()])
    );
    assert!(check_within(&policy(1, &["a"]), &Policy::default()).is_ok());
    let e = check_within(&policy(1, &["c"]), &parent).unwrap_err();
    assert_eq!(e, vec!["hosts c not within parent's a,b".to_string()]);
}
