//! Numbers within bounds (`minimum`, `maximum` and their exclusive forms on a `number`, and a
//! `multipleOf` that is a power of ten up to 1: at most that many fraction digits): written
//! as plain decimals (no exponent, at most MAX_DIGITS significant digits), and the matcher takes
//! a byte only while some completion of what it has read lands within the bounds (on the grid of
//! the `multipleOf`). Values compare
//! as the f64s a JSON parser reads; with at most 15 digits every prefix is exact in an f64.
//! The continuations of a prefix are taken as the interval they fill, which they do but at the
//! last digits: bounds that need 15-digit precision to hit can leave a prefix without an end.

/// Most digits of a bounded number, integer and fraction together.
const MAX_DIGITS: u8 = 15;

/// `lo` to `hi`, each end open or closed (infinite where the schema gives none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub lo: f64,
    pub lo_open: bool,
    pub hi: f64,
    pub hi_open: bool,
    /// At most this many fraction digits (`multipleOf` 10^-frac); None: any.
    pub frac: Option<u8>,
}

/// What a bounded-number frame has read: sign, integer digits, whether a dot, fraction digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DecAt {
    pub(crate) neg: bool,
    pub(crate) int: u64,
    pub(crate) int_digits: u8,
    pub(crate) dot: bool,
    pub(crate) frac: u64,
    pub(crate) frac_digits: u8,
}

impl DecAt {
    /// After the first byte of the number (`-` or a digit); None for another byte.
    pub(crate) fn first(b: u8) -> Option<Self> {
        let start = DecAt {
            neg: false,
            int: 0,
            int_digits: 0,
            dot: false,
            frac: 0,
            frac_digits: 0,
        };
        match b {
            b'-' => Some(DecAt { neg: true, ..start }),
            _ => start.push(b),
        }
    }

    /// After one more byte: a digit, or the dot after the integer digits.
    pub(crate) fn push(self, b: u8) -> Option<Self> {
        let digits = self.int_digits + self.frac_digits;
        match b {
            b'.' if !self.dot && self.int_digits > 0 => Some(DecAt { dot: true, ..self }),
            b'0'..=b'9' if digits < MAX_DIGITS => {
                let d = u64::from(b - b'0');
                if self.dot {
                    Some(DecAt {
                        frac: self.frac * 10 + d,
                        frac_digits: self.frac_digits + 1,
                        ..self
                    })
                } else if self.int_digits == 1 && self.int == 0 {
                    None // a leading zero is the whole integer part
                } else {
                    Some(DecAt {
                        int: self.int * 10 + d,
                        int_digits: self.int_digits + 1,
                        ..self
                    })
                }
            }
            _ => None,
        }
    }

    fn complete(self) -> bool {
        self.int_digits > 0 && (!self.dot || self.frac_digits > 0)
    }

    fn signed(self, magnitude: f64) -> f64 {
        if self.neg {
            -magnitude
        } else {
            magnitude
        }
    }
}

impl Bounds {
    /// Whether any number (a multiple of the `multipleOf`) lies within the bounds.
    pub(crate) fn any(&self) -> bool {
        match self.frac {
            Some(frac) => on_grid(self.lo, self.lo_open, self.hi, self.hi_open, frac),
            None => self.lo < self.hi || (self.lo == self.hi && !self.lo_open && !self.hi_open),
        }
    }

    fn admits(&self, x: f64) -> bool {
        (x > self.lo || (!self.lo_open && x == self.lo))
            && (x < self.hi || (!self.hi_open && x == self.hi))
    }

    /// Whether what `at` has read is a whole number within the bounds.
    pub(crate) fn holds(&self, at: DecAt) -> bool {
        let scale = 10f64.powi(i32::from(at.frac_digits));
        let magnitude = (at.int as f64 * scale + at.frac as f64) / scale;
        at.complete() && self.admits(at.signed(magnitude))
    }

    /// Whether the interval from `a` to `b` (magnitudes, `a` reached, `b` not) holds a value
    /// within the bounds, read with `at`'s sign.
    fn meets(&self, at: DecAt, a: f64, b: f64) -> bool {
        // signed: [a, b) or (-b, -a]
        let (lo, lo_open, hi, hi_open) = if at.neg {
            (-b, true, -a, false)
        } else {
            (a, false, b, true)
        };
        let (from, from_open) = if self.lo > lo || (self.lo == lo && self.lo_open) {
            (self.lo, self.lo_open)
        } else {
            (lo, lo_open)
        };
        let (to, to_open) = if self.hi < hi || (self.hi == hi && self.hi_open) {
            (self.hi, self.hi_open)
        } else {
            (hi, hi_open)
        };
        match self.frac {
            Some(frac) => on_grid(from, from_open, to, to_open, frac),
            None => from < to || (from == to && !from_open && !to_open),
        }
    }

    /// Whether some completion of `at` (it, or it with more digits or a fraction) lies within
    /// the bounds: for each count of further integer digits the values make one interval.
    pub(crate) fn reachable(&self, at: DecAt) -> bool {
        if self.frac.is_some_and(|frac| at.frac_digits > frac) {
            return false;
        }
        if self.holds(at) {
            return true;
        }
        let left = MAX_DIGITS - at.int_digits - at.frac_digits;
        if at.dot {
            let left = self
                .frac
                .map_or(left, |frac| left.min(frac - at.frac_digits));
            let scale = 10f64.powi(i32::from(at.frac_digits));
            let a = (at.int as f64 * scale + at.frac as f64) / scale;
            let b = (at.int as f64 * scale + at.frac as f64 + 1.0) / scale;
            return left > 0 && self.meets(at, a, b);
        }
        let leading_zero = at.int_digits == 1 && at.int == 0;
        let mut scale = 1f64;
        for j in 0..=left {
            if j > 0 {
                if leading_zero {
                    break;
                }
                scale *= 10.0;
            } else if at.int_digits == 0 {
                continue; // no integer digit yet
            }
            // with j more integer digits (and a fraction): [int * 10^j, (int + 1) * 10^j)
            let a = at.int as f64 * scale;
            let b = (at.int as f64 + 1.0) * scale;
            if self.meets(at, a, b) {
                return true;
            }
        }
        false
    }
}

/// Whether a multiple of 10^-frac lies from `from` to `to` (each end open or closed), each
/// multiple as a JSON parser reads its text (the integer over 10^frac, correctly rounded).
fn on_grid(from: f64, from_open: bool, to: f64, to_open: bool, frac: u8) -> bool {
    let scale = 10f64.powi(i32::from(frac));
    let at = |k: f64| k / scale;
    let after_from = |v: f64| v > from || (v == from && !from_open);
    let before_to = |v: f64| v < to || (v == to && !to_open);
    const EXACT: f64 = (1u64 << 53) as f64; // integers an f64 holds exactly
    if from.is_finite() && (from * scale).abs() < EXACT {
        let mut k = (from * scale).floor() - 1.0;
        while !after_from(at(k)) {
            k += 1.0;
        }
        before_to(at(k))
    } else if to.is_finite() && (to * scale).abs() < EXACT {
        let mut k = (to * scale).ceil() + 1.0;
        while !before_to(at(k)) {
            k -= 1.0;
        }
        after_from(at(k))
    } else {
        from < to || (from == to && !from_open && !to_open) // too large for the grid to matter
    }
}
