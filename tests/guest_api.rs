//! A real VM's guest through the API, end to end (control plane → bus → host → the guest's
//! agent → powerunit): declared services restarted by their policies and listed, a service's
//! log read back, and a command run with `exec`.

use std::time::Duration;

use pitwall_api::{CreateVmRequest, ExecRequest, RestartPolicy, RunOverrides, ServiceSpec};
use pitwall_e2e::*;
use pitwall_testkit::Daemon;

fn service(name: &str, script: &str, restart: RestartPolicy) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        restart,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn services_logs_and_exec_reach_the_guest_through_the_api() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let c = d.client()?;
    import_hello(&c, "e2e/hello:1.0").await?;
    let req = CreateVmRequest {
        run: RunOverrides {
            services: vec![
                // The image's program (prints HELLO, then sleeps): the VM's main service.
                ServiceSpec {
                    name: "main".into(),
                    ..Default::default()
                },
                service("crashy", "echo crash-out; exit 3", RestartPolicy::OnFailure),
                service("once", "echo once-out; exit 5", RestartPolicy::Never),
            ],
            ..Default::default()
        },
        ..create("svc", "e2e/hello:1.0")
    };
    c.create_vm(&req).await?;
    wait(&d, "svc", "RUNNING", 180).await?;
    console_contains(&c, "svc", &format!("main| {HELLO}"), 60).await?;

    // The crashing service is restarted (backoff 100 ms, 200 ms, ...), the other is not.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let services = loop {
        let list = c.services("svc").await?;
        let crashy = list.iter().find(|s| s.name == "crashy");
        if crashy.is_some_and(|s| s.restarts >= 2) {
            break list;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "crashy was not restarted twice within 60 s: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let names: Vec<_> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["main", "crashy", "once"]);
    let once = &services[2];
    assert_eq!(
        (once.state.as_str(), once.restarts, once.last_exit),
        ("exited", 0, Some(5)),
        "{once:?}"
    );
    assert_eq!(services[1].last_exit, Some(3));
    assert_eq!(services[0].state, "running");

    // Logs: the main service's by default, any other by name.
    let main_log = c.logs("svc", None, None).await?;
    assert!(
        String::from_utf8_lossy(&main_log).contains(HELLO),
        "{main_log:?}"
    );
    let crashy_log =
        String::from_utf8_lossy(&c.logs("svc", Some("crashy"), None).await?).into_owned();
    assert!(
        crashy_log.starts_with("crash-out\ncrash-out\n"),
        "{crashy_log}"
    );

    // Exec: stdin in; stdout, stderr and the exit code out.
    let out = c
        .exec(
            "svc",
            &ExecRequest {
                command: vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "cat; hostname; echo oops >&2; exit 4".into(),
                ],
                stdin: b"piped ".to_vec(),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped svc\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    assert_eq!((out.code, out.timed_out), (4, false));
    // A program the guest does not have: a 502 naming it.
    let e = c
        .exec(
            "svc",
            &ExecRequest {
                command: vec!["no-such-tool".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no-such-tool"), "{e}");

    c.stop_vm("svc").await?;
    wait(&d, "svc", "STOPPED", 60).await?;
    // Stopped: the API says so instead of asking.
    let e = c.services("svc").await.unwrap_err();
    assert!(e.to_string().contains("not RUNNING"), "{e}");
    c.delete_vm("svc").await?;
    Ok(())
}
