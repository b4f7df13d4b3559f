//! The SVG plots of a sweep, drawn with plotters' SVG backend: `latency-<variant>.svg`
//! ([`plot_latency`]: prefill, decode step and total against the RTT, one line per
//! rate, the cost model's prediction dashed) and `bytes.svg` ([`plot_bytes`]: bytes
//! per generation of each variant, each direction). Both read [`Results`] only.

use super::report::{Point, Results};
use crate::lab::netem::format_rate;
use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// One colour per rate (and per direction in `bytes.svg`), in order.
const COLORS: [plotters::style::RGBColor; 6] = [
    plotters::style::RGBColor(31, 119, 180),
    plotters::style::RGBColor(214, 39, 40),
    plotters::style::RGBColor(44, 160, 44),
    plotters::style::RGBColor(148, 103, 189),
    plotters::style::RGBColor(255, 127, 14),
    plotters::style::RGBColor(23, 190, 207),
];

/// A plotters error as an `anyhow` one.
fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e}")
}

/// One panel of a latency plot: its title, the measured mean and the prediction.
type Series = (&'static str, fn(&Point) -> f64, fn(&Point) -> Option<f64>);

/// Latency vs RTT for one variant: prefill, per-token and total, one line per rate, the
/// cost model's prediction dashed.
pub(super) fn plot_latency(path: &Path, r: &Results, variant: &str) -> Result<()> {
    let pts: Vec<&Point> = r.points.iter().filter(|p| p.variant == variant && p.error.is_none()).collect();
    let mut rates: Vec<u64> = pts.iter().map(|p| p.rate_bps).collect();
    rates.sort_by(|a, b| b.cmp(a));
    rates.dedup();
    let xmin = pts.iter().map(|p| p.rtt_ms).fold(f64::INFINITY, f64::min).max(1e-3);
    let xmax = pts.iter().map(|p| p.rtt_ms).fold(0.0, f64::max).max(xmin * 1.01);
    let root = SVGBackend::new(path, (1500, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root
        .titled(&format!("{variant} on {}: latency vs RTT (one line per rate)", r.model), ("sans-serif", 20))
        .map_err(plot_err)?;
    let panels = root.split_evenly((1, 3));
    let series: [Series; 3] = [
        ("prefill (ms)", |p| p.prefill_ms.mean, |p| p.predicted_prefill_ms),
        ("per token, decode step (ms)", |p| p.decode_step_ms.mean, |p| p.predicted_decode_step_ms),
        ("total per generation (ms)", |p| p.total_ms.mean, |p| p.predicted_total_ms),
    ];
    for (panel, series) in panels.iter().zip(series) {
        latency_panel(panel, series, &pts, &rates, (xmin, xmax))?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// One panel of [`plot_latency`]: for each rate, the measured line with its points and
/// the predicted line, dashed; the legend in the upper left.
fn latency_panel(
    panel: &DrawingArea<SVGBackend<'_>, Shift>,
    (title, get, predicted): Series,
    pts: &[&Point],
    rates: &[u64],
    (xmin, xmax): (f64, f64),
) -> Result<()> {
    let ymax =
        pts.iter().map(|p| get(p).max(predicted(p).unwrap_or(0.0))).fold(0.0, f64::max).max(1e-3) * 1.1;
    let mut chart = ChartBuilder::on(panel)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xmin * 0.8..xmax * 1.25).log_scale(), 0f64..ymax)
        .map_err(plot_err)?;
    chart.configure_mesh().x_desc("RTT (ms, log)").y_desc("ms").draw().map_err(plot_err)?;
    for (k, rate) in rates.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let mut line: Vec<(f64, f64)> =
            pts.iter().filter(|p| p.rate_bps == *rate).map(|p| (p.rtt_ms, get(p))).collect();
        line.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format_rate(*rate))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
            .map_err(plot_err)?;
        {
            let mut pred: Vec<(f64, f64)> = pts
                .iter()
                .filter(|p| p.rate_bps == *rate)
                .filter_map(|p| predicted(p).map(|y| (p.rtt_ms, y)))
                .collect();
            pred.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(DashedLineSeries::new(pred, 6, 4, color.stroke_width(1)))
                .map_err(plot_err)?
                .label(format!("{} predicted", format_rate(*rate)))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 8, y)], color.stroke_width(1)));
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Bytes per generation for each variant, each direction.
pub(super) fn plot_bytes(path: &Path, r: &Results) -> Result<()> {
    let models = &r.cost_models;
    let bars: Vec<(String, f64, f64)> = models
        .iter()
        .map(|m| {
            let p = r.points.iter().find(|p| p.variant == m.variant && p.error.is_none());
            (
                m.variant.clone(),
                p.map_or(0.0, |p| p.bytes_sent as f64 / 1e6),
                p.map_or(0.0, |p| p.bytes_received as f64 / 1e6),
            )
        })
        .collect();
    let ymax = bars.iter().map(|b| b.1.max(b.2)).fold(0.0, f64::max).max(1e-6) * 1.2;
    let root = SVGBackend::new(path, (300 + 160 * bars.len() as u32, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("bytes per generation on {} (MB)", r.model), ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(bars.len() as f64 - 0.5), 0f64..ymax)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("MB")
        .draw()
        .map_err(plot_err)?;
    for (k, (label, pick)) in [("client to server", 0usize), ("server to client", 1)].into_iter().enumerate()
    {
        let color = COLORS[k];
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let y = if pick == 0 { b.1 } else { b.2 };
                let x0 = i as f64 - 0.35 + 0.35 * k as f64;
                Rectangle::new([(x0, 0.0), (x0 + 0.33, y)], color.filled())
            }))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}
