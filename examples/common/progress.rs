//! The progress bar of the long-running examples (`headless`, `mining_colony`): ticks done, a
//! rate with one decimal, and an ETA only once there is a rate worth projecting.

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// Ticks before the ETA is shown: the first ticks (spawning, caches filling) say nothing
/// about the rest of the run.
const ETA_AFTER_TICKS: u64 = 20;

/// A bar over `ticks` ticks.
pub fn progress_bar(ticks: u64) -> ProgressBar {
    let bar = ProgressBar::new(ticks);
    bar.set_style(
        ProgressStyle::with_template("{spinner} tick {pos}/{len} [{bar:40}] {rate} eta {eta_after_warmup}")
            .expect("static template")
            .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} ticks/s", s.per_sec());
            })
            .with_key("eta_after_warmup", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                if s.pos() < ETA_AFTER_TICKS || s.elapsed().as_secs_f64() < 1.0 {
                    let _ = w.write_str("…");
                } else {
                    let secs = s.eta().as_secs();
                    let _ = write!(w, "{}:{:02}", secs / 60, secs % 60);
                }
            })
            .progress_chars("=> "),
    );
    bar
}
