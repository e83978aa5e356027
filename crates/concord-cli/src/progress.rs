//! Progress bars on stderr (hidden when stderr is not a terminal or `CONCORD_PROGRESS=0`).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar counting tokens, with a rate and an ETA when the total is known.
#[derive(Debug)]
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn tokens(total: Option<u64>, what: &str) -> Progress {
        Progress::with(
            total,
            what,
            "{prefix} [{bar:30}] {human_pos}/{human_len} tokens  {per_sec}  eta {eta}  {msg}",
            "{prefix} {spinner} {human_pos} tokens  {per_sec}  {msg}",
        )
    }

    /// A bar never drawn (small downloads).
    pub fn hidden() -> Progress {
        Progress {
            bar: ProgressBar::hidden(),
        }
    }

    /// A bar counting bytes (a download), with a rate and an ETA when the size is known.
    pub fn bytes(total: Option<u64>, what: &str) -> Progress {
        Progress::with(
            total,
            what,
            "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes}  {binary_bytes_per_sec}  eta {eta}",
            "{prefix} {spinner} {binary_bytes}  {binary_bytes_per_sec}",
        )
    }

    /// A bar with `known` as its template when the total is known, else a spinner with `open`.
    fn with(total: Option<u64>, what: &str, known: &str, open: &str) -> Progress {
        let bar = if !crate::show_progress() {
            ProgressBar::hidden()
        } else if let Some(t) = total {
            ProgressBar::new(t)
        } else {
            ProgressBar::new_spinner()
        };
        let template = if total.is_some() { known } else { open };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_owned());
        Progress { bar }
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    pub fn message(&self, msg: String) {
        self.bar.set_message(msg);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
