//! The one range check for configuration values, and its error.
//!
//! It lives here because `terrarium-codec` is the crate every other crate already depends on;
//! each crate's configuration error wraps [`OutOfRange`] unchanged, so a value out of range
//! reads the same wherever it was set.

use std::fmt::Display;
use std::ops::RangeInclusive;

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value} is out of range (allowed: {allowed})")]
#[non_exhaustive]
pub struct OutOfRange {
    /// Dotted key path, for example `storage.postgres.max_size`.
    pub key: String,
    /// The value found.
    pub value: String,
    /// The allowed range, `min ..= max`.
    pub allowed: String,
}

impl OutOfRange {
    /// The same error under `prefix.` (a section's checks name keys relative to it).
    #[must_use]
    pub fn under(mut self, prefix: &str) -> Self {
        self.key = format!("{prefix}.{}", self.key);
        self
    }
}

/// Checks `value` against `allowed` (inclusive at both ends). A float range holds no NaN, so a
/// NaN is always out of range, and a finite range refuses infinities too.
///
/// # Errors
/// [`OutOfRange`] naming `key`, the value and the range.
///
/// # Examples
/// ```
/// use terrarium_codec::in_range;
/// assert!(in_range("tick_hz", 20, &(1..=1000)).is_ok());
/// let err = in_range("tick_hz", 0, &(1..=1000)).unwrap_err();
/// assert_eq!(err.to_string(), "tick_hz = 0 is out of range (allowed: 1 ..= 1000)");
/// assert!(in_range("speed", f64::NAN, &(0.0..=1e6)).is_err());
/// ```
pub fn in_range<T>(key: &str, value: T, allowed: &RangeInclusive<T>) -> Result<(), OutOfRange>
where
    T: PartialOrd + Display,
{
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(OutOfRange {
            key: key.to_string(),
            value: value.to_string(),
            allowed: format!("{} ..= {}", allowed.start(), allowed.end()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_inclusive_and_non_finite_floats_are_out() {
        assert!(in_range("k", 1u32, &(1..=3)).is_ok());
        assert!(in_range("k", 3u32, &(1..=3)).is_ok());
        assert_eq!(in_range("k", 4u32, &(1..=3)).unwrap_err().value, "4");
        assert!(in_range("k", f32::INFINITY, &(0.0..=f32::MAX)).is_err());
        assert!(in_range("k", f32::NAN, &(f32::MIN..=f32::MAX)).is_err());
        assert_eq!(in_range("k", 0i64, &(1..=2)).unwrap_err().under("a.b").key, "a.b.k");
    }
}
