//! A level alarm with hysteresis (the off-site WAL lag alarm): raised when a value passes its
//! limit, cleared only once the value has fallen to a fraction of it.  Without the gap, a target
//! whose lag hovers at the limit (a slow link at the edge of keeping up) would raise and clear
//! the alarm, a WARNING and a NOTIFY each time, at every check.

/// What to do with the alarm now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Raise,
    Clear,
    Keep,
}

/// The share of the limit a raised alarm's value must fall to before it clears.
pub const CLEAR_AT: f64 = 0.5;

/// The alarm's change for `value` against `limit` (None: the alarm is off, which clears a raised
/// one), given whether it is `raised`.
pub fn change(raised: bool, value: f64, limit: Option<f64>) -> Change {
    match limit {
        None if raised => Change::Clear,
        Some(l) if !raised && value > l => Change::Raise,
        Some(l) if raised && value <= l * CLEAR_AT => Change::Clear,
        _ => Change::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_at_the_limit_neither_flaps_nor_hides() {
        let limit = Some(300.0);
        // Rises past the limit: raised once, then kept while it stays high.
        assert_eq!(change(false, 299.0, limit), Change::Keep);
        assert_eq!(change(false, 301.0, limit), Change::Raise);
        assert_eq!(change(true, 400.0, limit), Change::Keep);
        // Hovers just under the limit: still raised (no flapping) ...
        assert_eq!(change(true, 290.0, limit), Change::Keep);
        assert_eq!(change(true, 151.0, limit), Change::Keep);
        // ... until it has really come down.
        assert_eq!(change(true, 150.0, limit), Change::Clear);
        assert_eq!(change(true, 0.0, limit), Change::Clear);
        // A cleared alarm under the limit stays quiet.
        assert_eq!(change(false, 290.0, limit), Change::Keep);
        // Turned off: a raised alarm clears, none is raised.
        assert_eq!(change(true, 1e9, None), Change::Clear);
        assert_eq!(change(false, 1e9, None), Change::Keep);
    }
}
