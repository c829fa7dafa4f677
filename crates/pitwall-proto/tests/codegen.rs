//! The generated protobuf code is committed (`src/gen/pitwall.v1.rs`) so that building
//! Pitwall needs neither `protoc` nor a build script. This test regenerates it from
//! `proto/pitwall/v1/*.proto` with `protox` (a pure-Rust protobuf compiler) and
//! `prost-build`, and fails when the committed file is stale.
//!
//! Regenerate with:
//!
//! ```text
//! PITWALL_REGENERATE=1 cargo test -p pitwall-proto --test codegen
//! ```

use std::path::{Path, PathBuf};

const PROTO_FILES: &[&str] = &["pitwall/v1/envelope.proto", "pitwall/v1/agent.proto"];
const GENERATED: &str = "pitwall.v1.rs";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn proto_root() -> PathBuf {
    manifest_dir().join("../../proto")
}

fn committed_path() -> PathBuf {
    manifest_dir().join("src/gen").join(GENERATED)
}

/// Runs the code generator into `out_dir` and returns the generated file's text.
fn generate(out_dir: &Path) -> String {
    let fds = protox::compile(PROTO_FILES, [proto_root()])
        .unwrap_or_else(|e| panic!("compiling {PROTO_FILES:?} under {:?}: {e}", proto_root()));
    prost_build::Config::new()
        .out_dir(out_dir)
        .format(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating Rust code: {e}"));
    let path = out_dir.join(GENERATED);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path:?}: {e}"))
}

#[test]
fn generated_code_is_up_to_date() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let fresh = generate(tmp.path());
    let committed_path = committed_path();

    if std::env::var_os("PITWALL_REGENERATE").is_some_and(|v| v == "1") {
        std::fs::write(&committed_path, &fresh)
            .unwrap_or_else(|e| panic!("writing {committed_path:?}: {e}"));
        eprintln!("regenerated {committed_path:?}");
        return;
    }

    let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
    assert!(
        committed == fresh,
        "{committed_path:?} is out of date with proto/pitwall/v1/*.proto.\n\
         Regenerate it with:\n    PITWALL_REGENERATE=1 cargo test -p pitwall-proto --test codegen\n\
         and commit the result."
    );
}

#[test]
fn generation_is_deterministic() {
    let a = tempfile::tempdir().expect("temp dir");
    let b = tempfile::tempdir().expect("temp dir");
    assert_eq!(generate(a.path()), generate(b.path()));
}
