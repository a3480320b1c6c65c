//! Test-only helpers shared by the crates' integration tests.
//!
//! A test whose prerequisite is missing calls [`skip`] instead of passing silently: outside
//! CI it prints why and appends a line to `$SWITCHYARD_SKIP_LOG` (which `scripts/test.sh`
//! summarises at the end, with the command that installs what was missing); with `CI` set it
//! panics, so CI never goes green on a test that tested nothing.

use std::io::Write;

/// Record that `test` did not run because of `reason`; `install` is the command that fixes
/// it. Panics when the `CI` environment variable is set.
pub fn skip(test: &str, reason: &str, install: &str) {
    let line = format!("{test}: {reason} (install: {install})");
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run every test, but {line}"
    );
    eprintln!("SKIPPED {line}");
    if let Some(path) = std::env::var_os("SWITCHYARD_SKIP_LOG")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The headless Chromium binary on PATH (`chromium`, `chromium-browser` or
/// `google-chrome`), if one answers `--version`.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}
