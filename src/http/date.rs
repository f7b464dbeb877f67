//! The `Date` header value (IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`), computed at
//! most once per loop iteration and formatted at most once per second.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of an IMF-fixdate.
pub(crate) const DATE_LEN: usize = 29;

/// The cached `Date` value of one server.
#[derive(Debug)]
pub(crate) struct DateCache {
    /// Loop time (ms) of the last look at the clock.
    looked_at: Option<u64>,
    secs: u64,
    text: [u8; DATE_LEN],
}

impl DateCache {
    pub(crate) fn new() -> DateCache {
        DateCache {
            looked_at: None,
            secs: 0,
            text: format(0),
        }
    }

    /// The value for loop time `loop_ms`: the wall clock is read only when the loop time
    /// moved since the last call, and the text rebuilt only when the second changed.
    pub(crate) fn get(&mut self, loop_ms: u64) -> &[u8; DATE_LEN] {
        if self.looked_at != Some(loop_ms) {
            self.looked_at = Some(loop_ms);
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            if secs != self.secs {
                self.secs = secs;
                self.text = format(secs);
            }
        }
        &self.text
    }
}

/// Formats `secs` since the Unix epoch as an IMF-fixdate.
pub(crate) fn format(secs: u64) -> [u8; DATE_LEN] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (year, month, day) = civil(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    two(&mut out[5..7], day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    let y = year.min(9999);
    two(&mut out[12..14], y / 100);
    two(&mut out[14..16], y % 100);
    two(&mut out[17..19], rem / 3600);
    two(&mut out[20..22], rem / 60 % 60);
    two(&mut out[23..25], rem % 60);
    out
}

fn two(out: &mut [u8], v: u64) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// (year, month 1-12, day 1-31) of the day `days` after 1970-01-01 (proleptic Gregorian),
/// counting in 400-year eras that start on March 1st.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(&format(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(&format(784_111_777), b"Sun, 06 Nov 1994 08:49:37 GMT");
        // A leap day, and the end of a century year that is not a leap year.
        assert_eq!(&format(951_782_400), b"Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(&format(4_133_980_799), b"Fri, 31 Dec 2100 23:59:59 GMT");
    }

    #[test]
    fn reads_the_clock_once_per_loop_time() {
        let mut d = DateCache::new();
        let first = *d.get(5);
        assert_ne!(&first, b"Thu, 01 Jan 1970 00:00:00 GMT");
        // Same loop time: the cached text, even if it were stale.
        (d.secs, d.text) = (1, format(1));
        assert_eq!(d.get(5), &format(1));
        assert_ne!(d.get(6), &format(1));
    }
}
