//! How much host memory a command may plan to use, so that inputs that cannot fit are refused
//! with a message before anything large is allocated (instead of an allocator abort).
//!
//! The budget is `SWITCHYARD_MEMORY_LIMIT_MB` when set (a number of MiB; `0` disables the
//! checks), otherwise the kernel's `MemAvailable` (Linux), otherwise unlimited.

/// Environment variable that overrides the memory budget, in MiB (`0`: no limit).
pub const MEMORY_LIMIT_ENV: &str = "SWITCHYARD_MEMORY_LIMIT_MB";

/// The memory budget in bytes, or `None` when unlimited / unknown.
pub fn budget_bytes() -> Option<u64> {
    if let Ok(v) = std::env::var(MEMORY_LIMIT_ENV) {
        return match v.trim().parse::<u64>() {
            Ok(0) => None,
            Ok(mb) => Some(mb.saturating_mul(1 << 20)),
            // A typo must not silently disable the check: fall back to what the OS says.
            Err(_) => available_bytes(),
        };
    }
    available_bytes()
}

/// `MemAvailable` from `/proc/meminfo`, in bytes.
fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

/// `bytes` as GiB with two decimals, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `Err(message)` when `need` bytes exceed `budget` (see [`budget_bytes`]); `what` says what
/// needs them.
pub fn check(need: u64, budget: Option<u64>, what: &str) -> Result<(), String> {
    match budget {
        Some(budget) if need > budget => Err(format!(
            "{what} needs about {} of memory, more than the {} available (set {MEMORY_LIMIT_ENV} to change the budget, 0 for none)",
            gib(need),
            gib(budget)
        )),
        _ => Ok(()),
    }
}
