//! Real guests running declared services: restart policies, their logs, the agent's
//! service status and exec, the power-off when the first service ends, and a services
//! config the guest refuses. Same needs as `boot.rs` (see there); boots are few: one VM
//! holds the services of several checks.

// Test fixtures: a failed setup step should abort the test with its panic.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use pitwall_proto::v1::{GuestConfig, RestartPolicy, Service};
use pitwall_vmm::{Exec, ServiceState, VmInstance, VmmError};

fn service(name: &str, script: &str, restart: RestartPolicy) -> Service {
    Service {
        name: name.into(),
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        restart: restart.into(),
        ..Default::default()
    }
}

fn sh(script: &str) -> Exec {
    Exec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Poll the guest's services until `done` holds for them (or panic after a minute).
async fn services_until(
    vm: &dyn VmInstance,
    what: &str,
    done: impl Fn(&[ServiceState]) -> bool,
) -> Vec<ServiceState> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let list = vm.services().await.unwrap();
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached; services: {list:#?}\n{}",
            console(vm)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn named<'a>(list: &'a [ServiceState], name: &str) -> &'a ServiceState {
    list.iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no service {name} in {list:#?}"))
}

/// One VM, four services: `main` (never, keeps running), `crashy` (on-failure, exits 3),
/// `once` (never, exits 5), `looper` (always, exits 0). Then exec and the logs.
#[tokio::test]
async fn services_restart_by_policy_log_their_output_and_exec_runs_commands() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::with_config(
        "svc",
        GuestConfig {
            env: vec!["GREETING=from-image".into()],
            services: vec![
                service("main", "echo main-up; sleep 600", RestartPolicy::Never),
                service(
                    "crashy",
                    "echo crash-out; echo crash-err >&2; exit 3",
                    RestartPolicy::OnFailure,
                ),
                service("once", "echo once-ran; exit 5", RestartPolicy::Never),
                service("looper", "echo $GREETING; exit 0", RestartPolicy::Always),
            ],
            ..Default::default()
        },
        None,
    );
    let vm = t.launch().await;
    vm.wait_ready(READY_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", console(&*vm)));

    // Restart policies, as the agent reports them.
    let list = services_until(&*vm, "crashy and looper restarted twice", |l| {
        named(l, "crashy").restarts >= 2 && named(l, "looper").restarts >= 2
    })
    .await;
    let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main", "crashy", "once", "looper"]);
    let crashy = named(&list, "crashy");
    assert_eq!(crashy.last_exit, Some(3), "{crashy:?}");
    assert_eq!(crashy.restart, RestartPolicy::OnFailure as i32);
    let looper = named(&list, "looper");
    assert_eq!(looper.last_exit, Some(0), "{looper:?}");
    let once = named(&list, "once");
    assert_eq!(
        (once.state.as_str(), once.restarts, once.last_exit, once.pid),
        ("exited", 0, Some(5), 0),
        "{once:?}"
    );
    let main = named(&list, "main");
    assert_eq!(main.state, "running", "{main:?}");
    assert_ne!(main.pid, 0);

    // Output: prefixed on the console, and in the service's log file.
    assert!(
        console_shows(
            &vm.console_path(),
            "crashy| crash-err",
            Duration::from_secs(10)
        )
        .await,
        "{}",
        console(&*vm)
    );
    assert!(console(&*vm).contains("looper| from-image"));
    let log = vm
        .exec(sh("cat /var/log/pitwall/crashy.log"))
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout).into_owned();
    assert!(
        log.starts_with("crash-out\ncrash-err\ncrash-out\ncrash-err\n"),
        "{log}"
    );
    assert!(
        !log.contains("crashy|"),
        "the log holds the raw lines: {log}"
    );
    // The same log through the agent's ReadLog: a tail, and the main service by default.
    let tail = vm.read_log("crashy", 10).await.unwrap();
    assert_eq!(
        (tail.service.as_str(), tail.truncated),
        ("crashy", true),
        "{tail:?}"
    );
    assert!(
        log.ends_with(&*String::from_utf8_lossy(&tail.data)),
        "{tail:?}"
    );
    assert_eq!(tail.data.len(), 10);
    assert_eq!(vm.read_log("", 4096).await.unwrap().service, "main");
    match vm.read_log("nope", 10).await {
        Err(VmmError::GuestRefused { why, .. }) => {
            assert!(why.contains("crashy") && why.contains("main"), "{why}")
        }
        other => panic!("expected a refusal naming the services, got {other:?}"),
    }

    // Exec: stdin in, stdout, stderr and the code out; the image's env and its own.
    let r = vm
        .exec(Exec {
            stdin: b"fed-in".to_vec(),
            env: vec!["EXTRA=x".into()],
            ..sh("cat; echo \" $GREETING $EXTRA\"; echo on-err >&2; exit 7")
        })
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "fed-in from-image x\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "on-err\n");
    assert_eq!((r.code, r.timed_out), (7, false));

    // A command past its timeout is killed, with its process group.
    let started = Instant::now();
    let r = vm
        .exec(Exec {
            timeout_ms: 1000,
            ..sh("echo before; sleep 300 & sleep 300")
        })
        .await
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.code, 128 + 9);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "before\n");
    assert!(started.elapsed() < Duration::from_secs(20));
    let left = vm.exec(sh("pgrep -f 'sleep [3]00' || true")).await.unwrap();
    assert!(left.stdout.is_empty(), "{:?}", left);

    // A program the guest cannot find is an error naming it.
    match vm
        .exec(Exec {
            argv: vec!["no-such-tool".into()],
            ..Default::default()
        })
        .await
    {
        Err(VmmError::GuestRefused { why, .. }) => assert!(why.contains("no-such-tool"), "{why}"),
        other => panic!("expected the guest to refuse, got {other:?}"),
    }

    let exit = vm.shutdown(Duration::from_secs(10)).await.unwrap();
    assert!(!exit.killed, "{}", console(&*vm));
    assert_eq!(exit.workload_code, Some(128 + 15), "main ends by SIGTERM");
    t.assert_gone();
}

#[tokio::test]
async fn the_guest_powers_off_with_the_first_services_code_when_it_ends() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::with_config(
        "first",
        GuestConfig {
            services: vec![
                service(
                    "job",
                    "echo job-done; sleep 1; exit 4",
                    RestartPolicy::Never,
                ),
                service(
                    "daemon",
                    "trap 'echo daemon-stopping; exit 0' TERM; while true; do sleep 1; done",
                    RestartPolicy::Always,
                ),
            ],
            ..Default::default()
        },
        None,
    );
    let vm = t.launch().await;
    let exit = tokio::time::timeout(READY_TIMEOUT, vm.wait_exit())
        .await
        .unwrap_or_else(|_| panic!("the guest did not power off:\n{}", console(&*vm)));
    assert_eq!(exit.workload_code, Some(4), "{}", console(&*vm));
    assert!(!exit.killed);
    let shown = console(&*vm);
    assert!(shown.contains("job| job-done"), "{shown}");
    // The other service was stopped with SIGTERM (and not restarted).
    assert!(shown.contains("daemon| daemon-stopping"), "{shown}");
    t.assert_gone();
}

#[tokio::test]
async fn an_invalid_services_config_fails_the_boot_with_its_reason() {
    if skip() {
        return;
    }
    let _one_at_a_time = BOOTS.lock().await;
    let t = TestVm::with_config(
        "badsvc",
        GuestConfig {
            services: vec![
                service("web", "sleep 600", RestartPolicy::Always),
                service("web", "sleep 600", RestartPolicy::Never),
            ],
            ..Default::default()
        },
        None,
    );
    let vm = t.launch().await;
    match vm.wait_ready(READY_TIMEOUT).await {
        Err(VmmError::GuestFailed { why, .. }) => {
            assert!(
                why.contains("service name \"web\" is declared twice"),
                "{why}"
            )
        }
        other => panic!("expected a guest failure, got {other:?}\n{}", console(&*vm)),
    }
    // Nothing was started.
    assert!(!console(&*vm).contains("service web started"));
    let _ = tokio::time::timeout(Duration::from_secs(30), vm.wait_exit()).await;
}
