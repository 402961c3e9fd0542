//! The results table (medians, spread, ratios, targets) and the SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::common::{Res, median};
use crate::sides::Side;
use crate::workloads::Layout;

/// A target from the issue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// tchu/raw ≥ x.
    RatioAtLeast(f64),
    /// tchu/raw ≤ x.
    RatioAtMost(f64),
    /// tchu's value ≤ x (absolute).
    AtMost(f64),
}

/// One row of the table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) workload: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) target: Option<Target>,
}

pub(crate) const ROWS: &[Row] = &[
    Row {
        key: "publish_seq",
        workload: "1 publish, 1 task (confirm awaited each)",
        metric: "events/s",
        target: Some(Target::RatioAtLeast(0.9)),
    },
    Row {
        key: "publish_conc",
        workload: "1 publish, 64 tasks",
        metric: "events/s",
        target: Some(Target::RatioAtLeast(0.9)),
    },
    Row {
        key: "e2e",
        workload: "2 end-to-end, 1 service",
        metric: "events/s",
        target: Some(Target::RatioAtLeast(0.9)),
    },
    Row {
        key: "paced_p50",
        workload: "3 paced 1,000/s",
        metric: "p50 ms",
        target: Some(Target::RatioAtMost(1.2)),
    },
    Row {
        key: "paced_p95",
        workload: "3 paced 1,000/s",
        metric: "p95 ms",
        target: None,
    },
    Row {
        key: "paced_p99",
        workload: "3 paced 1,000/s",
        metric: "p99 ms",
        target: Some(Target::RatioAtMost(1.5)),
    },
    Row {
        key: "rpc_p50",
        workload: "4 RPC sequential",
        metric: "p50 ms",
        target: Some(Target::RatioAtMost(1.2)),
    },
    Row {
        key: "rpc_p95",
        workload: "4 RPC sequential",
        metric: "p95 ms",
        target: None,
    },
    Row {
        key: "rpc_p99",
        workload: "4 RPC sequential",
        metric: "p99 ms",
        target: None,
    },
    Row {
        key: "rpc_seq",
        workload: "4 RPC sequential",
        metric: "calls/s",
        target: None,
    },
    Row {
        key: "rpc_conc",
        workload: "4 RPC, 16 callers",
        metric: "calls/s",
        target: Some(Target::RatioAtLeast(0.9)),
    },
    Row {
        key: "fanout",
        workload: "5 fan-out to 4 services",
        metric: "events/s",
        target: None,
    },
    Row {
        key: "cpu_pub_conc",
        workload: "1 publish, 64 tasks: CPU of the publishing process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_all_e2e",
        workload: "2 end-to-end: CPU of the one process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_pub_e2e",
        workload: "2 end-to-end: CPU of the publisher process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_svc_e2e",
        workload: "2 end-to-end: CPU of the service process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_all_rpc",
        workload: "4 RPC (all calls): CPU of the one process",
        metric: "µs/call",
        target: None,
    },
    Row {
        key: "cpu_caller_rpc",
        workload: "4 RPC (all calls): CPU of the caller process",
        metric: "µs/call",
        target: None,
    },
    Row {
        key: "cpu_resp_rpc",
        workload: "4 RPC (all calls): CPU of the responder process",
        metric: "µs/call",
        target: None,
    },
    Row {
        key: "cpu_all_fan",
        workload: "5 fan-out: CPU of the one process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_pub_fan",
        workload: "5 fan-out: CPU of the publisher process",
        metric: "µs/event",
        target: None,
    },
    Row {
        key: "cpu_svc_fan",
        workload: "5 fan-out: CPU of a service process (mean of 4)",
        metric: "µs/delivery",
        target: None,
    },
    Row {
        key: "rss_idle",
        workload: "6 memory, idle service",
        metric: "RSS MB",
        target: Some(Target::AtMost(20.0)),
    },
    Row {
        key: "rss_peak",
        workload: "6 memory, peak under workload 2",
        metric: "VmHWM MB",
        target: None,
    },
];

/// All samples: (row key, side, layout) → one value per repetition.
pub(crate) type Samples = BTreeMap<(&'static str, Side, Layout), Vec<f64>>;

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "–".to_owned()
    } else if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(samples: &Samples, key: &'static str, side: Side, layout: Layout) -> Option<(f64, String)> {
    let v = samples.get(&(key, side, layout))?;
    let med = median(v);
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let s = if v.len() > 1 {
        format!("{} ({}–{})", fmt_num(med), fmt_num(min), fmt_num(max))
    } else {
        fmt_num(med)
    };
    Some((med, s))
}

/// A cell as shown: the median with its spread, or a dash when not measured.
fn show(c: &Option<(f64, String)>) -> String {
    c.as_ref().map_or("–".to_owned(), |c| c.1.clone())
}

/// Whether a target was met, as the tables say it.
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

fn verdict(target: Target, tchu: f64, raw: f64) -> String {
    let ratio = tchu / raw;
    match target {
        Target::RatioAtLeast(x) => {
            format!("≥ {x}×: {}", met(ratio >= x))
        }
        Target::RatioAtMost(x) => {
            format!("≤ {x}×: {}", met(ratio <= x))
        }
        Target::AtMost(x) => format!("≤ {x}: {}", met(tchu <= x)),
    }
}

/// The markdown table of one layout. Ratios are of the medians: tchu Celery / raw lapin,
/// tchu Celery / raw lapin with Celery bytes (the framework's cost), raw lapin with Celery bytes
/// / raw lapin (the format's cost), tchu native / raw lapin.
pub(crate) fn table(samples: &Samples, layout: Layout) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | metric | raw lapin | raw lapin, Celery bytes | ratio Celery bytes / raw | tchu Celery | ratio | ratio to Celery bytes | tchu native | ratio | target (Celery / native) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    // Memory is measured once per run, under the run's primary layout.
    for row in ROWS {
        let raw = cell(samples, row.key, Side::Raw, layout);
        let rawc = cell(samples, row.key, Side::RawCelery, layout);
        let cel = cell(samples, row.key, Side::Celery, layout);
        let nat = cell(samples, row.key, Side::Native, layout);
        if raw.is_none() && rawc.is_none() && cel.is_none() && nat.is_none() {
            continue;
        }
        let ratio_to = |t: &Option<(f64, String)>, base: &Option<(f64, String)>| match (t, base) {
            (Some((t, _)), Some((r, _))) => format!("{:.2}", t / r),
            _ => "–".to_owned(),
        };
        let ratio = |t: &Option<(f64, String)>| ratio_to(t, &raw);
        let targ = match (row.target, &raw) {
            (Some(t), Some((r, _))) => {
                let parts: Vec<String> = [&cel, &nat]
                    .into_iter()
                    .map(|x| {
                        x.as_ref()
                            .map_or("–".to_owned(), |(v, _)| verdict(t, *v, *r))
                    })
                    .collect();
                parts.join(" / ")
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.metric,
            show(&raw),
            show(&rawc),
            ratio(&rawc),
            show(&cel),
            ratio(&cel),
            ratio_to(&cel, &rawc),
            show(&nat),
            ratio(&nat),
            targ
        );
    }
    out
}

/// A row of the tchu vs tchu-tchu table.
#[derive(Debug)]
struct VsRow {
    /// tchu's row key (Celery format).
    tchu: &'static str,
    /// tchu-tchu's row key.
    tt: &'static str,
    workload: &'static str,
    metric: &'static str,
    /// Throughput (advantage = tchu / tchu-tchu) or a cost (advantage = tchu-tchu / tchu).
    higher_better: bool,
    /// The target on the advantage.
    target: Option<f64>,
}

const VS_ROWS: &[VsRow] = &[
    VsRow {
        tchu: "e2e",
        tt: "e2e",
        workload: "2 end-to-end, 1 service",
        metric: "events/s",
        higher_better: true,
        target: Some(30.0),
    },
    VsRow {
        tchu: "publish_conc",
        tt: "py_publish",
        workload: "publish (tchu: workload 1, 64 tasks, confirms; tchu-tchu: in workload 2, 1 thread, no confirms)",
        metric: "events/s",
        higher_better: true,
        target: None,
    },
    VsRow {
        tchu: "paced_p50",
        tt: "paced_p50",
        workload: "3 paced (tchu 1,000/s; tchu-tchu lower rate)",
        metric: "p50 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "paced_p95",
        tt: "paced_p95",
        workload: "3 paced (tchu 1,000/s; tchu-tchu lower rate)",
        metric: "p95 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "paced_p99",
        tt: "paced_p99",
        workload: "3 paced (tchu 1,000/s; tchu-tchu lower rate)",
        metric: "p99 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "rpc_p50",
        tt: "rpc_p50",
        workload: "4 RPC sequential",
        metric: "p50 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "rpc_p95",
        tt: "rpc_p95",
        workload: "4 RPC sequential",
        metric: "p95 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "rpc_p99",
        tt: "rpc_p99",
        workload: "4 RPC sequential",
        metric: "p99 ms",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "rpc_seq",
        tt: "rpc_seq",
        workload: "4 RPC sequential",
        metric: "calls/s",
        higher_better: true,
        target: Some(5.0),
    },
    VsRow {
        tchu: "rpc_conc",
        tt: "rpc_conc",
        workload: "4 RPC concurrent (tchu 16 tasks, tchu-tchu threads)",
        metric: "calls/s",
        higher_better: true,
        target: None,
    },
    VsRow {
        tchu: "rss_idle",
        tt: "rss_idle",
        workload: "6 memory, idle service (tchu-tchu: sum over the worker's 3 processes)",
        metric: "RSS MB",
        higher_better: false,
        target: None,
    },
    VsRow {
        tchu: "rss_peak",
        tt: "rss_peak",
        workload: "6 memory, peak under workload 2 (tchu: VmHWM; tchu-tchu: largest sum of VmRSS, sampled every 50 ms)",
        metric: "MB",
        higher_better: false,
        target: None,
    },
];

/// tchu (Celery format, in `layout`) against tchu-tchu: medians and how many times better tchu
/// is.
pub(crate) fn versus_table(samples: &Samples, layout: Layout) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | metric | tchu Celery | tchu-tchu | tchu better by | target |\n\
         |---|---|---|---|---|---|\n",
    );
    for row in VS_ROWS {
        let t = cell(samples, row.tchu, Side::Celery, layout);
        let p = cell(samples, row.tt, Side::TchuTchu, layout);
        if p.is_none() {
            continue;
        }
        let adv = match (&t, &p) {
            (Some((t, _)), Some((p, _))) => Some(if row.higher_better { t / p } else { p / t }),
            _ => None,
        };
        let targ = match (row.target, adv) {
            (Some(x), Some(a)) => format!("≥ {x}×: {}", met(a >= x)),
            (Some(x), None) => format!("≥ {x}×"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            row.workload,
            row.metric,
            show(&t),
            show(&p),
            adv.map_or("–".to_owned(), |a| format!("{a:.1}×")),
            targ
        );
    }
    out
}

const SIDES: [Side; 5] = [
    Side::Raw,
    Side::RawCelery,
    Side::Celery,
    Side::Native,
    Side::TchuTchu,
];

fn side_color(s: Side) -> RGBColor {
    match s {
        Side::Raw => RGBColor(90, 90, 90),
        Side::RawCelery => RGBColor(170, 170, 170),
        Side::Celery => RGBColor(214, 96, 77),
        Side::Native => RGBColor(67, 147, 195),
        Side::TchuTchu => RGBColor(120, 170, 90),
    }
}

/// Grouped bars of one panel; `log` for latencies.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    samples: &Samples,
    title: &str,
    (groups, layout): (&[(&'static str, &str)], Layout),
    y_desc: &str,
    scale: f64,
    log: bool,
) -> Res<()> {
    let value = |k: &'static str, s: Side| samples.get(&(k, s, layout)).map(|v| median(v) * scale);
    // Only the sides measured in this panel (bars and legend).
    let sides: Vec<Side> = SIDES
        .into_iter()
        .filter(|s| groups.iter().any(|(k, _)| value(k, *s).is_some()))
        .collect();
    let vals: Vec<f64> = groups
        .iter()
        .flat_map(|(k, _)| sides.iter().filter_map(move |s| value(k, *s)))
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if vals.is_empty() {
        // Nothing measured here (e.g. --sides tchu-tchu without a venv): no axes to draw.
        area.titled(&format!("{title}: nothing measured"), ("sans-serif", 18))?;
        return Ok(());
    }
    let max = vals.iter().copied().fold(0.0, f64::max).max(1e-3);
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let n = groups.len() as f64;
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60);
    let bars = Bars {
        sides: &sides,
        groups,
        value,
        y_desc,
    };
    if log {
        let lo = (min / 2.0).max(1e-3);
        let hi = max * 2.0;
        let chart = builder.build_cartesian_2d(0f64..n, (lo..hi).log_scale())?;
        bars.draw(chart, lo, SeriesLabelPosition::UpperLeft)
    } else {
        let chart = builder.build_cartesian_2d(0f64..n, 0f64..max * 1.15)?;
        bars.draw(chart, 0.0, SeriesLabelPosition::UpperRight)
    }
}

/// What a panel shows: one bar per group and side, of height `value(group key, side)`.
struct Bars<'p, V> {
    sides: &'p [Side],
    groups: &'p [(&'static str, &'p str)],
    value: V,
    y_desc: &'p str,
}

impl<V: Fn(&'static str, Side) -> Option<f64>> Bars<'_, V> {
    /// Draws the mesh, the bars (from `base` up), the group names under them and the legend at
    /// `legend`, on a y axis `Y` (linear or log scale).
    fn draw<'a, Y>(
        &self,
        mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
        base: f64,
        legend: SeriesLabelPosition,
    ) -> Res<()>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let &Bars {
            sides,
            groups,
            ref value,
            y_desc,
        } = self;
        let bar_w = 0.8 / sides.len().max(1) as f64;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_desc(y_desc)
            .draw()?;
        for (si, side) in sides.iter().enumerate() {
            let bars: Vec<Rectangle<(f64, f64)>> = groups
                .iter()
                .enumerate()
                .filter_map(|(i, (k, _))| {
                    let v = value(k, *side)?;
                    let x0 = i as f64 + 0.1 + bar_w * si as f64;
                    Some(Rectangle::new(
                        [(x0, base), (x0 + bar_w, v)],
                        side_color(*side).filled(),
                    ))
                })
                .collect();
            let c = side_color(*side);
            chart
                .draw_series(bars)?
                .label(side.label())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], c.filled()));
        }
        chart.draw_series(groups.iter().enumerate().map(|(i, (_, name))| {
            EmptyElement::at((i as f64 + 0.5, base))
                + Text::new(
                    (*name).to_owned(),
                    (-30, 8),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )
        }))?;
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(legend)
            .draw()?;
        Ok(())
    }
}

/// Writes the SVG: latency percentiles (log scale) and throughput, raw vs tchu, one row of
/// panels per layout.
pub(crate) fn plot(samples: &Samples, layouts: &[Layout], path: &Path) -> Res<()> {
    const ROW: u32 = 520;
    let rows = u32::try_from(layouts.len().max(1))?;
    let root = SVGBackend::new(path, (1400, ROW * rows)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((layouts.len().max(1), 1));
    for (area, &layout) in areas.iter().zip(layouts) {
        let (left, right) = area.split_horizontally(640);
        let tag = layout.label();
        panel(
            &left,
            samples,
            &format!("Latency, layout {tag} (median of runs), ms, log scale"),
            (
                &[
                    ("paced_p50", "paced p50"),
                    ("paced_p95", "paced p95"),
                    ("paced_p99", "paced p99"),
                    ("rpc_p50", "RPC p50"),
                    ("rpc_p95", "RPC p95"),
                    ("rpc_p99", "RPC p99"),
                ],
                layout,
            ),
            "ms",
            1.0,
            true,
        )?;
        panel(
            &right,
            samples,
            &format!("Throughput, layout {tag} (median of runs), thousands per second"),
            (
                &[
                    ("publish_seq", "pub 1 task"),
                    ("publish_conc", "pub 64 tasks"),
                    ("e2e", "end-to-end"),
                    ("fanout", "fan-out x4"),
                    ("rpc_seq", "RPC 1 caller"),
                    ("rpc_conc", "RPC 16 callers"),
                ],
                layout,
            ),
            "k/s",
            1e-3,
            false,
        )?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_table_per_layout_with_the_ratio_columns() {
        let mut s = Samples::new();
        s.insert(("e2e", Side::Raw, Layout::Split), vec![100.0]);
        s.insert(("e2e", Side::RawCelery, Layout::Split), vec![80.0]);
        s.insert(("e2e", Side::Celery, Layout::Split), vec![72.0]);
        s.insert(("e2e", Side::Raw, Layout::Same), vec![50.0]);
        let split = table(&s, Layout::Split);
        // raw-celery / raw, tchu Celery / raw, tchu Celery / raw-celery.
        assert!(
            split.contains("| 80.00 | 0.80 | 72.00 | 0.72 | 0.90 |"),
            "{split}"
        );
        let same = table(&s, Layout::Same);
        assert!(same.contains("| 50.00 | – |"), "{same}");
        assert!(!same.contains("72.00"), "{same}");
    }
}
