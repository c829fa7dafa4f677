//! Progress bars for `pitwall image pull`: one bar per blob (config and layers) as the host
//! downloads it, then a spinner while it builds the root image. Drawn on stderr, and only
//! when stderr is a terminal (indicatif hides them otherwise), so scripts and `--output json`
//! see nothing but the result.

use std::collections::HashMap;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use pitwall_api::PullEvent;

use crate::output::short_digest;

/// The bars of one pull.
pub struct PullBars {
    multi: MultiProgress,
    blobs: HashMap<String, ProgressBar>,
    building: Option<ProgressBar>,
}

impl PullBars {
    /// Bars on stderr (hidden when stderr is not a terminal).
    pub fn stderr() -> Self {
        Self::to(ProgressDrawTarget::stderr())
    }

    /// Bars drawn nowhere: state only (for tests, and for JSON output).
    pub fn hidden() -> Self {
        Self::to(ProgressDrawTarget::hidden())
    }

    fn to(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            blobs: HashMap::new(),
            building: None,
        }
    }

    /// Moves the bars to what `event` reports.
    pub fn update(&mut self, event: &PullEvent) {
        match event {
            PullEvent::Blob {
                digest,
                bytes_done,
                bytes_total,
                present,
            } => {
                let bar = self.blobs.entry(digest.clone()).or_insert_with(|| {
                    let bar = self.multi.add(ProgressBar::new(*bytes_total));
                    bar.set_style(blob_style());
                    bar.set_prefix(short_digest(digest));
                    bar
                });
                bar.set_length(*bytes_total);
                bar.set_position((*bytes_done).min(*bytes_total));
                if *present {
                    bar.finish_with_message("already here");
                } else if bytes_done >= bytes_total {
                    bar.finish_with_message("downloaded");
                }
            }
            PullEvent::Building { digest } => {
                for bar in self.blobs.values() {
                    if !bar.is_finished() {
                        bar.finish();
                    }
                }
                let spinner = self.multi.add(ProgressBar::new_spinner());
                spinner.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                spinner.set_message(format!(
                    "building the root image of {}",
                    short_digest(digest)
                ));
                spinner.enable_steady_tick(Duration::from_millis(120));
                self.building = Some(spinner);
            }
            PullEvent::Done { .. } | PullEvent::Error { .. } => self.finish(),
        }
    }

    /// Ends every bar (the pull has an outcome).
    pub fn finish(&mut self) {
        if let Some(s) = self.building.take() {
            s.finish_and_clear();
        }
        for bar in self.blobs.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }

    /// (done, total) bytes of a blob's bar, and whether it is finished.
    pub fn blob(&self, digest: &str) -> Option<(u64, u64, bool)> {
        self.blobs
            .get(digest)
            .map(|b| (b.position(), b.length().unwrap_or(0), b.is_finished()))
    }

    /// Whether the build spinner is up.
    pub fn building(&self) -> bool {
        self.building.is_some()
    }
}

impl Drop for PullBars {
    fn drop(&mut self) {
        self.finish();
    }
}

fn blob_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix} [{bar:30}] {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(d: &str, done: u64, total: u64, present: bool) -> PullEvent {
        PullEvent::Blob {
            digest: d.into(),
            bytes_done: done,
            bytes_total: total,
            present,
        }
    }

    #[test]
    fn each_blob_gets_a_bar_that_follows_its_bytes() {
        let mut bars = PullBars::hidden();
        bars.update(&blob("sha256:aa", 0, 1000, false));
        bars.update(&blob("sha256:bb", 0, 10, true));
        bars.update(&blob("sha256:aa", 400, 1000, false));
        assert_eq!(bars.blob("sha256:aa"), Some((400, 1000, false)));
        assert_eq!(
            bars.blob("sha256:bb"),
            Some((0, 10, true)).map(|_| (10, 10, true))
        );
        bars.update(&blob("sha256:aa", 1000, 1000, false));
        assert_eq!(bars.blob("sha256:aa"), Some((1000, 1000, true)));
        assert!(!bars.building());
        bars.update(&PullEvent::Building {
            digest: "sha256:cc".into(),
        });
        assert!(bars.building());
        bars.finish();
        assert!(!bars.building());
    }

    #[test]
    fn a_report_past_the_total_does_not_overflow_the_bar() {
        let mut bars = PullBars::hidden();
        bars.update(&blob("sha256:aa", 5000, 1000, false));
        assert_eq!(bars.blob("sha256:aa"), Some((1000, 1000, true)));
    }
}
