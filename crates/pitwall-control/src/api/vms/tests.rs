//! `/v1/vms` against the in-memory store and bus, with a fake host on the other end.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use pitwall_api::ErrorDetail;
use pitwall_core::{ImageRef, VmName, VmSpec, VmState};
use pitwall_proto::v1::{envelope::Payload, vm_command::Command, ConsoleOutput, VmSpec as PbSpec};
use serde_json::json;

use crate::testing::{eventually, Harness, HOST, IMAGE};

/// POST `body` to `/v1/vms`, expect `status` and `code`, and check that nothing changed: the
/// VM list is as before and the host got no command.
async fn refused_create(h: &Harness, body: Body, status: StatusCode, code: &str) -> ErrorDetail {
    let before = h.vms().await;
    let r = h.call(Method::POST, "/v1/vms", body).await;
    assert_eq!(r.status, status, "{}", r.text());
    let error = r.error();
    assert_eq!(error.code, code, "{error:?}");
    assert_eq!(h.vms().await, before, "a refused create changed the VMs");
    assert_eq!(
        h.host.waiting_commands().await,
        0,
        "a refused create sent a command"
    );
    error
}

fn json_body(v: serde_json::Value) -> Body {
    Body::from(v.to_string())
}

#[tokio::test]
async fn create_records_a_pending_vm_and_sends_its_host_one_create_command() {
    let mut h = Harness::start().await;
    let r = h
        .post_json(
            "/v1/vms",
            json!({ "name": "web", "image": IMAGE, "vcpus": 2, "memory_mib": 512, "disk_mib": 2048 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.state, "PENDING");
    assert_eq!(vm.desired_state, "RUNNING");
    assert_eq!(vm.generation, 1);
    assert_eq!(vm.host.as_deref(), Some(HOST));

    let (verb, cmd) = h.host.next_vm_command().await;
    assert_eq!(verb, "create");
    assert_eq!(cmd.vm_id, vm.id);
    assert_eq!(cmd.generation, 1);
    let Some(Command::Create(create)) = cmd.command else {
        panic!("not a create: {cmd:?}");
    };
    assert!(create.start);
    assert_eq!(
        create.spec,
        Some(PbSpec {
            name: "web".into(),
            image: IMAGE.into(),
            vcpus: 2,
            memory_mib: 512,
            disk_mib: 2048,
            owner: vm.owner.clone(),
            run: None,
            ssh_ca_public_key: h
                .control
                .inner
                .auth
                .ssh_ca
                .as_ref()
                .expect("the harness has an SSH CA")
                .public_key()
                .to_string(),
            ssh_authorized_keys: vec![],
        })
    );
    assert_eq!(h.host.waiting_commands().await, 0, "exactly one command");
    assert_eq!(h.vm("web").await, vm);
}

#[tokio::test]
async fn create_records_run_overrides_and_the_images_exposed_ports_and_sends_them_to_the_host() {
    let mut h = Harness::start().await;
    let mut img = crate::testing::image_record("demo/ports:1", HOST);
    img.config = json!({ "cmd": ["/srv/web"], "exposed_ports": ["8080/tcp", "53/udp"] });
    h.control
        .inner
        .store
        .put_image(&img)
        .await
        .expect("put image");
    let run = json!({
        "entrypoint": ["/bin/sh"],
        "cmd": ["-c", "exec /srv/web"],
        "env": ["PORT=8080"],
        "working_dir": "/srv",
        "user": "1000",
    });
    let r = h
        .post_json(
            "/v1/vms",
            json!({ "name": "web", "image": "demo/ports:1", "run": run }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.exposed_ports, ["53/udp", "8080/tcp"]);
    assert_eq!(serde_json::to_value(&vm.run).unwrap(), run);
    let (_, cmd) = h.host.next_vm_command().await;
    let Some(Command::Create(create)) = cmd.command else {
        panic!("not a create: {cmd:?}");
    };
    let sent = create.spec.and_then(|s| s.run).expect("overrides sent");
    assert_eq!(
        pitwall_core::RunOverrides::from(&sent),
        serde_json::from_value(run).unwrap()
    );
    // The store keeps both: a restarted control plane shows and sends the same.
    let shown: pitwall_api::Vm = h.get("/v1/vms/web").await.json();
    assert_eq!(shown, vm);
}

#[tokio::test]
async fn bad_run_overrides_are_refused_naming_the_field() {
    let h = Harness::start().await;
    for (run, field) in [
        (json!({ "env": ["NOEQUALS"] }), "env"),
        (json!({ "working_dir": "relative" }), "working_dir"),
        (json!({ "cmd": ["a\0b"] }), "cmd"),
        (json!({ "entrypoint": "/bin/sh" }), "entrypoint"),
        (json!({ "command": ["x"] }), "command"),
        (
            json!({ "services": [{ "name": "a" }, { "name": "a" }] }),
            "declared twice",
        ),
        (
            json!({ "services": [{ "name": "web", "restart": "sometimes" }] }),
            "restart",
        ),
        (json!({ "services": [{ "name": "Web" }] }), "services"),
    ] {
        let body = json_body(json!({ "name": "web", "image": IMAGE, "run": run }));
        let e = refused_create(&h, body, StatusCode::BAD_REQUEST, "invalid_argument").await;
        assert!(e.message.contains(field), "{field}: {}", e.message);
    }
}

#[tokio::test]
async fn create_with_start_false_creates_without_starting_and_wants_stopped() {
    let mut h = Harness::start().await;
    let r = h
        .post_json(
            "/v1/vms",
            json!({ "name": "idle", "image": IMAGE, "start": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.desired_state, "STOPPED");
    let (verb, cmd) = h.host.next_vm_command().await;
    assert_eq!(verb, "create");
    let Some(Command::Create(create)) = cmd.command else {
        panic!("not a create: {cmd:?}");
    };
    assert!(!create.start);
}

#[tokio::test]
async fn create_refuses_a_bad_name_with_the_core_message() {
    let h = Harness::start().await;
    let want = VmName::parse("Web_1").unwrap_err().to_string();
    let e = refused_create(
        &h,
        json_body(json!({ "name": "Web_1", "image": IMAGE })),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    )
    .await;
    assert_eq!(e.message, want);
}

#[tokio::test]
async fn create_refuses_zero_or_absurd_sizes_with_the_core_message() {
    let h = Harness::start().await;
    let spec = |v, m, d| {
        VmSpec::new(
            VmName::parse("a").unwrap(),
            ImageRef::parse(IMAGE).unwrap(),
            v,
            m,
            d,
        )
        .unwrap_err()
        .to_string()
    };
    let cases = [
        (json!({ "vcpus": 0 }), spec(Some(0), None, None)),
        (
            json!({ "memory_mib": u64::MAX }),
            spec(None, Some(u64::MAX), None),
        ),
        (json!({ "disk_mib": 0 }), spec(None, None, Some(0))),
    ];
    for (sizes, want) in cases {
        let mut body = json!({ "name": "a", "image": IMAGE });
        body.as_object_mut()
            .unwrap()
            .extend(sizes.as_object().unwrap().clone());
        let e = refused_create(
            &h,
            json_body(body),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        )
        .await;
        assert_eq!(e.message, want, "{sizes}");
    }
}

#[tokio::test]
async fn create_refuses_a_bad_image_reference_with_the_core_message() {
    let h = Harness::start().await;
    let want = ImageRef::parse("Demo//hello").unwrap_err().to_string();
    let e = refused_create(
        &h,
        json_body(json!({ "name": "a", "image": "Demo//hello" })),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    )
    .await;
    assert_eq!(e.message, want);
}

#[tokio::test]
async fn create_refuses_an_unknown_field_and_names_it() {
    let h = Harness::start().await;
    let e = refused_create(
        &h,
        json_body(json!({ "name": "a", "image": IMAGE, "colour": "red" })),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    )
    .await;
    assert!(e.message.contains("colour"), "{}", e.message);
}

#[tokio::test]
async fn create_refuses_malformed_json() {
    let h = Harness::start().await;
    refused_create(
        &h,
        Body::from(r#"{"name": "a", "image": "#),
        StatusCode::BAD_REQUEST,
        "invalid_argument",
    )
    .await;
}

#[tokio::test]
async fn create_of_an_unknown_image_is_not_found_and_says_how_to_import_it() {
    let h = Harness::start().await;
    let e = refused_create(
        &h,
        json_body(json!({ "name": "a", "image": "demo/missing:2" })),
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert!(e.message.contains("pitwall image import"), "{}", e.message);
    assert!(e.message.contains("demo/missing:2"), "{}", e.message);
}

#[tokio::test]
async fn create_without_a_live_host_is_unavailable() {
    let h = Harness::start().await;
    h.silence_host();
    refused_create(
        &h,
        json_body(json!({ "name": "a", "image": IMAGE })),
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    )
    .await;
}

#[tokio::test]
async fn create_of_a_taken_name_is_already_exists() {
    let mut h = Harness::start().await;
    h.create_vm("a").await;
    let e = refused_create(
        &h,
        json_body(json!({ "name": "a", "image": IMAGE })),
        StatusCode::CONFLICT,
        "already_exists",
    )
    .await;
    assert!(e.message.contains("\"a\""), "{}", e.message);
    assert_eq!(h.vms().await.len(), 1);
}

#[tokio::test]
async fn stop_wants_stopped_at_the_next_generation_and_tells_the_host() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let r = h.post("/v1/vms/a/stop").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let stopped: pitwall_api::Vm = r.json();
    assert_eq!(stopped.desired_state, "STOPPED");
    assert_eq!(stopped.generation, 2);

    let (verb, cmd) = h.host.next_vm_command().await;
    assert_eq!(verb, "stop");
    assert_eq!(cmd.vm_id, vm.id);
    assert_eq!(cmd.generation, 2);
    let Some(Command::Stop(stop)) = cmd.command else {
        panic!("not a stop: {cmd:?}");
    };
    assert_eq!(stop.timeout_ms, 10_000, "the configured stop_timeout");
    assert_eq!(h.host.waiting_commands().await, 0);
}

#[tokio::test]
async fn start_of_a_running_vm_sends_nothing_and_keeps_the_generation() {
    let mut h = Harness::start().await;
    h.run_vm("a").await;
    let r = h.post("/v1/vms/a/start").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let vm: pitwall_api::Vm = r.json();
    assert_eq!(vm.generation, 1);
    assert_eq!(vm.desired_state, "RUNNING");
    assert_eq!(h.host.waiting_commands().await, 0);
}

#[tokio::test]
async fn delete_tells_the_host_and_a_second_delete_conflicts() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let r = h.delete("/v1/vms/a").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let deleting: pitwall_api::Vm = r.json();
    assert_eq!(deleting.desired_state, "DELETED");
    assert_eq!(deleting.generation, 2);
    let (verb, cmd) = h.host.next_vm_command().await;
    assert_eq!(verb, "delete");
    assert_eq!((cmd.vm_id.as_str(), cmd.generation), (vm.id.as_str(), 2));

    let r = h.delete("/v1/vms/a").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert_eq!(r.error().code, "conflict");
    assert_eq!(h.host.waiting_commands().await, 0);
    assert_eq!(h.vm("a").await.generation, 2);
}

#[tokio::test]
async fn a_vm_reported_deleted_is_gone_and_its_name_is_free_again() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let r = h.delete("/v1/vms/a").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    h.host.next_vm_command().await;
    for state in [
        VmState::Stopping,
        VmState::Stopped,
        VmState::Deleting,
        VmState::Deleted,
    ] {
        h.host.report(&vm, state, 2, None).await;
    }
    h.settle().await;

    let r = h.get("/v1/vms/a").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.error().code, "not_found");
    assert!(h.vms().await.is_empty());
    let again = h.create_vm("a").await;
    assert_ne!(again.id, vm.id);
}

#[tokio::test]
async fn wait_returns_when_the_state_arrives() {
    let mut h = Harness::start().await;
    let vm = h.create_vm("a").await;
    h.host.report(&vm, VmState::Creating, 1, None).await;
    h.settle().await;

    let subscribers = h.control.inner.events.receiver_count();
    let wait = h.spawn_call(
        Method::GET,
        "/v1/vms/a/wait?state=RUNNING&timeout=5s",
        Body::empty(),
    );
    let events = &h.control.inner.events;
    eventually("the wait listens for events", || async move {
        events.receiver_count() > subscribers
    })
    .await;
    assert!(!wait.is_finished(), "wait returned before RUNNING");
    // The host reports from its own task while the wait is under way.
    let outbox = h.host.outbox();
    let reports = [VmState::Starting, VmState::Running].map(|s| h.host.status(&vm, s, 1, None));
    tokio::spawn(async move {
        for status in reports {
            outbox.publish_status(status).await;
        }
    });
    let r = wait.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json::<pitwall_api::Vm>().state, "RUNNING");
}

#[tokio::test]
async fn wait_times_out_with_408_when_the_state_does_not_arrive() {
    let mut h = Harness::start().await;
    h.create_vm("a").await;
    let started = Instant::now();
    let r = h.get("/v1/vms/a/wait?state=RUNNING&timeout=200ms").await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT, "{}", r.text());
    let e = r.error();
    assert_eq!(e.code, "timeout");
    assert!(e.message.contains("PENDING"), "{}", e.message);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn wait_fails_with_vm_failed_when_the_vm_fails() {
    let mut h = Harness::start().await;
    let vm = h.create_vm("a").await;
    let subscribers = h.control.inner.events.receiver_count();
    let wait = h.spawn_call(
        Method::GET,
        "/v1/vms/a/wait?state=RUNNING&timeout=5s",
        Body::empty(),
    );
    let events = &h.control.inner.events;
    eventually("the wait listens for events", || async move {
        events.receiver_count() > subscribers
    })
    .await;
    h.host
        .report(&vm, VmState::Failed, 1, Some("no space left on device"))
        .await;
    let r = wait.await.unwrap();
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    let e = r.error();
    assert_eq!(e.code, "vm_failed");
    assert!(
        e.message.contains("no space left on device"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn wait_refuses_an_unknown_state_or_a_bad_timeout() {
    let mut h = Harness::start().await;
    h.create_vm("a").await;
    for query in [
        "state=BOOTED",
        "state=RUNNING&timeout=soon",
        "state=RUNNING&timeout=2h",
        "timeout=5s",
    ] {
        let r = h.get(&format!("/v1/vms/a/wait?{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text());
        assert_eq!(r.error().code, "invalid_argument", "{query}");
    }
}

#[tokio::test]
async fn console_returns_what_the_host_read() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let console = h.spawn_call(Method::GET, "/v1/vms/a/console", Body::empty());
    let (key, request) = h.host.next_command().await;
    assert_eq!(key, format!("orchestrator.{HOST}.vm.read_console"));
    let Some(Payload::VmCommand(cmd)) = &request.payload else {
        panic!("not a VM command: {request:?}");
    };
    assert_eq!(cmd.vm_id, vm.id);
    let Some(Command::ReadConsole(read)) = &cmd.command else {
        panic!("not a console read: {cmd:?}");
    };
    assert_eq!(read.max_bytes, 64 * 1024);
    h.host
        .reply(
            &request,
            Payload::ConsoleOutput(ConsoleOutput {
                vm_id: vm.id.clone(),
                data: b"login: \n".to_vec(),
                ..Default::default()
            }),
        )
        .await;
    let r = console.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(
        r.content_type.starts_with("text/plain"),
        "{}",
        r.content_type
    );
    assert_eq!(r.text(), "login: \n");
}

#[tokio::test]
async fn exec_is_put_to_the_vms_host_and_answers_with_the_guests_output() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let body = json!({ "command": ["cat"], "stdin": "aGkK", "env": ["A=1"], "timeout_ms": 5000 });
    let call = h.spawn_call(Method::POST, "/v1/vms/a/exec", Body::from(body.to_string()));
    let (key, request) = h.host.next_command().await;
    assert_eq!(key, format!("orchestrator.{HOST}.vm.exec"));
    let Some(Payload::VmCommand(cmd)) = &request.payload else {
        panic!("not a VM command: {request:?}");
    };
    assert_eq!(cmd.vm_id, vm.id);
    let Some(Command::Exec(x)) = &cmd.command else {
        panic!("not an exec: {cmd:?}");
    };
    assert_eq!(
        (
            x.argv.as_slice(),
            x.env.as_slice(),
            x.stdin.as_slice(),
            x.timeout_ms
        ),
        (
            &["cat".to_string()][..],
            &["A=1".to_string()][..],
            &b"hi\n"[..],
            5000
        )
    );
    h.host
        .reply(
            &request,
            Payload::GuestAnswer(pitwall_proto::v1::GuestAnswer {
                vm_id: vm.id.clone(),
                error: String::new(),
                answer: Some(pitwall_proto::v1::guest_answer::Answer::Exec(
                    pitwall_proto::v1::ExecResult {
                        code: 3,
                        stdout: b"hi\n".to_vec(),
                        stderr: vec![0xff],
                        timed_out: false,
                    },
                )),
            }),
        )
        .await;
    let r = call.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let out: pitwall_api::ExecResponse = r.json();
    assert_eq!(
        out,
        pitwall_api::ExecResponse {
            code: 3,
            stdout: b"hi\n".to_vec(),
            stderr: vec![0xff],
            timed_out: false
        }
    );
}

#[tokio::test]
async fn logs_ask_the_host_for_a_services_log_tail_and_answer_it_as_text() {
    let mut h = Harness::start().await;
    let vm = h.run_vm("a").await;
    let call = h.spawn_call(
        Method::GET,
        "/v1/vms/a/logs?service=web&max_bytes=100",
        Body::empty(),
    );
    let (key, request) = h.host.next_command().await;
    assert_eq!(key, format!("orchestrator.{HOST}.vm.read_log"));
    let Some(Payload::VmCommand(cmd)) = &request.payload else {
        panic!("not a VM command: {request:?}");
    };
    let Some(Command::ReadLog(read)) = &cmd.command else {
        panic!("not a log read: {cmd:?}");
    };
    assert_eq!((read.service.as_str(), read.max_bytes), ("web", 100));
    h.host
        .reply(
            &request,
            Payload::GuestAnswer(pitwall_proto::v1::GuestAnswer {
                vm_id: vm.id.clone(),
                error: String::new(),
                answer: Some(pitwall_proto::v1::guest_answer::Answer::Log(
                    pitwall_proto::v1::LogData {
                        service: "web".into(),
                        data: b"listening\n".to_vec(),
                        truncated: true,
                    },
                )),
            }),
        )
        .await;
    let r = call.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "listening\n");
    let r = h.get("/v1/vms/a/logs?max_bytes=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
}

#[tokio::test]
async fn exec_and_services_are_refused_before_the_host_is_asked_when_they_cannot_work() {
    let mut h = Harness::start().await;
    h.create_vm("idle").await;
    let r = h.get("/v1/vms/idle/services").await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text());
    assert!(r.error().message.contains("not RUNNING"), "{}", r.text());
    h.run_vm("a").await;
    for (body, why) in [
        (json!({ "command": [] }), "command is empty"),
        (json!({ "command": ["ls"], "env": ["X"] }), "KEY=value"),
        (
            json!({ "command": ["ls"], "working_dir": "tmp" }),
            "not absolute",
        ),
        (json!({ "command": ["ls"], "timeout_ms": 0 }), "timeout_ms"),
        (json!({ "command": ["ls"], "stdin": "%%%" }), "base64"),
        (json!({ "command": ["ls"], "tty": true }), "tty"),
    ] {
        let r = h.post_json("/v1/vms/a/exec", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        assert!(r.error().message.contains(why), "{body}: {}", r.text());
    }
    // A guest that cannot answer is a 502 naming why.
    let call = h.spawn_call(Method::GET, "/v1/vms/a/services", Body::empty());
    let (key, request) = h.host.next_command().await;
    assert!(key.ends_with(".vm.list_services"), "{key}");
    h.host
        .reply(
            &request,
            Payload::GuestAnswer(pitwall_proto::v1::GuestAnswer {
                error: "the agent is not connected".into(),
                ..Default::default()
            }),
        )
        .await;
    let r = call.await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.error().message.contains("the agent is not connected"));
}

#[tokio::test]
async fn console_is_unavailable_when_the_host_does_not_answer_in_time() {
    let reply_timeout = Duration::from_millis(200);
    let mut h = Harness::with_config(|c| c.reply_timeout = reply_timeout).await;
    h.run_vm("a").await;
    let started = Instant::now();
    let r = h.get("/v1/vms/a/console").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let e = r.error();
    assert_eq!(e.code, "unavailable");
    assert!(e.message.contains("200ms"), "{}", e.message);
    assert!(
        took >= reply_timeout && took < reply_timeout + Duration::from_secs(2),
        "took {took:?}"
    );
    // The request did reach the host.
    let (key, _) = h.host.next_command().await;
    assert!(key.ends_with(".vm.read_console"), "{key}");
}
