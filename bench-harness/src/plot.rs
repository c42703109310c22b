//! The latency percentile distribution as SVG, as HdrHistogram draws it:
//! x is the percentile on a 1/(1-p) log scale (50%, 90%, 99%, 99.9%, ...),
//! so the tail gets as much room as the body; y is latency. One line per
//! series, several runs on one chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::report::RunReport;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// The x axis spans at least to 99.999% and at most to 99.99999%.
const DECADES_MIN: f64 = 5.0;
const DECADES_MAX: f64 = 7.0;
const Y_TICKS_TARGET: f64 = 5.0;
const COLORS: &[&str] = &[
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line: `[percentile, latency_us]` points, percentile in 0..100.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Which {
    Produce,
    E2e,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// The SVG file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Only this latency of each run (default: every latency a run has).
    #[arg(long, value_enum)]
    pub latency: Option<Which>,
    /// Run reports written by `--json`.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
}

pub fn run(args: PlotArgs) -> anyhow::Result<()> {
    let reports = args
        .runs
        .iter()
        .map(|p| RunReport::read(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    write_plot(&args.out, &reports, args.latency)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The lines of a run: its produce and end-to-end latencies.
pub fn series_of(report: &RunReport, which: Option<Which>) -> Vec<Series> {
    let mut series = Vec::new();
    let both = report.produce_latency_us.is_some() && report.e2e_latency_us.is_some() && which.is_none();
    let mut push = |latency: &Option<crate::latency::LatencyReport>, kind: &str, w: Which| {
        if let Some(l) = latency
            && which.is_none_or(|x| x == w)
            && !l.distribution.is_empty()
        {
            let label = if both {
                format!("{} ({kind})", report.label)
            } else {
                report.label.clone()
            };
            series.push(Series {
                label,
                points: l.distribution.clone(),
            });
        }
    };
    push(&report.produce_latency_us, "produce", Which::Produce);
    push(&report.e2e_latency_us, "e2e", Which::E2e);
    series
}

pub fn write_plot(path: &Path, reports: &[RunReport], which: Option<Which>) -> anyhow::Result<()> {
    let series: Vec<Series> = reports.iter().flat_map(|r| series_of(r, which)).collect();
    let svg = render_svg(&series, "Latency by percentile");
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

/// Where percentile `p` (0..100) falls: decades of 1/(1-p).
fn decades(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(1e-12);
    -tail.log10()
}

/// A round step for about `Y_TICKS_TARGET` ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / Y_TICKS_TARGET).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The label of the x tick at `decade`: 0%, 90%, 99%, 99.9%, ...
fn percentile_label(decade: u32) -> String {
    match decade {
        0 => "0%".to_string(),
        1 => "90%".to_string(),
        d => format!("99.{}%", "9".repeat(d as usize - 2)).replace("99.%", "99%"),
    }
}

pub fn render_svg(series: &[Series], title: &str) -> String {
    let x_decades = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(p, _)| decades(p).ceil()))
        .fold(DECADES_MIN, f64::max)
        .min(DECADES_MAX);
    let y_max_ms = series
        .iter()
        .flat_map(|s| s.points.iter().map(|&(_, us)| us as f64 / 1e3))
        .fold(0.0, f64::max)
        .max(1e-3);
    let step = tick_step(y_max_ms);
    let y_top = (y_max_ms / step).ceil().max(1.0) * step;
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |p: f64| LEFT + decades(p).min(x_decades) / x_decades * plot_w;
    let y_of = |ms: f64| TOP + plot_h - ms / y_top * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axes.
    let mut x_ticks: Vec<(f64, String)> = (0..=x_decades as u32)
        .map(|d| (100.0 * (1.0 - 10f64.powi(-(d as i32))), percentile_label(d)))
        .collect();
    x_ticks.insert(1, (50.0, "50%".to_string()));
    for (p, label) in &x_ticks {
        let x = x_of(*p);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + plot_h + 18.0
        );
    }
    let mut tick = 0.0;
    while tick <= y_top + step / 2.0 {
        let y = y_of(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            y + 4.0,
            format_ms(tick, step)
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 18.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // One line and one legend entry per series.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|&&(p, _)| decades(p) <= x_decades)
            .map(|&(p, us)| format!("{:.1},{:.1}", x_of(p), y_of(us as f64 / 1e3)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/>"#,
            lx + 24.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            ly + 4.0,
            escape(&s.label)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn format_ms(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0}")
    } else if step >= 0.1 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample_report;

    /// Elements of `svg` as (name, attributes text, text content), checking
    /// that tags nest and close and that text has no bare `<` or `&`.
    fn elements(svg: &str) -> Vec<(String, String, String)> {
        let mut stack: Vec<String> = Vec::new();
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find('<') {
            let text = &rest[..open];
            assert!(!text.contains('>'), "bare > in text {text:?}");
            for (i, _) in text.match_indices('&') {
                let entity = &text[i..];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;"]
                        .iter()
                        .any(|e| entity.starts_with(e)),
                    "bare & in text {text:?}"
                );
            }
            if let Some(last) = out.last_mut()
                && !text.trim().is_empty()
            {
                let (_, _, t): &mut (String, String, String) = last;
                t.push_str(&text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"));
            }
            let close = rest[open..].find('>').expect("every tag closes") + open;
            let tag = &rest[open + 1..close];
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(stack.pop().as_deref(), Some(name), "tags nest");
            } else {
                let self_closing = tag.ends_with('/');
                let tag = tag.trim_end_matches('/');
                let (name, attributes) = tag.split_once(' ').unwrap_or((tag, ""));
                out.push((name.to_string(), attributes.to_string(), String::new()));
                if !self_closing {
                    stack.push(name.to_string());
                }
            }
            rest = &rest[close + 1..];
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
        assert!(rest.trim().is_empty());
        out
    }

    fn attribute<'a>(attributes: &'a str, name: &str) -> &'a str {
        let at = attributes.find(&format!("{name}=\"")).expect("attribute present") + name.len() + 2;
        let end = attributes[at..].find('"').expect("attribute closes") + at;
        &attributes[at..end]
    }

    #[test]
    fn the_chart_is_well_formed_svg_with_one_line_per_run() {
        let reports = [
            sample_report("produce", "a & <b>", 1000),
            sample_report("produce", "b", 3000),
            sample_report("produce", "c", 200),
        ];
        let series: Vec<Series> = reports.iter().flat_map(|r| series_of(r, None)).collect();
        let svg = render_svg(&series, "Latency by percentile");
        let elements = elements(&svg);
        assert_eq!(elements[0].0, "svg");
        let lines: Vec<_> = elements.iter().filter(|e| e.0 == "polyline").collect();
        assert_eq!(lines.len(), 3);
        for line in &lines {
            let coords: Vec<(f64, f64)> = attribute(&line.1, "points")
                .split(' ')
                .map(|xy| {
                    let (x, y) = xy.split_once(',').expect("x,y");
                    (x.parse().expect("number"), y.parse().expect("number"))
                })
                .collect();
            assert!(coords.len() > 10);
            // Left to right, and never down: latency rises with percentile.
            assert!(coords.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1));
            assert!(
                coords
                    .iter()
                    .all(|&(x, y)| (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y))
            );
        }
        let texts: Vec<&str> = elements
            .iter()
            .filter(|e| e.0 == "text")
            .map(|e| e.2.as_str())
            .collect();
        for label in ["50%", "90%", "99%", "99.9%", "99.99%", "99.999%", "a & <b>"] {
            assert!(texts.contains(&label), "missing {label} in {texts:?}");
        }
    }

    #[test]
    fn an_e2e_run_draws_produce_and_e2e_unless_told_which() {
        let report = sample_report("e2e", "run", 1000);
        assert_eq!(series_of(&report, None).len(), 2);
        let only = series_of(&report, Some(Which::E2e));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].label, "run");
    }

    #[test]
    fn x_ticks_are_labelled_by_percentile() {
        assert_eq!(percentile_label(0), "0%");
        assert_eq!(percentile_label(1), "90%");
        assert_eq!(percentile_label(2), "99%");
        assert_eq!(percentile_label(5), "99.999%");
        assert!((decades(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(tick_step(7.3), 2.0);
    }

    #[test]
    fn an_empty_chart_is_still_valid() {
        let svg = render_svg(&[], "none");
        assert_eq!(elements(&svg).iter().filter(|e| e.0 == "polyline").count(), 0);
    }
}
