//! Bad input gets a clear error and leaves the store consistent. No VM boots here: VMs are
//! created with `start: false` (built, left STOPPED).

use pitwall_api::{ClientError, CreateVmRequest};
use pitwall_e2e::*;
use pitwall_testkit::Daemon;

fn code(e: &ClientError) -> (u16, String, String) {
    match e {
        ClientError::Api {
            status,
            code,
            message,
        } => (*status, code.clone(), message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_request_is_refused_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let d = Daemon::start().await?;
    let c = d.client()?;
    import_hello(&c, "e2e/hello:1.0").await?;

    let mut ok = create("keeper", "e2e/hello:1.0");
    ok.start = Some(false);
    c.create_vm(&ok).await?;
    wait(&d, "keeper", "STOPPED", 60).await?;

    // invalid names
    for (name, hint) in [
        ("", "empty"),
        ("Web", "lower-case"),
        ("a_b", "lower-case"),
        ("-x", "start with a letter"),
        (&*"a".repeat(64), "longer than 63"),
    ] {
        let e = c
            .create_vm(&create(name, "e2e/hello:1.0"))
            .await
            .unwrap_err();
        let (status, code, msg) = code(&e);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_argument"),
            "{name:?}: {msg}"
        );
        assert!(msg.contains(hint), "{name:?}: {msg}");
    }
    // zero and absurd sizes
    for req in [
        CreateVmRequest {
            vcpus: Some(0),
            ..create("a", "e2e/hello:1.0")
        },
        CreateVmRequest {
            memory_mib: Some(0),
            ..create("a", "e2e/hello:1.0")
        },
        CreateVmRequest {
            memory_mib: Some(u64::MAX),
            ..create("a", "e2e/hello:1.0")
        },
        CreateVmRequest {
            disk_mib: Some(1 << 40),
            ..create("a", "e2e/hello:1.0")
        },
        CreateVmRequest {
            vcpus: Some(10_000),
            ..create("a", "e2e/hello:1.0")
        },
    ] {
        let e = c.create_vm(&req).await.unwrap_err();
        let (status, code, msg) = code(&e);
        assert_eq!(
            (status, code.as_str()),
            (400, "invalid_argument"),
            "{req:?}: {msg}"
        );
        assert!(
            msg.contains("out of range") && msg.contains("from"),
            "{msg}"
        );
    }
    // unknown image, and a malformed reference
    let e = c.create_vm(&create("b", "e2e/nope:1")).await.unwrap_err();
    let (status, _, msg) = code(&e);
    assert_eq!(status, 404);
    assert!(msg.contains("pitwall image import"), "{msg}");
    let e = c.create_vm(&create("b", "Not An Image")).await.unwrap_err();
    assert_eq!(code(&e).0, 400);
    // duplicate name
    let e = c.create_vm(&ok).await.unwrap_err();
    let (status, code_s, msg) = code(&e);
    assert_eq!((status, code_s.as_str()), (409, "already_exists"), "{msg}");
    // unknown fields in the body are refused too
    let token = c.token().unwrap_or_default().to_string();
    let raw = raw_post(
        &d.api,
        &token,
        r#"{"name":"c","image":"e2e/hello:1.0","cpus":2}"#,
    )
    .await?;
    assert_eq!(raw.0, 400, "{}", raw.1);
    assert!(raw.1.contains("cpus"), "{}", raw.1);

    // a corrupt archive
    let dir = tempfile::tempdir()?;
    let bad = dir.path().join("bad.tar");
    std::fs::write(
        &bad,
        b"this is not a tar archive at all, just some bytes".repeat(20),
    )?;
    let e = c.import_image_file("e2e/bad:1", &bad).await.unwrap_err();
    let (status, code_s, msg) = code(&e);
    assert_eq!((status, code_s.as_str()), (400, "invalid_image"), "{msg}");
    assert!(c
        .list_images()
        .await?
        .iter()
        .all(|i| i.reference != "e2e/bad:1"));
    assert!(
        std::fs::read_dir(d.data_dir.join("control/uploads"))?
            .next()
            .is_none(),
        "upload removed"
    );

    // delete twice: the second is refused (being deleted) or not found (already gone)
    c.delete_vm("keeper").await?;
    let e = c.delete_vm("keeper").await.unwrap_err();
    let (status, _, msg) = code(&e);
    assert!(status == 409 || status == 404, "{status}: {msg}");
    let _ = wait(&d, "keeper", "DELETED", 60).await;
    let e = c.delete_vm("keeper").await.unwrap_err();
    assert_eq!(code(&e).0, 404);

    // the store holds exactly what succeeded
    assert!(c.list_vms().await?.is_empty());
    assert_eq!(c.list_images().await?.len(), 1);
    Ok(())
}

/// POST a raw body (to send what the typed client cannot).
/// POST a raw body to `/v1/vms` (bypassing the typed client, which cannot send unknown
/// fields).
async fn raw_post(api: &str, token: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = api.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST /v1/vms HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok((status, out))
}
