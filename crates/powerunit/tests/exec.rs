//! The agent's exec on this machine's `/bin/sh`: a process of its own (the reaper thread
//! here waits for any child, which would disturb other tests' children).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pitwall_proto::v1::Exec;
use powerunit::exec::{self, Context};
use powerunit::reaper::Reaper;

fn setup() -> Context {
    // As PID 1 does in its loop.
    std::thread::spawn(|| loop {
        Reaper::global().reap();
        std::thread::sleep(Duration::from_millis(20));
    });
    Context {
        env: vec!["FROM_IMAGE=yes".into()],
        hostname: "test".into(),
    }
}

fn sh(script: &str) -> Exec {
    Exec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        // Whoever runs the tests: no setuid needed.
        user: format!("{}:{}", nix::unistd::getuid(), nix::unistd::getgid()),
        ..Default::default()
    }
}

#[test]
fn exec_feeds_stdin_captures_both_outputs_and_the_code_and_kills_at_the_timeout() {
    let ctx = setup();
    let r = exec::run(
        &ctx,
        &Exec {
            stdin: b"in".to_vec(),
            env: vec!["MINE=1".into()],
            ..sh("cat; echo \" $FROM_IMAGE $MINE\"; echo err >&2; exit 3")
        },
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&r.stdout), "in yes 1\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "err\n");
    assert_eq!((r.code, r.timed_out), (3, false));

    // Output past the cap is cut, and the command still completes.
    let r = exec::run(&ctx, &sh("head -c 3000000 /dev/zero")).unwrap();
    assert_eq!((r.stdout.len(), r.code), (exec::OUTPUT_CAP, 0));

    let started = Instant::now();
    let r = exec::run(
        &ctx,
        &Exec {
            timeout_ms: 300,
            ..sh("echo started; sleep 30 & sleep 30")
        },
    )
    .unwrap();
    assert!(r.timed_out);
    assert_eq!(r.code, 137);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let e = exec::run(
        &ctx,
        &Exec {
            argv: vec!["no-such-tool-here".into()],
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.0.contains("no-such-tool-here"), "{e}");
}
