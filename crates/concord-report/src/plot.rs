//! Figures rendered to SVG strings with plotters (no fonts needed: SVG text is laid out by the
//! browser, plotters only estimates sizes).

use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::{Error, Result};

const WIDTH: u32 = 720;
const HEIGHT: u32 = 460;

/// A colour per series, distinguishable and print-friendly (Okabe-Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

fn plot_err(figure: &str) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::Plot {
        figure: figure.to_owned(),
        reason,
    }
}

/// Renders into an SVG string with `draw` and returns the document.
fn render<F>(title: &str, size: (u32, u32), draw: F) -> Result<String>
where
    F: FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
{
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .map_err(plot_err(title))?;
        draw(&root).map_err(plot_err(title))?;
        root.present()
            .map_err(|e| e.to_string())
            .map_err(plot_err(title))?;
    }
    Ok(svg)
}

/// A matrix of values with row and column labels (e.g. pairwise MMCS between SAE sizes).
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// `values[row][col]`; `None` leaves the cell blank.
    pub values: Vec<Vec<Option<f64>>>,
    /// The value range the colour scale spans.
    pub range: (f64, f64),
    pub x_label: String,
    pub y_label: String,
}

/// Renders a heatmap with the value printed in each cell.
pub fn heatmap(h: &Heatmap) -> Result<String> {
    let (rows, cols) = (h.row_labels.len(), h.col_labels.len());
    if rows == 0 || cols == 0 || h.values.len() != rows || h.values.iter().any(|r| r.len() != cols)
    {
        return Err(Error::Empty {
            figure: h.title.clone(),
        });
    }
    let (lo, hi) = h.range;
    let side = (60 * cols as u32 + 160).clamp(360, WIDTH);
    render(
        &h.title,
        (side, (50 * rows as u32 + 140).clamp(300, 620)),
        |root| {
            let mut chart = ChartBuilder::on(root)
                .caption(&h.title, ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(90)
                .build_cartesian_2d(
                    // A segmented range `0..n` has n + 1 segments: stop one short.
                    (0..cols as i32 - 1).into_segmented(),
                    (0..rows as i32 - 1).into_segmented(),
                )
                .map_err(|e| e.to_string())?;
            let label = |labels: &[String], v: &SegmentValue<i32>| match v {
                SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            };
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(cols)
                .y_labels(rows)
                .x_desc(&h.x_label)
                .y_desc(&h.y_label)
                .x_label_formatter(&|v| label(&h.col_labels, v))
                .y_label_formatter(&|v| match v {
                    // Row 0 is drawn at the top, as in a table.
                    SegmentValue::CenterOf(i) => {
                        label(&h.row_labels, &SegmentValue::CenterOf(rows as i32 - 1 - i))
                    }
                    _ => String::new(),
                })
                .draw()
                .map_err(|e| e.to_string())?;
            for (r, row) in h.values.iter().enumerate() {
                // Row 0 at the top, as in a table.
                let y = (rows - 1 - r) as i32;
                for (c, v) in row.iter().enumerate() {
                    let Some(v) = v else { continue };
                    let t = if hi > lo {
                        ((v - lo) / (hi - lo)).clamp(0.0, 1.0)
                    } else {
                        0.5
                    };
                    let fill = ViridisRGB::get_color(t);
                    let cell = [
                        (SegmentValue::Exact(c as i32), SegmentValue::Exact(y)),
                        (
                            SegmentValue::Exact(c as i32 + 1),
                            SegmentValue::Exact(y + 1),
                        ),
                    ];
                    chart
                        .draw_series(std::iter::once(Rectangle::new(cell, fill.filled())))
                        .map_err(|e| e.to_string())?;
                    let ink = if t > 0.6 { BLACK } else { WHITE };
                    let text = Text::new(
                        format!("{v:.2}"),
                        (SegmentValue::CenterOf(c as i32), SegmentValue::CenterOf(y)),
                        ("sans-serif", 13).into_font().color(&ink).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    );
                    chart
                        .draw_series(std::iter::once(text))
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        },
    )
}

/// One line of a line chart, with an optional band (e.g. a 95 % interval).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// `(x, lo, hi)`.
    pub band: Vec<(f64, f64, f64)>,
    pub dashed: bool,
}

/// Lines against a shared x axis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Plot x on a log2 axis (dictionary ratios).
    pub log2_x: bool,
    pub y_range: Option<(f64, f64)>,
}

fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values
        .filter(|v| v.is_finite())
        .fold(None, |acc, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        })
}

fn pad((lo, hi): (f64, f64)) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-3);
    (lo - 0.05 * span, hi + 0.05 * span)
}

/// Renders a line chart with markers, bands and a legend.
pub fn lines(c: &LineChart) -> Result<String> {
    let xs = |s: &Series| {
        s.points
            .iter()
            .map(|p| p.0)
            .chain(s.band.iter().map(|b| b.0))
            .collect::<Vec<_>>()
    };
    let tx = |x: f64| if c.log2_x { x.log2() } else { x };
    let (x_lo, x_hi) =
        extent(c.series.iter().flat_map(xs).map(tx)).ok_or_else(|| Error::Empty {
            figure: c.title.clone(),
        })?;
    let y_range = c.y_range.unwrap_or_else(|| {
        pad(extent(c.series.iter().flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
        }))
        .unwrap_or((0.0, 1.0)))
    });
    let log2_x = c.log2_x;
    render(&c.title, (WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&c.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(
                pad((x_lo, x_hi)).0..pad((x_lo, x_hi)).1,
                y_range.0..y_range.1,
            )
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc(&c.x_label)
            .y_desc(&c.y_label)
            .x_label_formatter(&|v| {
                if log2_x {
                    format!("{}", 2f64.powf(*v).round())
                } else {
                    format!("{v:.3}")
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, s) in c.series.iter().enumerate() {
            let col = color(i);
            if !s.band.is_empty() {
                let mut poly: Vec<(f64, f64)> = s.band.iter().map(|b| (tx(b.0), b.2)).collect();
                poly.extend(s.band.iter().rev().map(|b| (tx(b.0), b.1)));
                chart
                    .draw_series(std::iter::once(Polygon::new(poly, col.mix(0.18).filled())))
                    .map_err(|e| e.to_string())?;
            }
            let pts: Vec<(f64, f64)> = s.points.iter().map(|p| (tx(p.0), p.1)).collect();
            let style = ShapeStyle {
                color: col.to_rgba(),
                filled: false,
                stroke_width: 2,
            };
            let drawn = if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))
                    .map_err(|e| e.to_string())?
            } else {
                chart
                    .draw_series(LineSeries::new(pts.clone(), style))
                    .map_err(|e| e.to_string())?
            };
            drawn.label(&s.name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], col.stroke_width(2))
            });
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, col.filled())))
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// One bar of a grouped bar chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar {
    /// The series the bar belongs to (its colour and legend entry).
    pub series: String,
    pub value: f64,
    /// A 95 % interval drawn as an error bar.
    pub interval: Option<(f64, f64)>,
}

/// Grouped bars (e.g. per layer: paired SAEs next to their nulls).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `(group label, bars)`.
    pub groups: Vec<(String, Vec<Bar>)>,
}

/// Renders grouped bars with error bars and a legend.
pub fn bars(b: &BarChart) -> Result<String> {
    let mut series: Vec<&str> = Vec::new();
    for bar in b.groups.iter().flat_map(|g| &g.1) {
        if !series.contains(&bar.series.as_str()) {
            series.push(&bar.series);
        }
    }
    if series.is_empty() {
        return Err(Error::Empty {
            figure: b.title.clone(),
        });
    }
    let y_max = extent(
        b.groups
            .iter()
            .flat_map(|g| &g.1)
            .flat_map(|bar| [bar.value, bar.interval.map_or(bar.value, |i| i.1)]),
    )
    .map_or(1.0, |e| e.1.max(0.0) * 1.15 + 1e-3);
    let y_min = extent(b.groups.iter().flat_map(|g| &g.1).map(|bar| bar.value))
        .map_or(0.0, |e| e.0.min(0.0) * 1.15);
    let n = b.groups.len();
    let width = 1.0 / (series.len() as f64 + 1.0);
    render(&b.title, (WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&b.title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..n as f64, y_min..y_max)
            .map_err(|e| e.to_string())?;
        let labels: Vec<String> = b.groups.iter().map(|g| g.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|v| {
                let i = (v - 0.5).round();
                if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .x_desc(&b.x_label)
            .y_desc(&b.y_label)
            .draw()
            .map_err(|e| e.to_string())?;
        for (si, name) in series.iter().enumerate() {
            let col = color(si);
            // This series' bars: (group index, bar).
            let mine: Vec<(usize, &Bar)> = b
                .groups
                .iter()
                .enumerate()
                .flat_map(|(gi, g)| {
                    g.1.iter()
                        .filter(|bar| bar.series == *name)
                        .map(move |bar| (gi, bar))
                })
                .collect();
            let rects = mine.iter().map(|&(gi, bar)| {
                let x0 = gi as f64 + width * (si as f64 + 0.5);
                Rectangle::new([(x0, 0.0), (x0 + width, bar.value)], col.filled())
            });
            chart
                .draw_series(rects)
                .map_err(|e| e.to_string())?
                .label(*name)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], col.filled()));
            let errs: Vec<_> = mine
                .iter()
                .copied()
                .filter_map(|(gi, bar)| {
                    let (lo, hi) = bar.interval?;
                    let x = gi as f64 + width * (si as f64 + 1.0);
                    Some(ErrorBar::new_vertical(
                        x,
                        lo,
                        bar.value,
                        hi,
                        BLACK.stroke_width(1),
                        6,
                    ))
                })
                .collect();
            chart.draw_series(errs).map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// A grid of histograms of log10 feature frequencies (rows x columns, e.g. layers x ratios).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistGrid {
    pub title: String,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
    /// Per cell the features' activation frequencies in `[0, 1]`; `None` leaves it empty.
    pub cells: Vec<Vec<Option<Vec<f64>>>>,
    /// Number of log-spaced bins between `lo` and `hi` (the study: 100 bins, 1e-5 to 1).
    pub bins: usize,
    pub lo: f64,
    pub hi: f64,
}

/// Counts of `freqs` in `bins` log-spaced bins over `[lo, hi]`, plus the count of zeros
/// (dead features) and of values below `lo`, which have no bin.
pub fn log_histogram(freqs: &[f64], bins: usize, lo: f64, hi: f64) -> (Vec<u64>, u64) {
    let mut counts = vec![0u64; bins];
    let mut below = 0;
    let (l0, l1) = (lo.log10(), hi.log10());
    for &f in freqs {
        if f < lo {
            below += 1;
            continue;
        }
        let t = ((f.log10() - l0) / (l1 - l0) * bins as f64).floor() as usize;
        counts[t.min(bins - 1)] += 1;
    }
    (counts, below)
}

/// Renders the histogram grid; each panel notes how many features fell below the range.
pub fn histogram_grid(g: &HistGrid) -> Result<String> {
    let (rows, cols) = (g.row_labels.len(), g.col_labels.len());
    if rows == 0 || cols == 0 || g.bins == 0 || !(g.lo > 0.0 && g.hi > g.lo) {
        return Err(Error::Empty {
            figure: g.title.clone(),
        });
    }
    let size = (
        (220 * cols as u32).max(400),
        (170 * rows as u32 + 40).max(240),
    );
    render(&g.title, size, |root| {
        let root = root
            .titled(&g.title, ("sans-serif", 18))
            .map_err(|e| e.to_string())?;
        let panels = root.split_evenly((rows, cols));
        for (i, panel) in panels.iter().enumerate() {
            let (r, c) = (i / cols, i % cols);
            let Some(Some(freqs)) = g.cells.get(r).and_then(|row| row.get(c)) else {
                continue;
            };
            let (counts, below) = log_histogram(freqs, g.bins, g.lo, g.hi);
            let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.1;
            let mut chart = ChartBuilder::on(panel)
                .caption(
                    format!(
                        "{} / {} ({} below {:.0e})",
                        g.row_labels[r], g.col_labels[c], below, g.lo
                    ),
                    ("sans-serif", 11),
                )
                .margin(4)
                .x_label_area_size(20)
                .y_label_area_size(32)
                .build_cartesian_2d(g.lo.log10()..g.hi.log10(), 0.0..y_max)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(3)
                .y_labels(3)
                .x_label_formatter(&|v| format!("1e{v:.0}"))
                .label_style(("sans-serif", 9))
                .draw()
                .map_err(|e| e.to_string())?;
            let step = (g.hi.log10() - g.lo.log10()) / g.bins as f64;
            chart
                .draw_series(counts.iter().enumerate().map(|(b, &n)| {
                    let x0 = g.lo.log10() + step * b as f64;
                    Rectangle::new([(x0, 0.0), (x0 + step, n as f64)], color(0).filled())
                }))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}

/// Points in groups (e.g. the L0-FVU frontier per architecture).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scatter {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// `(group name, points)`; each group's points are also joined in x order.
    pub groups: Vec<(String, Vec<(f64, f64)>)>,
    pub log_x: bool,
}

/// Renders a scatter plot, each group joined by a thin line in x order.
pub fn scatter(s: &Scatter) -> Result<String> {
    let series = s
        .groups
        .iter()
        .map(|(name, pts)| {
            let mut pts = pts.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let pts = if s.log_x {
                pts.into_iter()
                    .filter(|p| p.0 > 0.0)
                    .map(|p| (p.0.log10(), p.1))
                    .collect()
            } else {
                pts
            };
            Series {
                name: name.clone(),
                points: pts,
                ..Series::default()
            }
        })
        .collect();
    let chart = LineChart {
        title: s.title.clone(),
        x_label: if s.log_x {
            format!("log10 {}", s.x_label)
        } else {
            s.x_label.clone()
        },
        y_label: s.y_label.clone(),
        series,
        log2_x: false,
        y_range: None,
    };
    lines(&chart)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_histogram_bins_and_counts_dead() {
        let (counts, below) = log_histogram(&[0.0, 1e-6, 1e-5, 0.5, 1.0], 5, 1e-5, 1.0);
        assert_eq!(below, 2);
        assert_eq!(counts.iter().sum::<u64>(), 3);
        assert_eq!(counts[0], 1);
        assert_eq!(counts[4], 2);
    }

    #[test]
    fn every_kind_renders_svg_with_its_labels() {
        let h = heatmap(&Heatmap {
            title: "MMCS".into(),
            row_labels: vec!["1:1".into(), "1:2".into()],
            col_labels: vec!["1:1".into(), "1:2".into()],
            values: vec![vec![Some(1.0), Some(0.7)], vec![Some(0.6), None]],
            range: (0.0, 1.0),
            x_label: "to".into(),
            y_label: "from".into(),
        })
        .unwrap();
        assert!(
            h.starts_with("<svg") && h.contains("0.70") && h.contains("1:2"),
            "{h}"
        );
        let l = lines(&LineChart {
            title: "against ratio".into(),
            series: vec![Series {
                name: "decoder".into(),
                points: vec![(1.0, 0.5), (4.0, 0.7)],
                band: vec![(1.0, 0.4, 0.6), (4.0, 0.6, 0.8)],
                dashed: false,
            }],
            log2_x: true,
            ..LineChart::default()
        })
        .unwrap();
        assert!(l.contains("decoder") && l.contains("<polyline") || l.contains("<path"));
        let b = bars(&BarChart {
            title: "per layer".into(),
            groups: vec![(
                "L0".into(),
                vec![
                    Bar {
                        series: "paired".into(),
                        value: 0.8,
                        interval: Some((0.7, 0.9)),
                    },
                    Bar {
                        series: "null".into(),
                        value: 0.2,
                        interval: None,
                    },
                ],
            )],
            ..BarChart::default()
        })
        .unwrap();
        assert!(b.contains("paired") && b.contains("null") && b.contains("L0"));
        let g = histogram_grid(&HistGrid {
            title: "density".into(),
            row_labels: vec!["L0".into()],
            col_labels: vec!["1:1".into(), "1:2".into()],
            cells: vec![vec![Some(vec![0.1, 0.01, 0.0]), None]],
            bins: 10,
            lo: 1e-5,
            hi: 1.0,
        })
        .unwrap();
        assert!(g.contains("1 below"), "{g}");
    }

    #[test]
    fn empty_figures_are_errors() {
        let err = lines(&LineChart {
            title: "nothing".into(),
            ..LineChart::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("nothing"));
        assert!(bars(&BarChart::default()).is_err());
    }
}
