//! `pitwall-fixture busybox-image OUT_DIR TAG [CMD...]`: write a busybox OCI image layout
//! (used by the demo and by benchmarks).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kind, out, tag, cmd @ ..] = args.as_slice() else {
        eprintln!("usage: pitwall-fixture busybox-image OUT_DIR TAG [CMD...]");
        return ExitCode::from(2);
    };
    if kind != "busybox-image" {
        eprintln!("unknown fixture {kind:?}; the one fixture is busybox-image");
        return ExitCode::from(2);
    }
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    match pitwall_testkit::busybox_image(&PathBuf::from(out), tag, &cmd, &[]) {
        Ok(digest) => {
            println!("{digest}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pitwall-fixture: {e:#}");
            ExitCode::FAILURE
        }
    }
}
