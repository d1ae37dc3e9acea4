//! Integers within bounds (`minimum`, `maximum` and their exclusive forms on an `integer`) and
//! multiples of a step (`multipleOf`): the matcher reads the sign and digits and takes a digit
//! only while some completion of what it has read is such an integer, so the model is never left
//! with a number it cannot finish.

/// Most digits of a bounded integer (the bounds are i64s: 19 digits hold every one of them).
const MAX_DIGITS: u8 = 19;

/// The multiples of `step` in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
    /// At least 1.
    pub step: u64,
}

/// What an integer frame has read: a sign, the magnitude of the digits and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IntAt {
    pub(crate) neg: bool,
    pub(crate) mag: u64,
    pub(crate) digits: u8,
}

impl IntAt {
    /// After the first byte of the number (`-` or a digit); None for another byte.
    pub(crate) fn first(b: u8) -> Option<Self> {
        match b {
            b'-' => Some(IntAt {
                neg: true,
                mag: 0,
                digits: 0,
            }),
            b'0'..=b'9' => Some(IntAt {
                neg: false,
                mag: u64::from(b - b'0'),
                digits: 1,
            }),
            _ => None,
        }
    }

    /// After one more digit `b` (JSON: no digit after a leading zero).
    pub(crate) fn push(self, b: u8) -> Option<Self> {
        if !b.is_ascii_digit() || self.digits >= MAX_DIGITS || (self.digits == 1 && self.mag == 0) {
            return None;
        }
        Some(IntAt {
            mag: self.mag * 10 + u64::from(b - b'0'),
            digits: self.digits + 1,
            ..self
        })
    }

    fn value(self) -> i128 {
        if self.neg {
            -i128::from(self.mag)
        } else {
            i128::from(self.mag)
        }
    }
}

impl IntRange {
    /// Whether what `at` has read is a whole integer in the range.
    pub(crate) fn holds(&self, at: IntAt) -> bool {
        let value = at.value();
        at.digits > 0
            && (i128::from(self.min)..=i128::from(self.max)).contains(&value)
            && value.rem_euclid(i128::from(self.step)) == 0
    }

    /// Whether `lo..=hi` holds an integer of the range.
    pub(crate) fn meets(&self, lo: i128, hi: i128) -> bool {
        let (lo, hi) = (lo.max(i128::from(self.min)), hi.min(i128::from(self.max)));
        let step = i128::from(self.step);
        let first = lo + (step - lo.rem_euclid(step)) % step; // the least multiple from lo
        first <= hi
    }

    /// Whether some completion of `at` (it, or it with more digits) is in the range. The values
    /// with k more digits make one interval of magnitudes, so each k is one comparison.
    pub(crate) fn reachable(&self, at: IntAt) -> bool {
        if self.holds(at) {
            return true;
        }
        if at.digits == 1 && at.mag == 0 {
            return false; // a leading zero is the whole number
        }
        let mut scale: i128 = 1;
        for _ in at.digits..MAX_DIGITS {
            scale *= 10;
            let lo = i128::from(at.mag) * scale;
            let hi = lo + scale - 1;
            let (lo, hi) = if at.neg { (-hi, -lo) } else { (lo, hi) };
            if self.meets(lo, hi) {
                return true;
            }
        }
        false
    }
}
