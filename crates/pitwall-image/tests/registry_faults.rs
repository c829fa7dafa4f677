//! Pulls from a registry that misbehaves on purpose (an axum server in the test speaking the
//! distribution API): a layer download cut in the middle resumes with `Range` from where it
//! stopped, a rate limit (HTTP 429) is its own error, and the bearer-token flow of Docker Hub
//! (401 with `WWW-Authenticate: Bearer realm=…`, a token endpoint taking the user's
//! credentials) works with credentials and fails clearly without them. Debian's
//! docker-registry does none of these on demand, hence the fake.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use pitwall_core::ImageRef;
use pitwall_image::build::{layout_from_layers, LayerCompression};
use pitwall_image::registry::{pull, Credential, RegistryOptions};
use pitwall_image::{ImageCache, ImageConfig, ImageError};

const TOKEN: &str = "t0ken-for-tests";

/// What the fake does.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The first download of the layer stops half way (the connection ends early).
    CutLayerOnce,
    /// Manifests answer 429 Too Many Requests.
    RateLimited,
    /// Everything needs `Bearer TOKEN`, which `/token` gives for `user:secret`.
    Token,
}

struct Fake {
    mode: Mode,
    addr: String,
    /// blob digest → bytes; manifest by tag "v1" and by digest.
    blobs: HashMap<String, Vec<u8>>,
    manifest: (String, Vec<u8>),
    layer: String,
    /// `(what, range header)` of every blob and token request, in order.
    log: Mutex<Vec<(String, Option<String>)>>,
    cut: Mutex<bool>,
}

type Shared = Arc<Fake>;

/// Starts the fake serving a one-layer image (a 3 MiB file, stored uncompressed so the cut
/// falls in the middle of file data) as `fake/img:v1`.
async fn start(mode: Mode) -> (Shared, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    tar.append_data(&mut h, "big", &data[..]).unwrap();
    let layer_tar = tar.into_inner().unwrap();
    let config = ImageConfig {
        cmd: vec!["/big".into()],
        ..Default::default()
    };
    let digest = layout_from_layers(
        &layout,
        &[(layer_tar, LayerCompression::None)],
        &config,
        "v1",
    )
    .unwrap();
    let mut blobs = HashMap::new();
    for e in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let d = format!("sha256:{}", e.file_name().to_string_lossy());
        blobs.insert(d, std::fs::read(e.path()).unwrap());
    }
    let manifest = blobs[&digest].clone();
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let layer = m["layers"][0]["digest"].as_str().unwrap().to_string();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = Arc::new(Fake {
        mode,
        addr,
        blobs,
        manifest: (digest, manifest),
        layer,
        log: Mutex::new(Vec::new()),
        cut: Mutex::new(false),
    });
    let app = Router::new()
        .route("/v2/", get(base))
        .route("/v2/fake/img/manifests/{reference}", get(manifest_of))
        .route("/v2/fake/img/blobs/{digest}", get(blob))
        .route("/token", get(token))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, dir)
}

/// `None` when the request may go on, else the 401 that sends the client for a token.
fn challenge(f: &Fake, headers: &HeaderMap) -> Option<Response> {
    if f.mode != Mode::Token {
        return None;
    }
    let ok = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    if ok {
        return None;
    }
    let www = format!(
        r#"Bearer realm="http://{}/token",service="fake-registry",scope="repository:fake/img:pull""#,
        f.addr
    );
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, www)],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response(),
    )
}

async fn base(State(f): State<Shared>, headers: HeaderMap) -> Response {
    challenge(&f, &headers).unwrap_or_else(|| "{}".into_response())
}

async fn token(State(f): State<Shared>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    f.log.lock().unwrap().push(("token".into(), auth.clone()));
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:secret")
    );
    if auth.as_deref() == Some(good.as_str()) {
        axum::Json(serde_json::json!({ "token": TOKEN, "expires_in": 300 })).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, "bad credentials").into_response()
    }
}

async fn manifest_of(
    State(f): State<Shared>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = challenge(&f, &headers) {
        return r;
    }
    if f.mode == Mode::RateLimited {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "3600")],
            r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#,
        )
            .into_response();
    }
    if reference != "v1" && reference != f.manifest.0 {
        return (
            StatusCode::NOT_FOUND,
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#,
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.oci.image.manifest.v1+json".to_string(),
            ),
            (
                header::HeaderName::from_static("docker-content-digest"),
                f.manifest.0.clone(),
            ),
        ],
        f.manifest.1.clone(),
    )
        .into_response()
}

async fn blob(State(f): State<Shared>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    if let Some(r) = challenge(&f, &headers) {
        return r;
    }
    let Some(bytes) = f.blobs.get(&digest).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    f.log.lock().unwrap().push((digest.clone(), range.clone()));
    let total = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.parse::<usize>().ok());
    let cut_now = f.mode == Mode::CutLayerOnce && digest == f.layer && {
        let mut cut = f.cut.lock().unwrap();
        !std::mem::replace(&mut *cut, true)
    };
    let from = start.unwrap_or(0).min(total);
    let mut r = if cut_now {
        // Promise the rest of the blob, send half of the whole, then fail the stream: the
        // connection ends early.
        let half = bytes[from..total / 2].to_vec();
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
            Ok(half),
            Err(std::io::Error::other(
                "the fake registry cuts the download here",
            )),
        ];
        Response::new(Body::from_stream(futures::stream::iter(chunks)))
    } else {
        Response::new(Body::from(bytes[from..].to_vec()))
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_LENGTH,
        (total - from).to_string().parse().unwrap(),
    );
    if start.is_some() {
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        r.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {from}-{}/{total}", total - 1)
                .parse()
                .unwrap(),
        );
    }
    r
}

fn options(f: &Fake, credentials: bool, dir: &std::path::Path) -> RegistryOptions {
    let config = dir.join("docker-config.json");
    std::fs::write(&config, "{}").unwrap();
    RegistryOptions {
        insecure: vec![f.addr.clone()],
        docker_config: Some(config),
        credentials: if credentials {
            vec![(
                f.addr.clone(),
                Credential::Basic {
                    username: "user".into(),
                    password: "secret".into(),
                },
            )]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

fn reference(f: &Fake) -> ImageRef {
    ImageRef::parse(&format!("{}/fake/img:v1", f.addr)).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_download_cut_in_the_middle_resumes_where_it_stopped() {
    let (f, dir) = start(Mode::CutLayerOnce).await;
    let cache = ImageCache::open(&dir.path().join("cache")).unwrap();
    let info = pull(
        &cache,
        &reference(&f),
        &options(&f, false, dir.path()),
        &|_| {},
    )
    .await
    .expect("the pull survives a cut download");
    assert_eq!(info.digest, f.manifest.0);
    let layer_requests: Vec<Option<String>> = f
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(d, _)| *d == f.layer)
        .map(|(_, r)| r.clone())
        .collect();
    assert_eq!(layer_requests.len(), 2, "{layer_requests:?}");
    assert!(
        matches!(layer_requests[0].as_deref(), None | Some("bytes=0-")),
        "the first download asks for all of it: {layer_requests:?}"
    );
    let resumed_at: usize = layer_requests[1]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or_else(|| panic!("the second asks for the rest: {layer_requests:?}"));
    let total = f.blobs[&f.layer].len();
    assert!(
        resumed_at > 0 && resumed_at <= total / 2,
        "resumed at {resumed_at} of {total}: from what had arrived, not from 0"
    );
    // What was stored is the whole, verified blob.
    let stored = cache
        .root()
        .join("blobs/sha256")
        .join(f.layer.trim_start_matches("sha256:"));
    assert_eq!(std::fs::read(stored).unwrap(), f.blobs[&f.layer]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_limit_is_its_own_error_naming_the_registry() {
    let (f, dir) = start(Mode::RateLimited).await;
    let cache = ImageCache::open(&dir.path().join("cache")).unwrap();
    let e = pull(
        &cache,
        &reference(&f),
        &options(&f, false, dir.path()),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ImageError::RegistryRateLimited { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&f.addr), "names the registry: {msg}");
    assert!(cache.list().unwrap().is_empty(), "nothing registered");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bearer_token_flow_works_with_credentials_and_says_what_to_do_without() {
    let (f, dir) = start(Mode::Token).await;
    let cache = ImageCache::open(&dir.path().join("cache")).unwrap();
    let e = pull(
        &cache,
        &reference(&f),
        &options(&f, false, dir.path()),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, ImageError::RegistryUnauthorized { .. }),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&f.addr), "names the registry: {msg}");

    let info = pull(
        &cache,
        &reference(&f),
        &options(&f, true, dir.path()),
        &|_| {},
    )
    .await
    .expect("with credentials the token flow succeeds");
    assert_eq!(info.digest, f.manifest.0);
    let good = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:secret")
    );
    assert!(
        f.log
            .lock()
            .unwrap()
            .iter()
            .any(|(w, a)| w == "token" && a.as_deref() == Some(good.as_str())),
        "the token endpoint got the user's credentials"
    );
}
