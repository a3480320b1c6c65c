//! A small, dependency-free SVG line chart: axes with "nice" ticks (linear or log), grid,
//! legend, dashed/step lines, and down-sampling that keeps spikes. Output is a standalone
//! `<svg>` element (no scripts, no external fonts) to inline in HTML.

use std::fmt::Write;

/// Ten distinguishable colours (Tableau 10), cycled by index.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

/// Colour `i` of [`PALETTE`].
pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Lines beyond this many points are reduced to the first/min/max/last point of each x bucket.
const MAX_POINTS: usize = 2000;

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// CSS colour.
    pub color: String,
    pub dashed: bool,
    /// Draw as a step function (value holds until the next point), for sampled gauges.
    pub step: bool,
}

impl Line {
    pub fn new(name: impl Into<String>, color: impl Into<String>, points: Vec<(f64, f64)>) -> Line {
        Line {
            name: name.into(),
            points,
            color: color.into(),
            dashed: false,
            step: false,
        }
    }
}

/// A line chart. `width`/`height` are the SVG's intrinsic size in pixels (it scales with CSS).
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    /// Start the x axis at zero (linear axes only), e.g. time since the start of a run.
    pub x_from_zero: bool,
    /// Start the y axis at zero (linear axes only), e.g. for counts.
    pub y_from_zero: bool,
    /// Fixed axis ranges; otherwise derived from the data and rounded to ticks.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub width: f64,
    pub height: f64,
    pub lines: Vec<Line>,
}

impl Default for LineChart {
    fn default() -> Self {
        LineChart {
            title: String::new(),
            x_label: String::new(),
            y_label: String::new(),
            log_x: false,
            log_y: false,
            x_from_zero: false,
            y_from_zero: false,
            x_range: None,
            y_range: None,
            width: 560.0,
            height: 340.0,
            lines: Vec::new(),
        }
    }
}

/// Escape text for XML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// An axis: domain, scale and ticks.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    /// Decimals for tick labels on linear axes.
    decimals: usize,
}

impl Axis {
    /// `tight`: keep the data's bounds on a linear axis instead of rounding out to whole
    /// ticks (x axes: rounding 620 s up to 800 s wastes a quarter of the plot).
    fn new(
        values: impl Iterator<Item = f64>,
        log: bool,
        fixed: Option<(f64, f64)>,
        zero: bool,
        tight: bool,
    ) -> Axis {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if let Some((a, b)) = fixed {
            lo = a;
            hi = b;
        }
        if !lo.is_finite() || !hi.is_finite() {
            (lo, hi) = if log { (1.0, 10.0) } else { (0.0, 1.0) };
        }
        if zero && !log {
            lo = lo.min(0.0);
            hi = hi.max(0.0);
        }
        if log {
            if hi <= lo {
                lo /= 10.0;
                hi *= 10.0;
            }
            let (a, b) = (lo.log10().floor(), hi.log10().ceil());
            if fixed.is_none() {
                let p10 = |e: f64| {
                    if e >= 0.0 {
                        10f64.powf(e)
                    } else {
                        1.0 / 10f64.powf(-e)
                    }
                };
                lo = p10(a);
                hi = p10(b);
            }
            let mut ticks = Vec::new();
            let decades = (b - a) as i32;
            let mults: &[f64] = if decades <= 1 {
                &[1.0, 2.0, 5.0]
            } else if decades <= 2 {
                &[1.0, 3.0]
            } else {
                &[1.0]
            };
            let step = (decades / 6).max(1);
            let mut e = a as i32;
            while e <= b as i32 {
                for m in mults {
                    // Divide for negative exponents so 0.01 is the literal 0.01.
                    let v = if e >= 0 {
                        m * 10f64.powi(e)
                    } else {
                        m / 10f64.powi(-e)
                    };
                    if v >= lo * (1.0 - 1e-9) && v <= hi * (1.0 + 1e-9) {
                        ticks.push(v);
                    }
                }
                e += step;
            }
            return Axis {
                lo,
                hi,
                log,
                ticks,
                decimals: 0,
            };
        }
        if hi <= lo {
            let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
            lo -= pad;
            hi += pad;
        }
        let step = nice_step((hi - lo) / if tight { 6.0 } else { 5.0 });
        if fixed.is_none() && !tight {
            lo = (lo / step).floor() * step;
            hi = (hi / step).ceil() * step;
        }
        let mut ticks = Vec::new();
        let mut t = (lo / step).ceil() * step;
        while t <= hi + step * 1e-9 {
            // Snap -0.0 and float dust to clean values.
            ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
            t += step;
        }
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        Axis {
            lo,
            hi,
            log,
            ticks,
            decimals,
        }
    }

    /// Position of `v` in [0, 1] along the axis (clamped).
    fn frac(&self, v: f64) -> f64 {
        let f = if self.log {
            (v.max(f64::MIN_POSITIVE).log10() - self.lo.log10())
                / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn label(&self, v: f64) -> String {
        if self.log {
            return compact_number(v);
        }
        let a = v.abs();
        if a >= 1e6 {
            return format!("{}M", trim(format!("{:.2}", v / 1e6)));
        }
        if a >= 1e4 {
            return format!("{}k", trim(format!("{:.1}", v / 1e3)));
        }
        format!("{:.*}", self.decimals, v)
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Short label for a number: `0.005`, `20`, `1.5k`, `2M`.
fn compact_number(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if a >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else if a >= 1.0 || a == 0.0 {
        trim(format!("{v:.2}"))
    } else {
        let d = (-a.log10().floor()) as usize + 1;
        trim(format!("{v:.d$}"))
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let n = raw / mag;
    let m = if n <= 1.0 {
        1.0
    } else if n <= 2.0 {
        2.0
    } else if n <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Keep at most about `MAX_POINTS` points: per x bucket, the first, lowest, highest and last
/// point in x order, so spikes survive.
fn downsample(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points.to_vec();
    }
    let buckets = MAX_POINTS / 4;
    let (x0, x1) = (points[0].0, points[points.len() - 1].0);
    let width = (x1 - x0) / buckets as f64;
    let mut out = Vec::with_capacity(MAX_POINTS);
    let mut i = 0;
    while i < points.len() {
        let b = if width > 0.0 {
            (((points[i].0 - x0) / width) as usize).min(buckets - 1)
        } else {
            0
        };
        let mut j = i;
        let (mut lo, mut hi) = (i, i);
        while j < points.len() {
            let bj = if width > 0.0 {
                (((points[j].0 - x0) / width) as usize).min(buckets - 1)
            } else {
                0
            };
            if bj != b {
                break;
            }
            if points[j].1 < points[lo].1 {
                lo = j;
            }
            if points[j].1 > points[hi].1 {
                hi = j;
            }
            j += 1;
        }
        let mut idx = [i, lo, hi, j - 1];
        idx.sort_unstable();
        let mut last = usize::MAX;
        for k in idx {
            if k != last {
                out.push(points[k]);
                last = k;
            }
        }
        i = j;
    }
    out
}

/// Approximate text width at 11 px sans-serif.
fn text_width(s: &str) -> f64 {
    s.chars().count() as f64 * 6.2
}

impl LineChart {
    /// Render to a standalone `<svg>` element.
    pub fn to_svg(&self) -> String {
        let (w, h) = (self.width, self.height);
        let left = 62.0;
        let right = 16.0;
        let plot_w = w - left - right;

        // Legend rows under the title, wrapped to the plot width; capped to keep the plot usable.
        const MAX_LEGEND: usize = 24;
        let mut legend: Vec<(f64, f64, &Line)> = Vec::new();
        let (mut lx, mut row) = (0.0, 0usize);
        for l in self.lines.iter().take(MAX_LEGEND) {
            let iw = 24.0 + text_width(&l.name) + 14.0;
            if lx > 0.0 && lx + iw > plot_w {
                lx = 0.0;
                row += 1;
            }
            legend.push((lx, row as f64, l));
            lx += iw;
        }
        let legend_rows = if legend.is_empty() {
            0.0
        } else {
            row as f64 + 1.0
        };
        let top = 34.0 + legend_rows * 16.0;
        let bottom = 46.0;
        let plot_h = (h - top - bottom).max(60.0);
        let total_h = top + plot_h + bottom;

        let lines: Vec<(Vec<(f64, f64)>, &Line)> = self
            .lines
            .iter()
            .map(|l| {
                let pts: Vec<(f64, f64)> = l
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| {
                        x.is_finite()
                            && y.is_finite()
                            && (!self.log_x || x > 0.0)
                            && (!self.log_y || y > 0.0)
                    })
                    .collect();
                (downsample(&pts), l)
            })
            .collect();
        let xs = lines.iter().flat_map(|(p, _)| p.iter().map(|q| q.0));
        let xa = Axis::new(xs, self.log_x, self.x_range, self.x_from_zero, true);
        let ys = lines.iter().flat_map(|(p, _)| p.iter().map(|q| q.1));
        let ya = Axis::new(ys, self.log_y, self.y_range, self.y_from_zero, false);
        let px = |x: f64| left + xa.frac(x) * plot_w;
        let py = |y: f64| top + (1.0 - ya.frac(y)) * plot_h;

        // Shrink a long title to fit the plot width (about 0.6 em per character, bold).
        let title_size =
            (plot_w / (self.title.chars().count().max(1) as f64 * 0.6)).clamp(10.0, 14.0);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {total_h}" width="{w}" height="{total_h}" role="img" aria-label="{t}" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif" font-size="11">"#,
            t = escape(&self.title)
        );
        let _ = write!(
            s,
            r##"<rect x="0" y="0" width="{w}" height="{total_h}" fill="#ffffff"/><text x="{left}" y="18" font-size="{title_size:.1}" font-weight="600" fill="#222">{}</text>"##,
            escape(&self.title)
        );
        for (x, r, l) in &legend {
            let lx = left + x;
            let ly = 34.0 + r * 16.0 - 4.0;
            let _ = write!(
                s,
                r##"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2.5"{}/><text x="{}" y="{}" fill="#333">{}</text>"##,
                lx + 20.0,
                escape(&l.color),
                if l.dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                },
                lx + 24.0,
                ly + 4.0,
                escape(&l.name)
            );
        }
        if self.lines.len() > MAX_LEGEND {
            let _ = write!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#666">+{} more</text>"##,
                w - right,
                34.0 + (legend_rows - 1.0) * 16.0,
                self.lines.len() - MAX_LEGEND
            );
        }
        // Grid and ticks.
        for &t in &xa.ticks {
            let x = px(t);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#e6e6e6"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#444">{}</text>"##,
                top + plot_h,
                top + plot_h + 15.0,
                escape(&xa.label(t))
            );
        }
        for &t in &ya.ticks {
            let y = py(t);
            let _ = write!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 3.5,
                escape(&ya.label(t))
            );
        }
        let _ = write!(
            s,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
        );
        // Axis labels.
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#222">{}</text>"##,
            left + plot_w / 2.0,
            top + plot_h + 36.0,
            escape(&self.x_label)
        );
        let yl_y = top + plot_h / 2.0;
        let _ = write!(
            s,
            r##"<text x="14" y="{yl_y:.1}" text-anchor="middle" transform="rotate(-90 14 {yl_y:.1})" fill="#222">{}</text>"##,
            escape(&self.y_label)
        );
        // Data.
        let mut any = false;
        for (pts, l) in &lines {
            if pts.is_empty() {
                continue;
            }
            any = true;
            let mut d = String::with_capacity(pts.len() * 14);
            let mut prev_y: Option<f64> = None;
            for &(x, y) in pts {
                let (sx, sy) = (px(x), py(y));
                if let (true, Some(py_prev)) = (l.step, prev_y) {
                    let _ = write!(d, "{sx:.1},{py_prev:.1} ");
                }
                let _ = write!(d, "{sx:.1},{sy:.1} ");
                prev_y = Some(sy);
            }
            if pts.len() == 1 {
                let (sx, sy) = (px(pts[0].0), py(pts[0].1));
                let _ = write!(
                    s,
                    r#"<circle cx="{sx:.1}" cy="{sy:.1}" r="3" fill="{}"/>"#,
                    escape(&l.color)
                );
                continue;
            }
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="1.6" stroke-linejoin="round"{} points="{}"/>"#,
                escape(&l.color),
                if l.dashed {
                    r#" stroke-dasharray="5 3""#
                } else {
                    ""
                },
                d.trim_end()
            );
        }
        if !any {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="13" fill="#888">no data</text>"##,
                left + plot_w / 2.0,
                top + plot_h / 2.0
            );
        }
        s.push_str("</svg>");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.3), 0.5);
        assert_eq!(nice_step(1.0), 1.0);
        assert_eq!(nice_step(13.0), 20.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn linear_ticks_cover_domain() {
        let a = Axis::new([0.3, 9.7].into_iter(), false, None, false, false);
        assert_eq!((a.lo, a.hi), (0.0, 10.0));
        assert_eq!(a.ticks, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let b = Axis::new([5.0, 5.0].into_iter(), false, None, false, false);
        assert!(b.lo < 5.0 && b.hi > 5.0);
    }

    #[test]
    fn log_ticks_are_decades() {
        let a = Axis::new([0.02, 35.0].into_iter(), true, None, false, false);
        assert_eq!((a.lo, a.hi), (0.01, 100.0));
        assert_eq!(a.ticks, vec![0.01, 0.1, 1.0, 10.0, 100.0]);
        assert_eq!(a.label(0.01), "0.01");
        assert_eq!(a.label(3000.0), "3k");
        // Non-positive values are ignored on a log axis.
        let b = Axis::new([-1.0, 0.0, 2.0, 5.0].into_iter(), true, None, false, false);
        assert_eq!((b.lo, b.hi), (1.0, 10.0));
    }

    #[test]
    fn downsampling_keeps_extremes() {
        let mut pts: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, (i % 7) as f64)).collect();
        pts[54_321].1 = 1000.0;
        let d = downsample(&pts);
        assert!(d.len() <= MAX_POINTS);
        assert!(d.iter().any(|p| p.1 == 1000.0));
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(d[0], pts[0]);
        assert_eq!(*d.last().unwrap(), pts[pts.len() - 1]);
    }

    #[test]
    fn renders_escaped_and_handles_empty() {
        let mut c = LineChart {
            title: "a < b & \"c\"".into(),
            ..Default::default()
        };
        let s = c.to_svg();
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>"));
        assert!(s.contains("a &lt; b &amp; &quot;c&quot;"));
        assert!(s.contains("no data"));
        c.lines
            .push(Line::new("x", color(0), vec![(0.0, 1.0), (1.0, 2.0)]));
        let s = c.to_svg();
        assert!(s.contains("<polyline") && !s.contains("no data"));
        assert!(!s.contains("NaN") && !s.contains("inf"));
    }
}
