//! Pulling from a real registry (Debian's `docker-registry`, over plain HTTP on loopback)
//! through the API: pull by tag, boot a VM from it, pull by digest, and a missing tag.

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
    let image = c.pull_image(&by_tag).await?;
    assert_eq!(image.reference, by_tag);
    assert_eq!(image.digest, pushed, "the digest the registry has");
    assert!(image.size_bytes > 0);
    assert_eq!(c.get_image(&by_tag).await?, image);

    c.create_vm(&create("pulled-1", &by_tag)).await?;
    wait(&d, "pulled-1", "RUNNING", 180).await?;
    console_contains(&c, "pulled-1", HELLO, 60).await?;
    c.delete_vm("pulled-1").await?;
    if let Err(e) = wait(&d, "pulled-1", "DELETED", 60).await {
        assert!(e.to_string().contains("no VM named"), "{e}");
    }

    let by_digest = format!("{}/e2e/hello@{pushed}", registry.addr());
    let image = c.pull_image(&by_digest).await?;
    assert_eq!(image.digest, pushed);

    let missing = format!("{}/e2e/hello:nope", registry.addr());
    let e = c.pull_image(&missing).await.unwrap_err();
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
    Ok(())
}
