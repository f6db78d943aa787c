//! Every load run second by second, as an SVG beside `bench-results.json`:
//! acknowledged messages/s on the left, send→delivery p99 on the right, a
//! row per run. A broker or a table that costs more as it fills shows as a
//! slope within a run.

use super::{LoadReport, SuiteReport};
use std::path::{Path, PathBuf};

/// Where the plot of the report written to `json` goes:
/// `bench-results.json` → `bench-results-per-second.svg`.
pub fn path_beside(json: &Path) -> PathBuf {
    let stem = json
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bench-results".into());
    json.with_file_name(format!("{stem}-per-second.svg"))
}

/// Draws every load run of `r` that has seconds to show; `false` if none
/// had (no file is written then).
pub fn plot(r: &SuiteReport, path: &Path) -> anyhow::Result<bool> {
    use plotters::prelude::*;
    let runs: Vec<&LoadReport> = r
        .echo
        .iter()
        .chain(&r.embedded)
        .chain(&r.distributed)
        .filter(|l| !l.per_second.is_empty())
        .collect();
    if runs.is_empty() {
        return Ok(false);
    }
    let rows = u32::try_from(runs.len()).unwrap_or(u32::MAX);
    let root = SVGBackend::new(path, (1400, 60 + 220 * rows)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(
        "make bench: each run second by second (x: seconds since its first send, warm-up included)",
        ("sans-serif", 20),
    )?;
    let panels = root.split_evenly((runs.len(), 2));
    for (run, pair) in runs.iter().zip(panels.chunks(2)) {
        let acked: Vec<(f64, f64)> = run
            .per_second
            .iter()
            .map(|p| (f64::from(p.second), p.acked as f64))
            .collect();
        let p99: Vec<(f64, f64)> = run
            .per_second
            .iter()
            .filter(|p| p.delivered > 0)
            .map(|p| (f64::from(p.second), p.delivery_p99_us as f64 / 1000.0))
            .collect();
        let end = run.per_second.len() as f64;
        for (panel, (what, points, color)) in pair.iter().zip([
            ("acknowledged/s", acked, BLUE),
            ("send->delivery p99, ms", p99, RED),
        ]) {
            let top = points.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 1.15;
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{}: {what}", run.label), ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(25)
                .y_label_area_size(60)
                .build_cartesian_2d(0.0..end.max(1.0), 0.0..top)?;
            chart.configure_mesh().light_line_style(WHITE).draw()?;
            chart.draw_series(LineSeries::new(points, color.stroke_width(2)))?;
        }
    }
    root.present()?;
    Ok(true)
}
