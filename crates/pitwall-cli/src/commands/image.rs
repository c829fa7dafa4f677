//! `pitwall image ...`: import, pull, list, show, inspect, rm.
//!
//! The API takes an image as one tar (a `docker save` tar or an OCI layout tar). An OCI image
//! layout directory is packed into a temporary tar first, entries named relative to the
//! directory (`oci-layout`, `index.json`, `blobs/sha256/...`), then uploaded from there.

use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use pitwall_api::{ClientError, Image};
use tempfile::NamedTempFile;

use super::Ctx;
use crate::cli::{ImageCommand, ImportArgs, OutputFormat};
use crate::output;

const WHAT_TO_GIVE: &str =
    "give a `docker save` tar, an OCI layout tar, or an OCI image layout directory";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{} does not exist; {WHAT_TO_GIVE}", path.display())]
    PathNotFound { path: PathBuf },
    #[error("{} is a directory but not an OCI image layout (it has no oci-layout file); {WHAT_TO_GIVE}", path.display())]
    NotAnOciLayout { path: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot pack {} into a temporary tar: {source}; check free space in {} or set TMPDIR", path.display(), std::env::temp_dir().display())]
    Pack {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub async fn run(ctx: &Ctx, command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import(a) => import(ctx, a).await,
        ImageCommand::Pull { reference } => {
            let image = pull(ctx, &reference).await?;
            tracing::info!(image = %image.reference, digest = %image.digest, "image pulled");
            ctx.show(&image, |i, _| done("pulled", i))
        }
        ImageCommand::List => {
            let images = ctx.client.list_images().await?;
            ctx.show(&images, |images, now| output::image_table(images, now))
        }
        ImageCommand::Show { reference } => {
            let image = ctx.client.get_image(&reference).await?;
            ctx.show(&image, output::image_details)
        }
        ImageCommand::Inspect { reference } => {
            let image = ctx.client.get_image(&reference).await?;
            print!("{}", output::json(&image)?);
            Ok(())
        }
        ImageCommand::Rm { reference, force } => {
            let image = ctx.client.delete_image(&reference, force).await?;
            tracing::info!(image = %image.reference, digest = %image.digest, force, "image removed");
            ctx.show(&image, |i, _| {
                let mut line = format!("removed {} ({})", i.reference, i.digest);
                if i.used_by_count > 0 {
                    line.push_str(&format!(
                        "; {} VM(s) still use it and cannot start again",
                        i.used_by_count
                    ));
                }
                line.push('\n');
                line
            })
        }
    }
}

/// `pulled REF (DIGEST, SIZE)`: the one line an import or a pull prints.
fn done(verb: &str, i: &Image) -> String {
    format!(
        "{verb} {} ({}, {})\n",
        i.reference,
        i.digest,
        output::bytes(i.size_bytes)
    )
}

/// Pulls with progress bars on stderr (none for JSON output, or when stderr is no terminal).
async fn pull(ctx: &Ctx, reference: &str) -> Result<pitwall_api::Image, ClientError> {
    let mut bars = match ctx.format {
        OutputFormat::Json => crate::progress::PullBars::hidden(),
        _ => crate::progress::PullBars::stderr(),
    };
    let image = ctx
        .client
        .pull_image_with_progress(reference, |e| bars.update(e))
        .await;
    bars.finish();
    image
}

async fn import(ctx: &Ctx, a: ImportArgs) -> anyhow::Result<()> {
    let meta = match tokio::fs::metadata(&a.path).await {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ImportError::PathNotFound { path: a.path }.into())
        }
        Err(source) => {
            return Err(ImportError::Read {
                path: a.path,
                source,
            }
            .into())
        }
    };
    let image: Image = if meta.is_dir() {
        let dir = a.path.clone();
        let tar = tokio::task::spawn_blocking(move || pack_layout(&dir)).await??;
        tracing::debug!(dir = %a.path.display(), tar = %tar.path().display(), "packed OCI layout");
        ctx.client.import_image_file(&a.name, tar.path()).await?
    } else {
        ctx.client.import_image_file(&a.name, &a.path).await?
    };
    tracing::info!(image = %image.reference, digest = %image.digest, "image imported");
    ctx.show(&image, |i, _| done("imported", i))
}

/// Pack an OCI image layout directory into a temporary tar file, deleted when dropped.
pub fn pack_layout(dir: &Path) -> Result<NamedTempFile, ImportError> {
    if !dir.join("oci-layout").is_file() {
        return Err(ImportError::NotAnOciLayout {
            path: dir.to_owned(),
        });
    }
    let pack_err = |source| ImportError::Pack {
        path: dir.to_owned(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .prefix("pitwall-image-")
        .suffix(".tar")
        .tempfile()
        .map_err(pack_err)?;
    let mut tar = tar::Builder::new(BufWriter::new(tmp.as_file()));
    tar.mode(tar::HeaderMode::Deterministic);
    // "" as the prefix: entries are named `oci-layout`, `blobs/...`, with no `./` before them
    tar.append_dir_all("", dir).map_err(pack_err)?;
    tar.into_inner()
        .map_err(pack_err)?
        .flush()
        .map_err(pack_err)?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_path: &Path) -> Vec<String> {
        let mut archive = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
        let mut names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_layout_directory_is_packed_with_paths_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("index.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        std::fs::write(dir.path().join("blobs/sha256/abc"), "blob").unwrap();

        let tar = pack_layout(dir.path()).unwrap();

        assert_eq!(
            entries(tar.path()),
            [
                "blobs",
                "blobs/sha256",
                "blobs/sha256/abc",
                "index.json",
                "oci-layout"
            ]
        );
    }

    #[test]
    fn a_directory_without_oci_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = pack_layout(dir.path()).unwrap_err();
        assert!(matches!(e, ImportError::NotAnOciLayout { .. }), "{e:?}");
        assert!(e.to_string().contains("docker save"), "{e}");
    }
}
