//! Logging in, the stored token, PITWALL_TOKEN, and the exit codes of refused requests.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt as _;

use super::mock_api::MockApi;
use super::Run;

/// `pitwall --api <mock> args...` with config (and credentials) under `home`, `stdin` fed in,
/// and `env` added.
async fn run(api: &MockApi, home: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pitwall"));
    cmd.arg("--api")
        .arg(&api.url)
        .args(args)
        .env_remove("PITWALL_API")
        .env_remove("PITWALL_CONFIG")
        .env_remove("PITWALL_LOG")
        .env_remove("PITWALL_TOKEN")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Run {
        code: out.status.code().expect("pitwall exited by a signal"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn credentials(home: &Path) -> std::path::PathBuf {
    home.join("config/pitwall/credentials.json")
}

#[tokio::test]
async fn login_with_password_on_stdin_stores_the_token_for_the_next_commands() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["login", "--user", "alice", "--password-stdin"],
        "s3cret\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.starts_with(&format!("logged in to {}", api.url)),
        "{}",
        r.stdout
    );
    let file = credentials(home.path());
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let login = &stored["apis"][api.url.as_str()];
    assert_eq!(login["access_token"], "tok-alice", "{stored}");
    assert_eq!(login["refresh_token"], "ref-alice", "{stored}");
    assert_eq!(login["refresh"]["kind"], "builtin", "{stored}");

    let r = run(&api, home.path(), &["whoami"], "", &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("user:    alice\n"), "{}", r.stdout);
    assert_eq!(
        api.auths().last().unwrap().as_deref(),
        Some("Bearer tok-alice")
    );
}

#[tokio::test]
async fn a_wrong_password_exits_9_and_stores_nothing() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["login", "--user", "alice", "--password-stdin"],
        "nope\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 9, "{}", r.stderr);
    assert!(
        r.stderr.contains("wrong user name or password"),
        "{}",
        r.stderr
    );
    assert!(!credentials(home.path()).exists());
}

#[tokio::test]
async fn pitwall_token_is_sent_instead_of_the_stored_one() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["login", "--token", "-"],
        "tok-stored\n",
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        &api,
        home.path(),
        &["whoami"],
        "",
        &[("PITWALL_TOKEN", "tok-bob")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("user:    bob\n"), "{}", r.stdout);
    let r = run(&api, home.path(), &["whoami"], "", &[]).await;
    assert!(r.stdout.contains("user:    stored\n"), "{}", r.stdout);
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_and_stored_before_the_command() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let file = credentials(home.path());
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let soon = time::OffsetDateTime::now_utc().unix_timestamp() + 30;
    let stored = serde_json::json!({ "apis": { api.url.as_str(): {
        "access_token": "tok-alice", "refresh_token": "ref-alice",
        "expires_at": soon, "refresh": { "kind": "builtin" } } } });
    std::fs::write(&file, stored.to_string()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let r = run(&api, home.path(), &["whoami"], "", &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        api.calls(),
        ["POST /v1/auth/refresh", "GET /v1/whoami"],
        "refresh first"
    );
    assert_eq!(api.auths()[1].as_deref(), Some("Bearer tok-alice-2"));
    let stored: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        stored["apis"][api.url.as_str()]["access_token"],
        "tok-alice-2"
    );
}

#[tokio::test]
async fn a_world_readable_credentials_file_is_refused() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["login", "--token", "tok-alice"],
        "",
        &[],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = credentials(home.path());
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = run(&api, home.path(), &["whoami"], "", &[]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("chmod 600 {}", file.display())),
        "{}",
        r.stderr
    );
    assert!(
        api.calls().is_empty(),
        "no request with a token that may have leaked"
    );
}

#[tokio::test]
async fn without_a_login_the_api_refusal_exits_9_with_a_hint() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(&api, home.path(), &["quota", "show"], "", &[]).await;
    assert_eq!(r.code, 9, "{}", r.stderr);
    assert!(
        r.stderr.contains("hint: log in with `pitwall login`"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn over_quota_exits_10() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["vm", "create", "huge", "--image", "a:1"],
        "",
        &[("PITWALL_TOKEN", "tok-alice")],
    )
    .await;
    assert_eq!(r.code, 10, "{}", r.stderr);
    assert!(r.stderr.contains("pitwall quota show"), "{}", r.stderr);
}

#[tokio::test]
async fn logout_forgets_the_login_and_says_when_there_was_none() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    run(
        &api,
        home.path(),
        &["login", "--token", "tok-alice"],
        "",
        &[],
    )
    .await;
    let r = run(&api, home.path(), &["logout"], "", &[]).await;
    assert_eq!(
        (r.code, r.stdout.as_str()),
        (0, format!("logged out of {}\n", api.url).as_str())
    );
    let r = run(&api, home.path(), &["logout"], "", &[]).await;
    assert!(r.stdout.starts_with("not logged in to"), "{}", r.stdout);
}

#[tokio::test]
async fn quota_show_asks_for_the_named_group() {
    let api = MockApi::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = run(
        &api,
        home.path(),
        &["quota", "show", "--group", "ops"],
        "",
        &[("PITWALL_TOKEN", "tok-alice")],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(api.calls(), ["GET /v1/quota?group=ops"]);
    assert!(r.stdout.starts_with("holder: group:ops\n"), "{}", r.stdout);
    assert!(r.stdout.contains("vcpus        2      8\n"), "{}", r.stdout);
}
