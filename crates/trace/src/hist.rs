use serde::Serialize;

/// One histogram bin: values `v` with `lo <= v < hi`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Bin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
}

/// A histogram with geometric (log-2 spaced) bins, suited to lengths that span orders of
/// magnitude. Values below the first edge fall into a leading `[0, first_edge)` bin.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    pub bins: Vec<Bin>,
}

impl Histogram {
    /// Bins `[0, first)`, then `[first·2^(k/per_octave), first·2^((k+1)/per_octave))` until the
    /// maximum value is covered.
    pub fn log2(values: &[f64], first: f64, per_octave: u32) -> Self {
        let first = first.max(1.0);
        let per_octave = per_octave.max(1) as f64;
        let max = values.iter().copied().fold(0.0f64, f64::max);
        let mut edges = vec![0.0, first];
        let mut k = 1.0;
        while *edges.last().unwrap_or(&first) <= max {
            edges.push((first * 2f64.powf(k / per_octave)).round());
            k += 1.0;
        }
        let mut bins: Vec<Bin> = edges
            .windows(2)
            .map(|w| Bin {
                lo: w[0],
                hi: w[1],
                count: 0,
            })
            .collect();
        for &v in values {
            // Edges are sorted: the bin is the last edge <= v.
            let i = edges.partition_point(|&e| e <= v).saturating_sub(1);
            let last = bins.len() - 1;
            if let Some(b) = bins.get_mut(i.min(last)) {
                b.count += 1;
            }
        }
        // Trim empty bins at both ends so the picture uses its width.
        while bins.len() > 1 && bins.last().is_some_and(|b| b.count == 0) {
            bins.pop();
        }
        let lead = bins.iter().take_while(|b| b.count == 0).count();
        bins.drain(..lead.min(bins.len().saturating_sub(1)));
        Self { bins }
    }

    /// One character per bin, height proportional to the count (empty bins are a space).
    pub fn sparkline(&self) -> String {
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let max = self.bins.iter().map(|b| b.count).max().unwrap_or(0);
        self.bins
            .iter()
            .map(|b| {
                if b.count == 0 || max == 0 {
                    ' '
                } else {
                    BARS[((b.count * 8 - 1) / max).min(7)]
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_all_values() {
        let vals = [0.0, 100.0, 600.0, 1000.0, 1500.0, 5000.0];
        let h = Histogram::log2(&vals, 512.0, 1);
        assert_eq!(h.bins.iter().map(|b| b.count).sum::<usize>(), vals.len());
        assert_eq!(h.bins[0].lo, 0.0);
        assert_eq!(h.bins[0].count, 2);
        assert_eq!(
            (h.bins[1].lo, h.bins[1].hi, h.bins[1].count),
            (512.0, 1024.0, 2)
        );
        assert_eq!(h.bins.last().unwrap().count, 1);
        assert!(h.bins.last().unwrap().hi > 5000.0);
        assert_eq!(h.sparkline().chars().count(), h.bins.len());
    }

    #[test]
    fn empty_input() {
        let h = Histogram::log2(&[], 512.0, 2);
        assert_eq!(h.sparkline().trim(), "");
    }
}
