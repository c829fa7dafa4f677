//! Runs the real `pitwall` binary against a mock API and pins what scripts and people see:
//! stdout, stderr, exit codes and the requests made.

// test code: a panic is a failed test, with its message
#![allow(clippy::unwrap_used)]

mod auth;
mod mock_api;
mod tls;

use std::path::Path;

use mock_api::MockApi;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Run `pitwall args...` with a clean environment (no PITWALL_* variables, an empty HOME)
/// plus `env`.
async fn pitwall(args: &[&str], env: &[(&str, &str)]) -> Run {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitwall"));
    cmd.args(args)
        .env_remove("PITWALL_API")
        .env_remove("PITWALL_CONFIG")
        .env_remove("PITWALL_LOG")
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    Run {
        code: out.status.code().expect("pitwall exited by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// `pitwall --api <mock> args...`
async fn against(api: &MockApi, args: &[&str]) -> Run {
    let mut all = vec!["--api", api.url.as_str()];
    all.extend_from_slice(args);
    pitwall(&all, &[]).await
}

fn write_oci_layout(dir: &Path) {
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        r#"{"schemaVersion":2,"manifests":[]}"#,
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256/0123"), "layer").unwrap();
}

#[tokio::test]
async fn vm_list_prints_an_aligned_table() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "list"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with(
            "NAME   OWNER   STATE     IMAGE            VCPUS   MEMORY   DISK   HOST     AGE"
        ),
        "{}",
        run.stdout
    );
    assert!(lines[1].starts_with(
        "web    ada     RUNNING   demo/hello:1.0   1       256MiB   1GiB   host-a   "
    ));
    assert!(lines[2].starts_with(
        "db     ada     STOPPED   demo/hello:1.0   1       256MiB   1GiB   -        "
    ));
}

#[tokio::test]
async fn vm_list_as_json_is_an_array_of_the_api_objects() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "list", "-o", "json"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vms: Vec<pitwall_api::Vm> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        vms,
        [
            mock_api::vm("web", "RUNNING"),
            mock_api::vm("db", "STOPPED")
        ]
    );
    assert!(
        run.stdout.starts_with("[\n  {\n"),
        "pretty-printed: {}",
        run.stdout
    );
}

#[tokio::test]
async fn showing_a_missing_vm_exits_3_with_the_servers_message() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "show", "ghost"]).await;
    assert_eq!(run.code, 3);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.stderr,
        "error: VM ghost does not exist; list VMs with `pitwall vm list`\n"
    );
}

#[tokio::test]
async fn an_unreachable_api_exits_6_and_says_how_to_point_elsewhere() {
    // a port that was free a moment ago: nothing listens there
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let run = pitwall(&["vm", "list"], &[("PITWALL_API", &url)]).await;
    assert_eq!(run.code, 6, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with(&format!("error: cannot reach the Pitwall API at {url}")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("\nhint: the endpoint comes from PITWALL_API; "),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("--api http://HOST:PORT"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn importing_a_layout_directory_uploads_it_as_a_tar() {
    let api = MockApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path());

    let path = dir.path().to_str().unwrap();
    let run = against(&api, &["image", "import", path, "--name", "demo/hello:1.0"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("imported demo/hello:1.0 (sha256:"),
        "{}",
        run.stdout
    );
    let uploads = api.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].reference, "demo/hello:1.0");
    let mut entries = uploads[0].entries.clone();
    entries.sort();
    assert_eq!(
        entries,
        [
            "blobs",
            "blobs/sha256",
            "blobs/sha256/0123",
            "index.json",
            "oci-layout"
        ]
    );
}

#[tokio::test]
async fn importing_a_tar_file_uploads_it_as_it_is() {
    let api = MockApi::start().await;
    let dir = tempfile::tempdir().unwrap();
    write_oci_layout(dir.path());
    let tar_path = dir.path().join("image.tar");
    let mut tar = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    tar.append_path_with_name(dir.path().join("index.json"), "index.json")
        .unwrap();
    tar.append_path_with_name(dir.path().join("oci-layout"), "oci-layout")
        .unwrap();
    tar.into_inner().unwrap();

    let path = tar_path.to_str().unwrap();
    let run = against(&api, &["image", "import", path, "--name", "demo/hello:1.0"]).await;

    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(api.uploads()[0].entries, ["index.json", "oci-layout"]);
}

#[tokio::test]
async fn importing_a_path_that_does_not_exist_exits_3() {
    let api = MockApi::start().await;
    let run = against(
        &api,
        &["image", "import", "/no/such/image.tar", "--name", "a:1"],
    )
    .await;
    assert_eq!(run.code, 3);
    assert!(
        run.stderr
            .starts_with("error: /no/such/image.tar does not exist; "),
        "{}",
        run.stderr
    );
    assert!(
        api.calls().is_empty(),
        "nothing was sent: {:?}",
        api.calls()
    );
}

#[tokio::test]
async fn an_archive_the_api_refuses_exits_8() {
    let api = MockApi::start().await;
    let tar_path = tempfile::NamedTempFile::new().unwrap();
    tar::Builder::new(tar_path.as_file()).finish().unwrap();
    let run = against(
        &api,
        &[
            "image",
            "import",
            tar_path.path().to_str().unwrap(),
            "--name",
            "a:1",
        ],
    )
    .await;
    assert_eq!(run.code, 8, "{}", run.stderr);
    assert!(
        run.stderr.contains("no oci-layout or index.json"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn create_with_wait_creates_then_waits_for_running() {
    let api = MockApi::start().await;
    let run = against(
        &api,
        &["vm", "create", "api", "--image", "demo/hello:1.0", "--wait"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        api.calls(),
        [
            "POST /v1/vms",
            "GET /v1/vms/api/wait?state=RUNNING&timeout=120000ms"
        ]
    );
    assert_eq!(
        run.stdout,
        "created VM api (PENDING)\nVM api is RUNNING on host-a\n"
    );
}

#[tokio::test]
async fn create_flags_become_run_overrides_as_docker_run_has_them() {
    let api = MockApi::start().await;
    let run = against(
        &api,
        &[
            "--output",
            "json",
            "vm",
            "create",
            "job",
            "--image",
            "demo/hello:1.0",
            "--entrypoint",
            "/bin/sh",
            "-e",
            "A=1",
            "--env",
            "B=two words",
            "-w",
            "/srv",
            "-u",
            "1000:1000",
            "--",
            "-c",
            "echo $A",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vm: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stdout);
    assert_eq!(
        vm["run"],
        serde_json::json!({
            "entrypoint": ["/bin/sh"],
            "cmd": ["-c", "echo $A"],
            "env": ["A=1", "B=two words"],
            "working_dir": "/srv",
            "user": "1000:1000",
        })
    );
    // Without any: no overrides are sent, the image's configuration stands.
    let run = against(
        &api,
        &[
            "--output",
            "json",
            "vm",
            "create",
            "plain",
            "--image",
            "demo/hello:1.0",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let vm: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stdout);
    assert!(vm.get("run").is_none(), "{vm}");
    // `--entrypoint ''` clears the image's entrypoint.
    let run = against(
        &api,
        &[
            "--output",
            "json",
            "vm",
            "create",
            "bare",
            "--image",
            "x:1",
            "--entrypoint",
            "",
            "--",
            "/bin/true",
        ],
    )
    .await;
    let vm: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stdout);
    assert_eq!(
        vm["run"],
        serde_json::json!({"entrypoint": [], "cmd": ["/bin/true"]})
    );
}

#[tokio::test]
async fn creating_a_vm_that_exists_exits_4() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "create", "web", "--image", "demo/hello:1.0"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert_eq!(run.stderr, "error: VM web exists\n");
}

#[tokio::test]
async fn delete_with_wait_succeeds_once_the_vm_is_gone() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "delete", "db", "--wait", "--timeout", "30s"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        api.calls(),
        [
            "DELETE /v1/vms/db",
            "GET /v1/vms/db/wait?state=DELETED&timeout=30000ms"
        ]
    );
    assert_eq!(
        run.stdout,
        "VM db: delete requested, now DELETING\nVM db is DELETED\n"
    );
}

#[tokio::test]
async fn a_wait_that_times_out_exits_5_with_a_hint() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "wait", "slow", "--timeout", "2s"]).await;
    assert_eq!(run.code, 5, "{}", run.stderr);
    assert!(
        run.stderr
            .starts_with("error: VM slow did not reach RUNNING in time"),
        "{}",
        run.stderr
    );
    assert!(run
        .stderr
        .contains("hint: the VM keeps going; check it with `pitwall vm show slow`"));
}

#[tokio::test]
async fn a_wait_that_ends_in_failed_exits_7_with_the_reason() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "wait", "broken"]).await;
    assert_eq!(run.code, 7, "{}", run.stderr);
    assert!(run
        .stderr
        .starts_with("error: VM broken is FAILED: kernel panic: no init found\n"));
}

#[tokio::test]
async fn the_config_file_names_the_api_when_flag_and_env_do_not() {
    let api = MockApi::start().await;
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), format!("api = \"{}\"\n", api.url)).unwrap();
    let run = pitwall(
        &["health"],
        &[("PITWALL_CONFIG", config.path().to_str().unwrap())],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "status:  ok\nversion: 0.1.0\nhosts:   host-a\n");
}

#[tokio::test]
async fn a_malformed_config_file_is_named_in_the_error() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "api = 7070\n").unwrap();
    let path = config.path().to_str().unwrap();
    let run = pitwall(&["vm", "list"], &[("PITWALL_CONFIG", path)]).await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(&format!(
            "error: config file {path} is not valid at line 1: "
        )),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn local_cert_commands_need_neither_the_api_nor_a_login() {
    use pitwall_api::cert;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let f = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    // A broken config file: anything that resolves the endpoint fails on it.
    std::fs::write(f("config.toml"), "api = 7070\n").unwrap();
    let config = f("config.toml");
    let env = [("PITWALL_CONFIG", config.as_str())];

    // alice's first-level CA certificate, as the server would issue it
    let (root, root_key) = cert::generate_root_ca("test CA", Duration::from_secs(86400)).unwrap();
    let (alice_key, alice_csr) = cert::generate_key_and_csr("alice").unwrap();
    let policy = pitwall_api::Policy {
        max_vms: Some(3),
        ..Default::default()
    };
    let alice = cert::sign_csr_as_root(
        &alice_csr,
        &root,
        &root_key,
        "alice",
        &policy,
        true,
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(f("alice.pem"), &alice.cert_pem).unwrap();
    std::fs::write(f("alice.key"), alice_key).unwrap();

    let run = pitwall(
        &[
            "cert",
            "request",
            "--name",
            "bob",
            "--key-out",
            &f("bob.key"),
            "--csr-out",
            &f("bob.csr"),
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = pitwall(
        &[
            "cert",
            "sign",
            &f("bob.csr"),
            "--with-cert",
            &f("alice.pem"),
            "--with-key",
            &f("alice.key"),
            "--out",
            &f("bob.pem"),
            "--max-vms",
            "2",
            "--validity",
            "30m",
        ],
        &env,
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("signed certificate "),
        "{}",
        run.stdout
    );
    let run = pitwall(&["cert", "show", &f("bob.pem"), "-o", "json"], &env).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(shown[0]["subject"], "bob", "{shown}");
    assert_eq!(shown[0]["issuer"], "alice", "{shown}");
    assert_eq!(shown[0]["policy"]["max_vms"], 2, "{shown}");
    assert_eq!(shown[1]["serial"], alice.serial_hex.as_str(), "{shown}");

    // signing through the API does read the config, and says what is wrong with it
    let run = pitwall(&["cert", "sign", &f("bob.csr"), "--out", &f("x.pem")], &env).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(&config), "{}", run.stderr);
    assert!(!Path::new(&f("x.pem")).exists());
}

#[tokio::test]
async fn a_usage_error_exits_2() {
    let run = pitwall(&["vm", "create", "web"], &[]).await;
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("--image"), "{}", run.stderr);
}

#[tokio::test]
async fn console_prints_the_captured_output_raw() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "console", "web"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "hello from web\n");
}

#[tokio::test]
async fn exec_prints_the_guests_output_and_exits_with_its_status() {
    let api = MockApi::start().await;
    let run = against(&api, &["exec", "web", "--", "sh", "-c", "exit 3"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(run.stdout, "sh -c exit 3\n");
    assert_eq!(run.stderr, "stderr\n", "no error of pitwall's own");
    let run = against(&api, &["exec", "web", "--", "true"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Not running: the API's conflict, exit 4.
    let run = against(&api, &["exec", "db", "--", "true"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("not RUNNING"), "{}", run.stderr);
    // No command: a usage error.
    assert_eq!(against(&api, &["exec", "web"]).await.code, 2);
}

#[tokio::test]
async fn exec_i_sends_standard_input() {
    let api = MockApi::start().await;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitwall"));
    let home = tempfile::tempdir().unwrap();
    cmd.args(["--api", api.url.as_str(), "exec", "-i", "web", "--", "cat"])
        .env_remove("PITWALL_API")
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join("config"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, b"from stdin\n")
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "cat\nfrom stdin\n");
}

#[tokio::test]
async fn vm_logs_prints_the_asked_services_log_raw() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "logs", "web"]).await;
    assert_eq!(
        (run.code, run.stdout.as_str()),
        (0, "log of main\n"),
        "{}",
        run.stderr
    );
    let run = against(&api, &["vm", "logs", "web", "-s", "worker"]).await;
    assert_eq!(run.stdout, "log of worker\n");
}

#[tokio::test]
async fn vm_services_prints_a_table() {
    let api = MockApi::start().await;
    let run = against(&api, &["vm", "services", "web"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<_> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["NAME", "STATE", "PID", "RESTART", "RESTARTS", "LAST", "EXIT"],
            vec!["main", "running", "42", "never", "0", "-"],
            vec!["worker", "backoff", "-", "on-failure", "3", "1"],
        ]
    );
}

#[tokio::test]
async fn console_follow_prints_each_new_line_once_until_the_vm_stops() {
    let api = MockApi::start().await;
    // a tail of 16 bytes holds about two lines: later tails overlap what was printed
    let run = against(
        &api,
        &["vm", "console", "booting", "--follow", "--max-bytes", "16"],
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "line 1\nline 2\nline 3\nline 4\n");
}

#[tokio::test]
async fn events_prints_one_line_per_event_from_after_seq() {
    use tokio::io::AsyncBufReadExt as _;

    let api = MockApi::start().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitwall"))
        .args(["--api", &api.url, "events", "--after", "40"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("pitwall events printed nothing for 10s")
            .unwrap()
            .expect("pitwall events ended");
        got.push(line);
    }
    child.kill().await.unwrap();
    assert_eq!(
        got,
        [
            "2025-01-01T00:00:00Z  #41  web  STARTING  gen 2",
            "2025-01-01T00:00:00Z  #42  web  FAILED  gen 2  reason: oom",
        ]
    );
}

#[tokio::test]
async fn image_rm_of_an_image_in_use_exits_4_naming_the_vms_and_force() {
    let api = MockApi::start().await;
    let run = against(&api, &["image", "rm", "demo/hello:1.0"]).await;
    assert_eq!(run.code, 4, "{}", run.stderr);
    assert!(run.stderr.contains("alice:web"), "{}", run.stderr);
    assert!(run.stderr.contains("force"), "{}", run.stderr);
    assert!(
        api.calls()
            .contains(&"DELETE /v1/images/demo/hello:1.0".to_string()),
        "{:?}",
        api.calls()
    );
}

#[tokio::test]
async fn image_rm_force_removes_an_image_in_use_and_says_so() {
    let api = MockApi::start().await;
    let run = against(&api, &["image", "rm", "--force", "demo/hello:1.0"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.starts_with("removed demo/hello:1.0 (sha256:"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("cannot start again"), "{}", run.stdout);
    assert!(
        api.calls()
            .contains(&"DELETE /v1/images/demo/hello:1.0?force=true".to_string()),
        "{:?}",
        api.calls()
    );
}

#[tokio::test]
async fn image_rm_of_an_unused_image_removes_it() {
    let api = MockApi::start().await;
    let run = against(&api, &["image", "rm", "demo/idle:1"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.stdout,
        format!("removed demo/idle:1 (sha256:0123456789abcdef0123456789abcdef)\n")
    );
}

#[tokio::test]
async fn image_rm_of_an_unknown_image_exits_3() {
    let api = MockApi::start().await;
    let run = against(&api, &["image", "rm", "no/such:1"]).await;
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert!(run.stderr.contains("no image no/such:1"), "{}", run.stderr);
}

#[tokio::test]
async fn image_inspect_prints_the_whole_image_as_json() {
    let api = MockApi::start().await;
    let run = against(&api, &["image", "inspect", "demo/hello:1.0"]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let image: pitwall_api::Image = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(image.reference, "demo/hello:1.0");
    assert_eq!((image.owner.as_str(), image.used_by_count), ("alice", 1));
    assert_eq!(image.used_by, ["alice:web"]);
}
