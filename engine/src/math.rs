//! Deterministic math for systems: only IEEE-exact operations (+, −, ×, ÷, sqrt), so every
//! platform and thread count computes the same bits. `clippy.toml` bans the libm
//! transcendentals (`sin`, `atan2`, …) in this workspace; use these instead.

/// Scales `(x, z)` to length `len`; returns `None` for a vector too short to have a direction.
#[must_use]
pub fn with_length_2d(x: f32, z: f32, len: f32) -> Option<(f32, f32)> {
    let norm2 = x * x + z * z;
    if norm2 < 1e-12 {
        return None;
    }
    let k = len / norm2.sqrt();
    Some((x * k, z * k))
}

/// Length of `(x, y, z)`.
#[must_use]
pub fn length3(x: f32, y: f32, z: f32) -> f32 {
    (x * x + y * y + z * z).sqrt()
}

/// `√2`, the cost of a diagonal grid step.
pub const SQRT_2: f64 = std::f64::consts::SQRT_2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_to_length() {
        let (x, z) = with_length_2d(3.0, 4.0, 10.0).unwrap();
        assert!((x - 6.0).abs() < 1e-6 && (z - 8.0).abs() < 1e-6);
        assert!(with_length_2d(0.0, 0.0, 1.0).is_none());
        assert!((length3(2.0, 3.0, 6.0) - 7.0).abs() < 1e-6);
    }
}
