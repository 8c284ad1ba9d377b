//! The end-of-run report: failures first, then an aligned table (or one JSON document).

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::admin::PinOutcome;
use super::walk::{ImageOutcome, Mode};
use crate::units::human_bytes;

pub struct Report {
    pub mode: Mode,
    pub mirror: String,
    /// In input order.
    pub images: Vec<ImageOutcome>,
    pub pins: Vec<PinOutcome>,
    /// Why pins were not recorded at all (no token given), if so.
    pub pins_skipped: Option<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn failures(&self) -> usize {
        self.images.iter().filter(|i| i.failed()).count()
    }

    /// Exit status 0 only when every image is warm (or, for `--check`, ready).
    pub fn success(&self) -> bool {
        self.failures() == 0
    }

    /// The plain-text report for stdout.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.write_failures(&mut out);
        if self.failures() > 0 {
            out.push('\n');
        }
        write_table(&mut out, &self.table_rows());
        out.push('\n');
        self.write_pins(&mut out);
        let _ = writeln!(out, "{}", self.verdict());
        out
    }

    /// Each failed image's error and missing pieces, one line each, above the table.
    fn write_failures(&self, out: &mut String) {
        for image in self.images.iter().filter(|i| i.failed()) {
            if let Some(e) = &image.error {
                let _ = writeln!(out, "FAILED  {} {}: {e}", image.group, image.image);
            }
            for m in &image.missing {
                let platform = m
                    .platform
                    .as_deref()
                    .map(|p| format!(" ({p})"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "MISSING {} {}: {}{platform}",
                    image.group, image.image, m.what
                );
            }
        }
    }

    /// One row of [`TABLE_HEADER`] per image.
    fn table_rows(&self) -> Vec<[String; 7]> {
        let mut sorted: Vec<&ImageOutcome> = self.images.iter().collect();
        sorted.sort_by_key(|i| !i.failed()); // stable: failures first, else input order
        sorted
            .into_iter()
            .map(|i| {
                [
                    i.group.clone(),
                    i.image.to_string(),
                    i.digest
                        .as_ref()
                        .map(|d| format!("{}:{}", d.algorithm().as_str(), &d.hex()[..12]))
                        .unwrap_or_else(|| "-".into()),
                    if i.platforms.is_empty() {
                        "-".into()
                    } else {
                        i.platforms.join(",")
                    },
                    human_bytes(i.size),
                    result(i, self.mode),
                    format!("{:.1}s", i.elapsed.as_secs_f64()),
                ]
            })
            .collect()
    }

    /// Whether each group's pins were recorded, or why none were.
    fn write_pins(&self, out: &mut String) {
        for p in &self.pins {
            let _ = writeln!(
                out,
                "pins {}: {} manifests, {}",
                p.group, p.manifests, p.message
            );
        }
        if let Some(why) = &self.pins_skipped {
            let _ = writeln!(out, "pins not recorded: {why}");
        }
    }

    pub fn verdict(&self) -> String {
        let n = self.images.len();
        let failed = self.failures();
        let downloaded: u64 = self.images.iter().map(|i| i.downloaded).sum();
        let size: u64 = self.images.iter().map(|i| i.size).sum();
        match (self.mode, failed) {
            (Mode::Check, 0) => format!(
                "ready: all {n} images ({}) can be served by {} from its cache alone",
                human_bytes(size),
                self.mirror
            ),
            (Mode::Check, _) => format!(
                "NOT READY: {failed} of {n} images cannot be served from the cache alone (listed above)"
            ),
            (Mode::Warm, 0) => format!(
                "warm: {n} images ({}), {} downloaded through the mirror in {:.1}s",
                human_bytes(size),
                human_bytes(downloaded),
                self.elapsed.as_secs_f64()
            ),
            (Mode::Warm, _) => format!("FAILED: {failed} of {n} images (listed above)"),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let images: Vec<JsonImage> = self
            .images
            .iter()
            .map(|i| JsonImage::new(i, self.mode))
            .collect();
        serde_json::json!({
            "mode": match self.mode { Mode::Warm => "prewarm", Mode::Check => "check" },
            "mirror": self.mirror,
            "ok": self.success(),
            "summary": {
                "images": self.images.len(),
                "failed": self.failures(),
                "bytes": self.images.iter().map(|i| i.size).sum::<u64>(),
                "downloaded_bytes": self.images.iter().map(|i| i.downloaded).sum::<u64>(),
                "seconds": self.elapsed.as_secs_f64(),
                "verdict": self.verdict(),
            },
            "images": images,
            "pins": self.pins,
            "pins_skipped": self.pins_skipped,
        })
    }
}

const TABLE_HEADER: [&str; 7] = [
    "GROUP",
    "IMAGE",
    "DIGEST",
    "PLATFORMS",
    "SIZE",
    "RESULT",
    "TIME",
];

/// The header and rows, each column as wide as its widest cell, two spaces apart.
fn write_table(out: &mut String, rows: &[[String; 7]]) {
    let widths: Vec<usize> = (0..TABLE_HEADER.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].len())
                .chain([TABLE_HEADER[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&TABLE_HEADER);
    for r in rows {
        line(&r.each_ref().map(String::as_str));
    }
}

#[derive(Serialize)]
struct JsonImage {
    group: String,
    image: String,
    digest: Option<String>,
    platforms: Vec<String>,
    not_offered: Vec<String>,
    manifests: Vec<String>,
    size: u64,
    downloaded_bytes: u64,
    blobs: usize,
    blobs_cached: usize,
    result: String,
    error: Option<String>,
    missing: Vec<JsonMissing>,
    seconds: f64,
}

#[derive(Serialize)]
struct JsonMissing {
    what: String,
    platform: Option<String>,
}

impl JsonImage {
    fn new(i: &ImageOutcome, mode: Mode) -> JsonImage {
        JsonImage {
            group: i.group.clone(),
            image: i.image.to_string(),
            digest: i.digest.as_ref().map(ToString::to_string),
            platforms: i.platforms.clone(),
            not_offered: i.not_offered.clone(),
            manifests: i.manifests.iter().map(ToString::to_string).collect(),
            size: i.size,
            downloaded_bytes: i.downloaded,
            blobs: i.blobs,
            blobs_cached: i.blobs_cached,
            result: result(i, mode),
            error: i.error.as_ref().map(ToString::to_string),
            missing: i
                .missing
                .iter()
                .map(|m| JsonMissing {
                    what: m.what.clone(),
                    platform: m.platform.clone(),
                })
                .collect(),
            seconds: i.elapsed.as_secs_f64(),
        }
    }
}

/// The RESULT cell: `ok`, `cached`, `failed`, `ready`, `missing N`.
fn result(i: &ImageOutcome, mode: Mode) -> String {
    let note = if i.not_offered.is_empty() {
        String::new()
    } else {
        format!(" (no {})", i.not_offered.join(","))
    };
    let word = match (mode, &i.error, i.missing.len()) {
        (_, Some(_), _) => "failed".to_string(),
        (Mode::Check, None, 0) => "ready".into(),
        (_, None, n) if n > 0 => format!("missing {n}"),
        (Mode::Warm, None, _) if i.downloaded == 0 => "cached".into(),
        (Mode::Warm, None, _) => "ok".into(),
        (Mode::Check, None, _) => "ready".into(),
    };
    format!("{word}{note}")
}

/// One line per finished image, for logs and the progress area.
pub fn line(i: &ImageOutcome, mode: Mode) -> String {
    format!(
        "{:<7} {} {} {} {} in {:.1}s",
        result(i, mode),
        i.group,
        i.image,
        human_bytes(i.size),
        i.platforms.join(","),
        i.elapsed.as_secs_f64()
    )
}
