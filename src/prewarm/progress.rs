//! Progress on stderr: indicatif bars (one per image, one overall: bytes, rate, ETA) on a
//! terminal; one plain line per finished image otherwise (CI logs, pipes).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

const IMAGE_TEMPLATE: &str =
    "{prefix:.bold} {wide_msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec}";
const OVERALL_TEMPLATE: &str =
    "{prefix:.bold} [{bar:30.green/white}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}";

pub struct Progress {
    bars: Option<Bars>,
}

struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
}

impl Progress {
    /// Bars when `terminal` (stderr is a TTY), else plain lines.
    pub fn new(terminal: bool) -> Progress {
        let bars = terminal.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let overall = multi.add(ProgressBar::new(0));
            overall.set_style(style(OVERALL_TEMPLATE));
            overall.set_prefix("total");
            Bars { multi, overall }
        });
        Progress { bars }
    }

    pub fn image(&self, label: &str) -> ImageProgress {
        match &self.bars {
            Some(bars) => {
                let bar = bars.multi.insert_before(&bars.overall, ProgressBar::new(0));
                bar.set_style(style(IMAGE_TEMPLATE));
                bar.set_message(label.to_string());
                ImageProgress {
                    bars: Some((bar, bars.overall.clone(), bars.multi.clone())),
                }
            }
            None => ImageProgress { bars: None },
        }
    }

    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.overall.finish_and_clear();
            let _ = bars.multi.clear();
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// One image's bar (or nothing, in line mode).
pub struct ImageProgress {
    bars: Option<(ProgressBar, ProgressBar, MultiProgress)>,
}

impl ImageProgress {
    pub fn add_total(&self, bytes: u64) {
        if let Some((bar, overall, _)) = &self.bars {
            bar.inc_length(bytes);
            overall.inc_length(bytes);
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some((bar, overall, _)) = &self.bars {
            bar.inc(bytes);
            overall.inc(bytes);
        }
    }

    /// Removes the bar and leaves `line` in its place (printed plainly without a terminal).
    pub fn done(&self, line: &str) {
        match &self.bars {
            Some((bar, _, multi)) => {
                bar.finish_and_clear();
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}
