//! Pulling from a real registry (Debian's `docker-registry`, over plain HTTP on loopback)
//! through the API: pull by tag with progress, boot a VM from it with its run configuration
//! overridden at create, pull by digest (every blob already on the host), and a missing tag.

use pitwall_api::{PullEvent, RunOverrides};
use pitwall_e2e::*;
use pitwall_testkit::registry::Registry;
use pitwall_testkit::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn an_image_pulled_from_a_registry_boots_and_a_missing_tag_is_not_found() -> anyhow::Result<()>
{
    let registry = Registry::start(None)?;
    let dir = tempfile::tempdir()?;
    let layout = dir.path().join("layout");
    let script = format!("echo {HELLO} from $(hostname); exec sleep 100000");
    // The layout's tag is the one pushed.
    pitwall_testkit::busybox_image(&layout, "1.0", &["/bin/sh", "-c", &script], &[])?;
    let pushed = registry.push(&layout, "e2e/hello:1.0", false)?;

    let d = Daemon::start_with_env(vec![(
        "PITWALL_INSECURE_REGISTRIES".into(),
        registry.addr().into(),
    )])
    .await?;
    let c = d.client()?;

    let by_tag = format!("{}/e2e/hello:1.0", registry.addr());
    let mut events = Vec::new();
    let image = c
        .pull_image_with_progress(&by_tag, |e| events.push(e.clone()))
        .await?;
    assert_eq!(image.reference, by_tag);
    assert_eq!(image.digest, pushed, "the digest the registry has");
    assert!(image.size_bytes > 0);
    assert_eq!(c.get_image(&by_tag).await?, image);
    // Config and layer, each downloaded to its last byte, then the build.
    let finished: Vec<&PullEvent> = events
        .iter()
        .filter(|e| matches!(e, PullEvent::Blob { bytes_done, bytes_total, present: false, .. } if bytes_done == bytes_total))
        .collect();
    assert_eq!(finished.len(), 2, "{events:?}");
    assert!(
        matches!(events.last(), Some(PullEvent::Building { digest }) if *digest == pushed),
        "{events:?}"
    );

    // The image's command prints HELLO; this VM runs another, with its own environment.
    let mut req = create("pulled-1", &by_tag);
    req.run = RunOverrides {
        cmd: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo \"override $GREETING in $PWD\"; exec sleep 100000".into(),
        ]),
        env: vec!["GREETING=hi-from-create".into()],
        working_dir: Some("/tmp".into()),
        ..Default::default()
    };
    let vm = c.create_vm(&req).await?;
    assert_eq!(vm.run, req.run);
    wait(&d, "pulled-1", "RUNNING", 180).await?;
    console_contains(&c, "pulled-1", "override hi-from-create in /tmp", 60).await?;
    c.delete_vm("pulled-1").await?;
    if let Err(e) = wait(&d, "pulled-1", "DELETED", 60).await {
        assert!(e.to_string().contains("no VM named"), "{e}");
    }

    let by_digest = format!("{}/e2e/hello@{pushed}", registry.addr());
    let mut events = Vec::new();
    let image = c
        .pull_image_with_progress(&by_digest, |e| events.push(e.clone()))
        .await?;
    assert_eq!(image.digest, pushed);
    assert!(
        events.iter().all(|e| matches!(
            e,
            PullEvent::Blob { present: true, .. } | PullEvent::Building { .. }
        )),
        "every blob is on the host already: {events:?}"
    );

    let missing = format!("{}/e2e/hello:nope", registry.addr());
    let e = c
        .pull_image_with_progress(&missing, |_| {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_found"), "{e}");
    let message = e.to_string();
    assert!(
        message.contains("e2e/hello:nope") && message.contains("not found"),
        "the message names the reference: {message}"
    );
    assert!(
        c.get_image(&missing).await.is_err(),
        "nothing is registered for a failed pull"
    );
    // A streamed pull is audited with its outcome, not with the stream's 200 (the row is
    // written as the stream ends: give it a moment).
    let mut pulls: Vec<(u16, String)> = Vec::new();
    for _ in 0..50 {
        pulls = c
            .audit(None, Some(1000), None)
            .await?
            .into_iter()
            .filter(|a| a.path == "/v1/images/pull")
            .map(|a| (a.status, a.outcome))
            .collect();
        if pulls.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        pulls,
        [
            (201, "ok".to_string()),
            (201, "ok".to_string()),
            (404, "not_found".to_string())
        ],
        "the audit log's pulls"
    );
    Ok(())
}
