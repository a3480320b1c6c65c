//! Mooncake-format request traces.
