//! The completion-time CDF as an SVG (plotters' SVG backend): the swarm, both baselines, the
//! Kumar–Ross bound as a vertical line, and the anchor's published percentiles as short marks.
//! The x axis is logarithmic, since a registry serving a large fleet takes orders of magnitude
//! longer than the swarm.

use plotters::prelude::*;

use crate::SimError;
use crate::report::Report;

/// The steps of an empirical CDF over the stayers (a host that never finished keeps it
/// below 1).
fn cdf(times: impl Iterator<Item = (Option<f64>, bool)>) -> Vec<(f64, f64)> {
    let mut done = Vec::new();
    let mut n = 0usize;
    for (t, left) in times {
        if left {
            continue;
        }
        n += 1;
        if let Some(t) = t {
            done.push(t);
        }
    }
    done.sort_by(f64::total_cmp);
    let mut pts = Vec::with_capacity(done.len() * 2);
    for (i, &t) in done.iter().enumerate() {
        pts.push((t, i as f64 / n as f64));
        pts.push((t, (i + 1) as f64 / n as f64));
    }
    pts
}

fn plot_err(e: impl std::fmt::Display) -> SimError {
    SimError::Plot(e.to_string())
}

/// Renders the CDF of `report` as an SVG document.
pub fn svg(report: &Report) -> Result<String, SimError> {
    let rows = &report.hosts;
    let swarm = cdf(rows.iter().map(|h| (h.swarm_s, h.left)));
    let registry = cdf(rows.iter().map(|h| (h.registry_s, h.left)));
    let peer = cdf(rows.iter().map(|h| (h.whole_blob_peer_s, h.left)));
    let all = swarm.iter().chain(&registry).chain(&peer).map(|p| p.0);
    let lo = all
        .clone()
        .chain([report.bound_s])
        .filter(|&x| x > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = all.chain([report.bound_s]).fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > 0.0 {
        (lo / 1.5, hi * 1.5)
    } else {
        (0.1, 10.0)
    };
    let mut doc = String::new();
    {
        let root = SVGBackend::with_string(&mut doc, (960, 600)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let title = format!(
            "{}: completion-time CDF, {} hosts (bound T = {:.2} s)",
            report.scenario, report.nodes, report.bound_s
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds from the host's start (log scale)")
            .y_desc("fraction of hosts done")
            .draw()
            .map_err(plot_err)?;
        type Series<'a> = (&'a str, &'a Vec<(f64, f64)>, RGBColor);
        let series: [Series; 3] = [
            ("flotilla swarm", &swarm, RGBColor(0x1f, 0x77, 0xb4)),
            ("registry only", &registry, RGBColor(0xd6, 0x27, 0x28)),
            (
                "whole blob from one peer (Spegel)",
                &peer,
                RGBColor(0x2c, 0xa0, 0x2c),
            ),
        ];
        for (name, pts, color) in series {
            if pts.is_empty() {
                continue;
            }
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        let bound = report.bound_s;
        if bound > 0.0 {
            let black = RGBColor(0, 0, 0);
            chart
                .draw_series(LineSeries::new(
                    [(bound, 0.0), (bound, 1.0)],
                    black.stroke_width(1),
                ))
                .map_err(plot_err)?
                .label("Kumar–Ross bound")
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], black));
        }
        if let Some(p) = &report.published {
            let orange = RGBColor(0xff, 0x7f, 0x0e);
            let marks = [(p.p50_s, 0.5), (p.p99_s, 0.99), (p.p999_s, 0.999)];
            for (i, (x, y)) in marks.into_iter().enumerate() {
                let s = chart
                    .draw_series(LineSeries::new(
                        [(x / 1.04, y), (x * 1.04, y)],
                        orange.stroke_width(4),
                    ))
                    .map_err(plot_err)?;
                if i == 0 {
                    s.label(p.source.clone()).legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(4))
                    });
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(doc)
}
