//! Progress bars for long work: shown on a terminal, hidden when asked or when output is piped.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-counting bar with throughput and ETA; hidden unless `visible`.
pub fn bytes_bar(total: u64, message: &str, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), draw_target(visible));
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// An item-counting bar with rate and ETA; hidden unless `visible`.
pub fn items_bar(total: u64, message: &str, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), draw_target(visible));
    bar.set_style(
        ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

fn draw_target(visible: bool) -> ProgressDrawTarget {
    if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
