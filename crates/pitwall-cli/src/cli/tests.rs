//! Parsing tests of the grammar.

use super::*;
use crate::endpoint::DEFAULT_API;
use clap::CommandFactory;

#[test]
fn durations_take_the_units_people_write() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
}

#[test]
fn a_bad_duration_says_how_to_write_one() {
    let e = parse_duration("soon").unwrap_err();
    assert!(e.contains("like 500ms, 30s, 2m or 1h"), "{e}");
    assert!(parse_duration("10").is_err(), "a bare number has no unit");
}

#[test]
fn the_grammar_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn create_waits_two_minutes_by_default() {
    let cli = Cli::try_parse_from(["pitwall", "vm", "create", "web", "--image", "a:1"]).unwrap();
    let Command::Vm(VmCommand::Create(a)) = cli.command else {
        panic!("not create")
    };
    assert_eq!(a.timeout, Duration::from_secs(120));
    assert!(!a.wait && !a.no_start);
}

#[test]
fn wait_defaults_to_running_within_a_minute_and_accepts_any_case() {
    let cli = Cli::try_parse_from(["pitwall", "vm", "wait", "web"]).unwrap();
    let Command::Vm(VmCommand::Wait(a)) = cli.command else {
        panic!("not wait")
    };
    assert_eq!(
        (a.state.as_str(), a.timeout),
        ("RUNNING", Duration::from_secs(60))
    );

    let cli = Cli::try_parse_from(["pitwall", "vm", "wait", "web", "--state", "stopped"]).unwrap();
    let Command::Vm(VmCommand::Wait(a)) = cli.command else {
        panic!("not wait")
    };
    assert_eq!(a.state, "STOPPED");
}

#[test]
fn image_pull_takes_one_reference_with_a_registry_port_and_digest() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let reference = format!("127.0.0.1:5000/demo/hello@{digest}");
    let cli = Cli::try_parse_from(["pitwall", "image", "pull", &reference]).unwrap();
    let Command::Image(ImageCommand::Pull { reference: got }) = cli.command else {
        panic!("not image pull")
    };
    assert_eq!(got, reference);
    assert!(Cli::try_parse_from(["pitwall", "image", "pull"]).is_err());
    assert!(Cli::try_parse_from(["pitwall", "image", "pull", "a:1", "b:2"]).is_err());
}

#[test]
fn image_rm_takes_one_reference_and_force_and_is_also_image_remove() {
    let cli = Cli::try_parse_from(["pitwall", "image", "rm", "a/b:1", "--force"]).unwrap();
    let Command::Image(ImageCommand::Rm { reference, force }) = cli.command else {
        panic!("not image rm")
    };
    assert_eq!((reference.as_str(), force), ("a/b:1", true));
    let cli = Cli::try_parse_from(["pitwall", "image", "remove", "a/b:1"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Image(ImageCommand::Rm { force: false, .. })
    ));
    assert!(Cli::try_parse_from(["pitwall", "image", "rm"]).is_err());
}

#[test]
fn output_format_is_global_and_has_a_short_form() {
    let cli = Cli::try_parse_from(["pitwall", "vm", "list", "-o", "json"]).unwrap();
    assert_eq!(cli.output, OutputFormat::Json);
    let cli = Cli::try_parse_from(["pitwall", "--output", "json", "health"]).unwrap();
    assert_eq!(cli.output, OutputFormat::Json);
    let cli = Cli::try_parse_from(["pitwall", "health"]).unwrap();
    assert_eq!(cli.output, OutputFormat::Text);
}

#[test]
fn long_help_lists_the_exit_codes() {
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(help.contains("6  the API is unreachable"), "{help}");
    assert!(help.contains(" 9  not logged in"), "{help}");
    assert!(help.contains("10  not allowed"), "{help}");
    assert!(help.contains(DEFAULT_API), "{help}");
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("pitwall").chain(args.iter().copied()))
}

#[test]
fn user_create_takes_repeated_groups_and_roles() {
    let cli = parse(&[
        "user",
        "create",
        "bob",
        "--group",
        "ops",
        "--group",
        "dev",
        "--role",
        "r1",
        "--admin",
        "--password-stdin",
    ])
    .unwrap();
    let Command::User(UserCommand::Create(a)) = cli.command else {
        panic!("not user create")
    };
    assert_eq!(
        (a.name.as_str(), a.groups.len(), a.roles.len()),
        ("bob", 2, 1)
    );
    assert!(a.admin && a.password_stdin);
    let req = crate::commands::user::create_request(&a, "pw".into());
    assert_eq!(req.roles, ["r1", "pitwall-admin"]);
}

#[test]
fn the_password_is_never_an_argument() {
    assert!(parse(&["user", "create", "bob", "--password", "x"]).is_err());
    assert!(parse(&["login", "--user", "bob", "--password", "x"]).is_err());
    assert!(
        parse(&["login", "--password-stdin"]).is_err(),
        "needs --user"
    );
    assert!(parse(&["login", "--user", "a", "--token", "t"]).is_err());
    let cli = parse(&["login", "--token", "-"]).unwrap();
    let Command::Login(a) = cli.command else {
        panic!("not login")
    };
    assert_eq!(a.token.as_deref(), Some("-"));
}

#[test]
fn quota_holders_are_user_group_or_default() {
    let cli = parse(&[
        "quota",
        "set",
        "group:ops",
        "--max-vms",
        "4",
        "--max-memory-mib",
        "8192",
        "--host",
        "h1",
        "--host",
        "h2",
        "--network",
        "n1",
    ])
    .unwrap();
    let Command::Quota(QuotaCommand::Set(a)) = cli.command else {
        panic!("not quota set")
    };
    assert_eq!(a.holder, "group:ops");
    assert_eq!(a.limits.max_vms, Some(4));
    assert_eq!(a.limits.max_memory_mib, Some(8192));
    assert_eq!(a.limits.hosts, ["h1", "h2"]);
    assert_eq!(a.limits.networks, ["n1"]);
    assert!(parse(&["quota", "rm", "default"]).is_ok());
    let e = parse(&["quota", "rm", "alice"]).unwrap_err().to_string();
    assert!(e.contains("user:NAME, group:NAME or default"), "{e}");
    assert!(parse(&["quota", "show", "--user", "a", "--group", "b"]).is_err());
}

#[test]
fn delegate_create_needs_a_principal_to_give_to() {
    let cli = parse(&[
        "delegate",
        "create",
        "--to",
        "user:bob",
        "--from",
        "d-1",
        "--max-vcpus",
        "2",
    ])
    .unwrap();
    let Command::Delegate(DelegateCommand::Create(a)) = cli.command else {
        panic!("not delegate create")
    };
    let req = crate::commands::delegate::create_request(&a);
    assert_eq!(req.to, "user:bob");
    assert_eq!(req.from.as_deref(), Some("d-1"));
    assert_eq!(req.policy.max_vcpus, Some(2));
    assert!(parse(&["delegate", "create", "--to", "default"]).is_err());
    assert!(parse(&["delegate", "create", "--to", "bob"]).is_err());
    assert!(parse(&["delegate", "revoke", "d-1"]).is_ok());
}

#[test]
fn audit_filters_are_optional() {
    let cli = parse(&["audit", "--after", "10", "--limit", "5", "--actor", "bob"]).unwrap();
    let Command::Audit(a) = cli.command else {
        panic!("not audit")
    };
    assert_eq!(
        (a.after, a.limit, a.actor.as_deref()),
        (Some(10), Some(5), Some("bob"))
    );
    let Command::Audit(a) = parse(&["audit"]).unwrap().command else {
        panic!("not audit")
    };
    assert_eq!((a.after, a.limit, a.actor), (None, None, None));
}

#[test]
fn vm_create_charges_a_group_or_a_delegation() {
    let cli = parse(&["vm", "create", "w", "--image", "a:1", "--group", "ops"]).unwrap();
    let Command::Vm(VmCommand::Create(a)) = cli.command else {
        panic!("not create")
    };
    assert_eq!(a.group.as_deref(), Some("ops"));
    let cli = parse(&["vm", "create", "w", "--image", "a:1", "--delegation", "d-1"]).unwrap();
    let Command::Vm(VmCommand::Create(a)) = cli.command else {
        panic!("not create")
    };
    assert_eq!(a.delegation.as_deref(), Some("d-1"));
}

#[test]
fn tls_files_are_global_flags() {
    let cli = parse(&[
        "whoami", "--cert", "c.pem", "--key", "k.pem", "--ca", "ca.pem",
    ])
    .unwrap();
    assert_eq!(cli.cert, Some(PathBuf::from("c.pem")));
    assert_eq!(cli.key, Some(PathBuf::from("k.pem")));
    assert_eq!(cli.ca, Some(PathBuf::from("ca.pem")));
}

#[test]
fn cert_request_names_both_files() {
    let cli = parse(&[
        "cert",
        "request",
        "--name",
        "carol",
        "--key-out",
        "c.key",
        "--csr-out",
        "c.csr",
    ])
    .unwrap();
    let Command::Cert(CertCommand::Request(a)) = &cli.command else {
        panic!("not cert request")
    };
    assert_eq!(
        (a.name.as_str(), a.key_out.as_path(), a.csr_out.as_path()),
        ("carol", "c.key".as_ref(), "c.csr".as_ref())
    );
    assert!(!a.force);
    assert!(cli.command.is_local() && !cli.command.uses_token());
    assert!(parse(&["cert", "request", "--name", "c", "--key-out", "k"]).is_err());
}

#[test]
fn cert_sign_goes_to_the_api_unless_given_an_issuer() {
    let cli = parse(&[
        "cert",
        "sign",
        "alice.csr",
        "--out",
        "alice.pem",
        "--as-ca",
        "--validity",
        "7d",
        "--max-vms",
        "5",
        "--host",
        "h1",
    ])
    .unwrap();
    assert!(!cli.command.is_local() && cli.command.uses_token());
    let Command::Cert(CertCommand::Sign(a)) = cli.command else {
        panic!("not cert sign")
    };
    assert!(a.as_ca && a.with_cert.is_none());
    assert_eq!(a.validity.as_deref(), Some("7d"));
    assert_eq!(a.limits.max_vms, Some(5));
    assert_eq!(a.limits.hosts, ["h1"]);

    let cli = parse(&[
        "cert",
        "sign",
        "bob.csr",
        "--with-cert",
        "alice.pem",
        "--with-key",
        "alice.key",
        "--out",
        "bob.pem",
        "--max-vms",
        "3",
    ])
    .unwrap();
    assert!(cli.command.is_local() && !cli.command.uses_token());
    let Command::Cert(CertCommand::Sign(a)) = cli.command else {
        panic!("not cert sign")
    };
    assert!(!a.as_ca);
    assert_eq!(a.with_key.as_deref(), Some("alice.key".as_ref()));

    // an issuer certificate needs its key, and the other way round
    let e = parse(&[
        "cert",
        "sign",
        "b.csr",
        "--out",
        "o",
        "--with-cert",
        "a.pem",
    ]);
    assert!(e.is_err());
    assert!(parse(&["cert", "sign", "b.csr", "--out", "o", "--with-key", "a.key"]).is_err());
    assert!(parse(&["cert", "sign", "b.csr"]).is_err(), "needs --out");
    // --ca stays the global CA file to trust
    let cli = parse(&["cert", "sign", "b.csr", "--out", "o", "--ca", "ca.pem"]).unwrap();
    assert_eq!(cli.ca, Some(PathBuf::from("ca.pem")));
}

#[test]
fn cert_revoke_show_and_ca() {
    let cli = parse(&[
        "cert", "revoke", "ab:CD", "--reason", "lost", "--chain", "c.pem",
    ])
    .unwrap();
    assert!(cli.command.uses_token());
    let Command::Cert(CertCommand::Revoke(a)) = cli.command else {
        panic!("not cert revoke")
    };
    assert_eq!(
        (a.serial.as_str(), a.reason.as_deref()),
        ("ab:CD", Some("lost"))
    );
    assert_eq!(a.chain, Some(PathBuf::from("c.pem")));
    assert!(parse(&["cert", "revoke"]).is_err());

    let cli = parse(&["cert", "show", "c.pem"]).unwrap();
    assert!(cli.command.is_local());

    let cli = parse(&["cert", "ca", "--out", "ca.pem"]).unwrap();
    assert!(!cli.command.is_local() && !cli.command.uses_token());
    let Command::Cert(CertCommand::Ca { out, force }) = cli.command else {
        panic!("not cert ca")
    };
    assert_eq!((out, force), (Some(PathBuf::from("ca.pem")), false));
    assert!(
        parse(&["cert", "ca", "--force"]).is_err(),
        "--force needs --out"
    );
}

#[test]
fn login_logout_and_health_manage_without_the_stored_token() {
    assert!(!parse(&["login"]).unwrap().command.uses_token());
    assert!(!parse(&["logout"]).unwrap().command.uses_token());
    assert!(!parse(&["health"]).unwrap().command.uses_token());
    assert!(parse(&["whoami"]).unwrap().command.uses_token());
    assert!(parse(&["vm", "list"]).unwrap().command.uses_token());
}

#[test]
fn a_service_is_name_policy_and_a_shell_split_command() {
    let s = parse_service("web:always=/usr/bin/web --root '/srv/my site'").unwrap();
    assert_eq!(s.name, "web");
    assert_eq!(s.restart, pitwall_api::RestartPolicy::Always);
    assert_eq!(s.command, ["/usr/bin/web", "--root", "/srv/my site"]);
    let main = parse_service("main").unwrap();
    assert_eq!(
        (main.name.as_str(), main.restart, main.command.len()),
        ("main", pitwall_api::RestartPolicy::Never, 0)
    );
    let e = parse_service("x:on-failure").unwrap();
    assert_eq!(e.restart, pitwall_api::RestartPolicy::OnFailure);
    for (bad, why) in [
        ("web:sometimes=/x", "never, on-failure, always"),
        ("=/x", "no service name"),
        ("web=", "empty command"),
        ("web='/x", "unclosed quote"),
    ] {
        let e = parse_service(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
    let cli = Cli::try_parse_from([
        "pitwall",
        "vm",
        "create",
        "v",
        "--image",
        "i",
        "--service",
        "a=/bin/a",
        "--service",
        "b:always",
    ])
    .unwrap();
    let Command::Vm(VmCommand::Create(c)) = cli.command else {
        panic!("not vm create");
    };
    let names: Vec<_> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
}
