//! The reaper waits for any child (`waitpid(-1)`): its test runs alone in this binary, so
//! it cannot steal the children of other tests.

#![allow(clippy::unwrap_used)]
// The reaper under test waits for them, not `Child::wait`.
#![allow(clippy::zombie_processes)]

use std::process::Command;
use std::time::{Duration, Instant};

use powerunit::reaper::Reaper;

fn reap_until_no_children(r: &Reaper) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while r.reap() {
        assert!(Instant::now() < deadline, "children left after 10 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn exit_codes_reach_their_watchers_whether_watched_before_or_after_the_exit() {
    let r = Reaper::default();

    // Watched at once, exits later.
    let slow = Command::new("sh")
        .args(["-c", "sleep 0.2; exit 7"])
        .spawn()
        .unwrap();
    let slow_rx = r.watch(slow.id());
    // Exits (and is reaped) before anybody watches it.
    let early = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
    let early_pid = early.id();
    // Killed by a signal: 128 + 9.
    let killed = Command::new("sleep").arg("30").spawn().unwrap();
    let killed_rx = r.watch(killed.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(killed.id()).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    reap_until_no_children(&r);
    assert_eq!(slow_rx.try_recv(), Ok(7));
    assert_eq!(killed_rx.try_recv(), Ok(137));
    assert_eq!(r.watch(early_pid).try_recv(), Ok(3));
    // Delivered once: a second watcher of the same pid gets nothing.
    assert!(r.watch(early_pid).try_recv().is_err());
    assert!(!r.reap(), "no children left");
}
