//! Maintenance windows: when new nodes may be granted, in the admin's own time zone.
//!
//! A window opens on each of its `days` (every day when empty) at `start` local time and
//! closes at `end`; an `end` earlier than `start` is on the next day (a window across
//! midnight belongs to the day it opens on: `Sat 22:00–04:00` closes Sunday 04:00). Local
//! times are turned into instants with the zone's rules for that date, so on a DST day a
//! window is an hour longer or shorter; a start inside a spring-forward gap opens at the
//! first instant after the gap (the "compatible" rule of RFC 9557 and of jiff).
//!
//! Pure: the caller passes `now`.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A day of the week, as written in an Update.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Monday,
            Day::Tue => Weekday::Tuesday,
            Day::Wed => Weekday::Wednesday,
            Day::Thu => Weekday::Thursday,
            Day::Fri => Weekday::Friday,
            Day::Sat => Weekday::Saturday,
            Day::Sun => Weekday::Sunday,
        }
    }
}

/// One recurring maintenance window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// Days the window opens on; empty: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Day>,
    /// Local opening time, `HH:MM` (24-hour).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// Local closing time, `HH:MM`; earlier than `start`: on the next day.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone name (`Europe/Berlin`, `Asia/Shanghai`); absent: UTC.
    #[serde(default = "utc")]
    #[schemars(length(min = 1))]
    pub time_zone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

fn parse_hhmm(what: &str, s: &str) -> Result<Time, String> {
    let bad = || format!("{what} {s:?} is not HH:MM (00:00 to 23:59)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// One opening of a window, as instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    pub opens: Timestamp,
    pub closes: Timestamp,
}

impl Window {
    /// Everything the schema cannot check: a real time zone, and a window of some length.
    pub fn check(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        let start = parse_hhmm("start", &self.start)
            .map_err(|e| errors.push(e))
            .ok();
        let end = parse_hhmm("end", &self.end)
            .map_err(|e| errors.push(e))
            .ok();
        if TimeZone::get(&self.time_zone).is_err() {
            errors.push(format!(
                "time zone {:?} is not in the IANA time zone database",
                self.time_zone
            ));
        }
        if start.is_some() && start == end {
            errors.push(format!(
                "start and end are both {}; a window needs a length (use 00:00 to 23:59 for a whole day)",
                self.start
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn parts(&self) -> Result<(Time, Time, TimeZone), String> {
        self.check()?;
        Ok((
            parse_hhmm("start", &self.start)?,
            parse_hhmm("end", &self.end)?,
            TimeZone::get(&self.time_zone).map_err(|e| e.to_string())?,
        ))
    }

    /// The opening that starts on local date `day`, if the window opens that day.
    fn opening_on(&self, day: Date, start: Time, end: Time, tz: &TimeZone) -> Option<Opening> {
        if !self.days.is_empty() && !self.days.iter().any(|d| d.weekday() == day.weekday()) {
            return None;
        }
        let end_day = if end > start {
            day
        } else {
            day.tomorrow().ok()?
        };
        let opens = day
            .to_datetime(start)
            .to_zoned(tz.clone())
            .ok()?
            .timestamp();
        let closes = end_day
            .to_datetime(end)
            .to_zoned(tz.clone())
            .ok()?
            .timestamp();
        Some(Opening { opens, closes })
    }

    /// Openings that could contain `now` or follow it within a week, in time order.
    fn openings_around(&self, now: Timestamp) -> Result<Vec<Opening>, String> {
        let (start, end, tz) = self.parts()?;
        let today = now.to_zoned(tz.clone()).date();
        let mut out = Vec::new();
        // From yesterday (an opening across midnight) to eight days on (a weekly window).
        for offset in -1i64..=8 {
            let Ok(day) = today.checked_add(offset.days()) else {
                continue;
            };
            out.extend(self.opening_on(day, start, end, &tz));
        }
        Ok(out)
    }

    /// The opening `now` is inside, if any.
    pub fn open_at(&self, now: Timestamp) -> Result<Option<Opening>, String> {
        Ok(self
            .openings_around(now)?
            .into_iter()
            .find(|o| o.opens <= now && now < o.closes))
    }

    /// The first opening after `now`.
    pub fn next_opening(&self, now: Timestamp) -> Result<Option<Opening>, String> {
        Ok(self
            .openings_around(now)?
            .into_iter()
            .filter(|o| o.opens > now)
            .min_by_key(|o| o.opens))
    }
}

/// Whether grants may be made at `now` under `windows` (none: always), and when that changes:
/// `Ok((true, closes))` inside a window, `Ok((false, opens))` outside.
pub fn status(windows: &[Window], now: Timestamp) -> Result<(bool, Option<Timestamp>), String> {
    if windows.is_empty() {
        return Ok((true, None));
    }
    let mut close: Option<Timestamp> = None;
    let mut next: Option<Timestamp> = None;
    for w in windows {
        if let Some(o) = w.open_at(now)? {
            close = Some(close.map_or(o.closes, |c| c.max(o.closes)));
        }
        if let Some(o) = w.next_opening(now)? {
            next = Some(next.map_or(o.opens, |n| n.min(o.opens)));
        }
    }
    match close {
        Some(c) => Ok((true, Some(c))),
        None => Ok((false, next)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(days: &[Day], start: &str, end: &str, tz: &str) -> Window {
        Window {
            days: days.to_vec(),
            start: start.into(),
            end: end.into(),
            time_zone: tz.into(),
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn across_midnight_in_shanghai() {
        // Saturday 22:00 to Sunday 04:00 Asia/Shanghai (UTC+8, no DST).
        let win = w(&[Day::Sat], "22:00", "04:00", "Asia/Shanghai");
        // 2024-03-02 is a Saturday. 22:00 +08 = 14:00Z.
        assert_eq!(win.open_at(ts("2024-03-02T13:59:59Z")).unwrap(), None);
        let o = win.open_at(ts("2024-03-02T14:00:00Z")).unwrap().unwrap();
        assert_eq!(o.closes, ts("2024-03-02T20:00:00Z"));
        // Sunday 03:59 local is still the Saturday opening.
        assert!(win.open_at(ts("2024-03-02T19:59:00Z")).unwrap().is_some());
        assert_eq!(win.open_at(ts("2024-03-02T20:00:00Z")).unwrap(), None);
        // Sunday 22:00 local is not a window: days name the opening day only.
        assert_eq!(win.open_at(ts("2024-03-03T14:30:00Z")).unwrap(), None);
        // From Sunday the next opening is a week after the last.
        let n = win
            .next_opening(ts("2024-03-03T00:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(n.opens, ts("2024-03-09T14:00:00Z"));
    }

    #[test]
    fn dst_spring_forward_in_berlin() {
        // 2024-03-31: Europe/Berlin jumps from 02:00 CET to 03:00 CEST.
        let win = w(&[], "01:00", "05:00", "Europe/Berlin");
        let o = win.open_at(ts("2024-03-31T00:30:00Z")).unwrap().unwrap();
        assert_eq!(o.opens, ts("2024-03-31T00:00:00Z")); // 01:00 CET
        assert_eq!(o.closes, ts("2024-03-31T03:00:00Z")); // 05:00 CEST
        assert_eq!(
            o.opens.duration_until(o.closes).as_secs(),
            3 * 3600,
            "one hour shorter"
        );
        // A start inside the gap opens right after it.
        let gap = w(&[], "02:30", "04:00", "Europe/Berlin");
        let o = gap
            .next_opening(ts("2024-03-30T23:00:00Z"))
            .unwrap()
            .unwrap();
        assert_eq!(o.opens, ts("2024-03-31T01:30:00Z")); // 03:30 CEST
    }

    #[test]
    fn dst_fall_back_in_new_york() {
        // 2024-11-03: America/New_York 02:00 EDT becomes 01:00 EST.
        let win = w(&[Day::Sun], "00:00", "04:00", "America/New_York");
        let o = win.open_at(ts("2024-11-03T05:00:00Z")).unwrap().unwrap();
        assert_eq!(o.opens, ts("2024-11-03T04:00:00Z")); // 00:00 EDT
        assert_eq!(o.closes, ts("2024-11-03T09:00:00Z")); // 04:00 EST
        assert_eq!(
            o.opens.duration_until(o.closes).as_secs(),
            5 * 3600,
            "one hour longer"
        );
    }

    #[test]
    fn status_across_windows() {
        let wins = [
            w(&[], "01:00", "02:00", "UTC"),
            w(&[], "12:00", "13:00", "UTC"),
        ];
        let (open, at) = status(&wins, ts("2024-05-01T03:00:00Z")).unwrap();
        assert!(!open);
        assert_eq!(at, Some(ts("2024-05-01T12:00:00Z")));
        let (open, at) = status(&wins, ts("2024-05-01T12:10:00Z")).unwrap();
        assert!(open);
        assert_eq!(at, Some(ts("2024-05-01T13:00:00Z")));
        assert_eq!(
            status(&[], ts("2024-05-01T12:10:00Z")).unwrap(),
            (true, None)
        );
    }

    #[test]
    fn check_explains() {
        let e = w(&[], "25:00", "7:00", "Mars/Olympus").check().unwrap_err();
        assert!(e.contains("start \"25:00\""), "{e}");
        assert!(e.contains("end \"7:00\""), "{e}");
        assert!(e.contains("Mars/Olympus"), "{e}");
        w(&[], "00:00", "23:59", "UTC").check().unwrap();
    }
}
