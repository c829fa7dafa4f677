//! Pulls from a real distribution registry (`docker-registry` on loopback, filled by
//! `skopeo`): by tag and digest, shared blobs, credentials, multi-platform indexes, corrupt
//! blobs, and the errors a user sees. Each test runs its own registry.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use pitwall_core::ImageRef;
use pitwall_image::registry::{pull, Credential, PullProgress, RegistryOptions};
use pitwall_image::{ImageCache, ImageError, ImageInfo};
use pitwall_testkit::registry::{two_platform_image, Registry};

/// A test's directories: the image cache, and the busybox layout it pushes.
struct Setup {
    dir: tempfile::TempDir,
    cache: ImageCache,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(&dir.path().join("cache")).unwrap();
    Setup { dir, cache }
}

impl Setup {
    /// Writes the busybox image as `v1` in a layout and returns (layout, manifest digest).
    fn busybox(&self) -> (PathBuf, String) {
        let layout = self.dir.path().join("layout");
        let digest =
            pitwall_testkit::busybox_image(&layout, "v1", &["/bin/sh", "-c", "echo hi"], &[])
                .unwrap();
        (layout, digest)
    }

    /// Options for `registry`, over plain HTTP, with an empty docker config (the user's
    /// own `~/.docker/config.json` stays out of the tests).
    fn options(&self, registry: &Registry) -> RegistryOptions {
        let config = self.dir.path().join("docker-config.json");
        if !config.exists() {
            std::fs::write(&config, "{}").unwrap();
        }
        RegistryOptions {
            insecure: vec![registry.addr().to_string()],
            docker_config: Some(config),
            ..Default::default()
        }
    }

    fn blob_dir(&self) -> PathBuf {
        self.cache.root().join("blobs/sha256")
    }
}

fn image(registry: &Registry, rest: &str) -> ImageRef {
    ImageRef::parse(&format!("{}/{rest}", registry.addr())).unwrap()
}

async fn pull_quietly(
    cache: &ImageCache,
    reference: &ImageRef,
    opts: &RegistryOptions,
) -> Result<ImageInfo, ImageError> {
    pull(cache, reference, opts, &|_| {}).await
}

/// The layer digests of the manifest `digest` in `layout`.
fn layers_of(layout: &Path, digest: &str) -> Vec<String> {
    let path = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn pull_by_tag_from_an_anonymous_insecure_registry_fills_the_cache() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "demo/busybox:v1", false).unwrap();
    let reference = image(&registry, "demo/busybox:v1");

    let info = pull_quietly(&s.cache, &reference, &s.options(&registry))
        .await
        .unwrap();

    assert_eq!(info.digest, digest);
    assert_eq!(info.config.cmd, ["/bin/sh", "-c", "echo hi"]);
    assert!(info.rootfs.is_file(), "{} missing", info.rootfs.display());
    assert_eq!(s.cache.get(&reference).unwrap(), Some(info));
}

#[tokio::test]
async fn pull_by_digest_gives_the_same_digest() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let (layout, digest) = s.busybox();
    let pushed = registry.push(&layout, "demo/busybox:v1", false).unwrap();
    assert_eq!(pushed, digest);

    let info = pull_quietly(
        &s.cache,
        &image(&registry, &format!("demo/busybox@{digest}")),
        &s.options(&registry),
    )
    .await
    .unwrap();

    assert_eq!(info.digest, digest);
    assert!(info.rootfs.is_file());
}

#[tokio::test]
async fn a_second_pull_downloads_no_blob_again() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "demo/busybox:v1", false).unwrap();
    let opts = s.options(&registry);
    let events = Mutex::new(Vec::new());
    let record = |p: PullProgress| events.lock().unwrap().push(p);

    pull(
        &s.cache,
        &image(&registry, "demo/busybox:v1"),
        &opts,
        &record,
    )
    .await
    .unwrap();
    let first: Vec<PullProgress> = std::mem::take(&mut *events.lock().unwrap());
    let layer = &layers_of(&layout, &digest)[0];
    let stored = s.blob_dir().join(layer.trim_start_matches("sha256:"));
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&stored).unwrap());
    let started = Instant::now();
    let info = pull(
        &s.cache,
        &image(&registry, "demo/busybox:v1"),
        &opts,
        &record,
    )
    .await
    .unwrap();
    let second = std::mem::take(&mut *events.lock().unwrap());

    assert!(first
        .iter()
        .any(|p| matches!(p, PullProgress::Downloading { digest, .. } if digest == layer)));
    assert!(
        !second
            .iter()
            .any(|p| matches!(p, PullProgress::Downloading { .. })),
        "second pull downloaded: {second:?}"
    );
    assert_eq!(
        second
            .iter()
            .filter(|p| matches!(p, PullProgress::Present { .. }))
            .count(),
        2,
        "config and layer already stored: {second:?}"
    );
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&stored).unwrap()),
        inode
    );
    assert_eq!(info.digest, digest);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_htpasswd_registry_without_credentials_is_unauthorized_naming_it() {
    let s = setup();
    let registry = Registry::start(Some(("alice", "s3cret"))).unwrap();
    let (layout, _) = s.busybox();
    registry.push(&layout, "private/busybox:v1", false).unwrap();

    let err = pull_quietly(
        &s.cache,
        &image(&registry, "private/busybox:v1"),
        &s.options(&registry),
    )
    .await
    .unwrap_err();
    eprintln!("{err}");

    assert!(
        matches!(err, ImageError::RegistryUnauthorized { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(registry.addr()), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
}

#[tokio::test]
async fn an_htpasswd_registry_accepts_given_credentials() {
    let s = setup();
    let registry = Registry::start(Some(("alice", "s3cret"))).unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "private/busybox:v1", false).unwrap();
    let opts = RegistryOptions {
        credentials: vec![(
            registry.addr().to_string(),
            Credential::Basic {
                username: "alice".into(),
                password: "s3cret".into(),
            },
        )],
        ..s.options(&registry)
    };

    let info = pull_quietly(&s.cache, &image(&registry, "private/busybox:v1"), &opts)
        .await
        .unwrap();

    assert_eq!(info.digest, digest);
}

#[tokio::test]
async fn an_htpasswd_registry_accepts_credentials_from_a_docker_config() {
    let s = setup();
    let registry = Registry::start(Some(("alice", "s3cret"))).unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "private/busybox:v1", false).unwrap();
    let config = s.dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        &config,
        serde_json::json!({ "auths": { registry.addr(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    let opts = RegistryOptions {
        docker_config: Some(config),
        ..s.options(&registry)
    };

    let info = pull_quietly(&s.cache, &image(&registry, "private/busybox:v1"), &opts)
        .await
        .unwrap();

    assert_eq!(info.digest, digest);
}

#[tokio::test]
async fn a_two_platform_index_resolves_to_the_host_platform() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let layout = s.dir.path().join("multi");
    let platforms = two_platform_image(&layout, "v1").unwrap();
    let pushed = registry.push(&layout, "multi/busybox:v1", true).unwrap();
    assert_eq!(pushed, platforms.index);

    let info = pull_quietly(
        &s.cache,
        &image(&registry, "multi/busybox:v1"),
        &s.options(&registry),
    )
    .await
    .unwrap();

    assert_eq!(info.digest, platforms.host);
    assert_ne!(info.digest, platforms.other);
}

#[tokio::test]
async fn a_pull_by_index_digest_gives_the_platform_manifest_digest() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let layout = s.dir.path().join("multi");
    let platforms = two_platform_image(&layout, "v1").unwrap();
    registry.push(&layout, "multi/busybox:v1", true).unwrap();
    let reference = image(&registry, &format!("multi/busybox@{}", platforms.index));

    let info = pull_quietly(&s.cache, &reference, &s.options(&registry))
        .await
        .unwrap();

    assert_eq!(info.digest, platforms.host);
    assert_eq!(s.cache.get(&reference).unwrap(), Some(info));
}

#[tokio::test]
async fn a_corrupted_blob_fails_naming_it_and_leaves_nothing_behind() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "demo/busybox:v1", false).unwrap();
    let layer = layers_of(&layout, &digest).remove(0);
    let data = registry.blob_data(&layer);
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();
    let reference = image(&registry, "demo/busybox:v1");

    let err = pull_quietly(&s.cache, &reference, &s.options(&registry))
        .await
        .unwrap_err();
    eprintln!("{err}");

    assert!(
        matches!(err, ImageError::RegistryDigestMismatch { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&layer), "{err}");
    assert!(!s
        .blob_dir()
        .join(layer.trim_start_matches("sha256:"))
        .exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.cache.root().join("blobs/tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert_eq!(s.cache.get(&reference).unwrap(), None);
    assert!(s.cache.list().unwrap().is_empty());
}

#[tokio::test]
async fn an_unknown_tag_is_not_found() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let (layout, _) = s.busybox();
    registry.push(&layout, "demo/busybox:v1", false).unwrap();

    let err = pull_quietly(
        &s.cache,
        &image(&registry, "demo/busybox:nope"),
        &s.options(&registry),
    )
    .await
    .unwrap_err();
    eprintln!("{err}");

    assert!(matches!(err, ImageError::RegistryNotFound { .. }), "{err}");
    assert!(err.to_string().contains("demo/busybox:nope"), "{err}");
}

#[tokio::test]
async fn a_plain_http_registry_not_marked_insecure_is_a_tls_error_suggesting_insecure() {
    let s = setup();
    let registry = Registry::start(None).unwrap();
    let opts = RegistryOptions {
        insecure: vec![],
        ..s.options(&registry)
    };

    let err = pull_quietly(&s.cache, &image(&registry, "demo/busybox:v1"), &opts)
        .await
        .unwrap_err();
    eprintln!("{err}");

    assert!(
        matches!(err, ImageError::RegistryConnection { .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(msg.contains("HTTPS") && msg.contains("insecure"), "{msg}");
    assert!(msg.contains(registry.addr()), "{msg}");
}

#[tokio::test]
async fn an_https_registry_with_its_own_ca_is_pulled_once_the_ca_is_given_and_refused_before() {
    let s = setup();
    let registry = Registry::start_tls().unwrap();
    let (layout, digest) = s.busybox();
    registry.push(&layout, "demo/busybox:v1", false).unwrap();
    let https = RegistryOptions {
        insecure: vec![],
        ..s.options(&registry)
    };

    let err = pull_quietly(&s.cache, &image(&registry, "demo/busybox:v1"), &https)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::RegistryConnection { .. }),
        "an unknown CA is a connection error: {err}"
    );
    let msg = err.to_string();
    assert!(msg.contains(registry.addr()), "{msg}");
    assert!(
        msg.contains("ca_files") || msg.contains("CA"),
        "it says how to trust the registry: {msg}"
    );

    let trusted = RegistryOptions {
        ca_files: vec![registry.ca().unwrap().to_path_buf()],
        ..https
    };
    let info = pull_quietly(&s.cache, &image(&registry, "demo/busybox:v1"), &trusted)
        .await
        .unwrap();
    assert_eq!(info.digest, digest);
}
