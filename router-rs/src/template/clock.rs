//! `strftime_now(format)` for chat templates that print today's date, in UTC.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A calendar time in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    /// 0 = Monday … 6 = Sunday
    pub weekday: usize,
    /// 1..=366
    pub day_of_year: u32,
}

impl DateTime {
    /// The calendar time `secs` seconds after 1970-01-01T00:00:00Z.
    pub(crate) fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        // Days to civil date (proleptic Gregorian), counting eras of 400 years from 0000-03-01.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
        let day_of_year = before + day + u32::from(leap && month > 2);
        Self {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday: (days + 3).rem_euclid(7) as usize,
            day_of_year,
        }
    }

    /// Formats with the common strftime directives; an unknown directive is copied unchanged.
    pub(crate) fn format(&self, pattern: &str) -> String {
        let mut out = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            let Some(d) = chars.next() else {
                out.push('%');
                break;
            };
            let hour12 = match self.hour % 12 {
                0 => 12,
                h => h,
            };
            let piece = match d {
                'Y' => self.year.to_string(),
                'y' => format!("{:02}", self.year.rem_euclid(100)),
                'm' => format!("{:02}", self.month),
                'd' => format!("{:02}", self.day),
                'H' => format!("{:02}", self.hour),
                'I' => format!("{hour12:02}"),
                'M' => format!("{:02}", self.minute),
                'S' => format!("{:02}", self.second),
                'p' => if self.hour < 12 { "AM" } else { "PM" }.to_string(),
                'j' => format!("{:03}", self.day_of_year),
                'B' => MONTHS[self.month as usize - 1].to_string(),
                'b' => MONTHS[self.month as usize - 1][..3].to_string(),
                'A' => WEEKDAYS[self.weekday].to_string(),
                'a' => WEEKDAYS[self.weekday][..3].to_string(),
                '%' => "%".to_string(),
                other => format!("%{other}"),
            };
            out.push_str(&piece);
        }
        out
    }
}

/// `strftime_now(format)`: the current UTC time formatted with strftime directives.
pub(crate) fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    DateTime::from_unix(secs).format(format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants_format_like_python() {
        // 2024-02-29T13:05:09Z, a Thursday, day 60 of a leap year.
        let t = DateTime::from_unix(1_709_211_909);
        assert_eq!(t.format("%Y-%m-%d %H:%M:%S"), "2024-02-29 13:05:09");
        assert_eq!(
            t.format("%A %a %B %b %j %I%p %y %%"),
            "Thursday Thu February Feb 060 01PM 24 %"
        );
        assert_eq!(
            DateTime::from_unix(0).format("%d %B %Y %A"),
            "01 January 1970 Thursday"
        );
        assert_eq!(
            DateTime::from_unix(1_735_603_200).format("%j %d-%m"),
            "366 31-12"
        );
    }

    #[test]
    fn unknown_directives_are_kept() {
        assert_eq!(DateTime::from_unix(0).format("%Q %"), "%Q %");
    }
}
