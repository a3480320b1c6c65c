//! Number formatting shared by the terminal reports.

/// An integer with thousands separators: 12031 -> "12,031".
pub fn thousands(v: f64) -> String {
    let neg = v < 0.0;
    let digits = format!("{:.0}", v.abs());
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

/// A compact token count: 126195 -> "126K", 891 -> "891".
pub fn compact(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}K", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A fraction as a percentage with two decimals.
pub fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(12031.0), "12,031");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(-1000.0), "-1,000");
        assert_eq!(compact(126195.0), "126K");
        assert_eq!(compact(1500.0), "1.5K");
        assert_eq!(pct(0.36641), "36.64%");
    }
}
