//! The owner's time windows (`node.schedule`): when, in the node's local time, the
//! volunteer may claim new jobs. Pure: the actor reads the clock and passes a [`LocalTime`].
//!
//! One window a string, `[DAYS] [START-END]`, at least one of the two:
//!
//! ```text
//! DAYS        mon tue wed thu fri sat sun, a range (mon-fri; fri-mon wraps over the
//!             weekend), a comma list of both (mon,wed,sat-sun), or daily; absent: every day
//! START-END   HH:MM-HH:MM, from 00:00 to 24:00; absent: the whole day
//!             START < END   that part of each listed day
//!             START > END   crosses midnight: from START on a listed day to END the next
//!                           morning ("fri 22:00-02:00" ends on Saturday at 02:00)
//! ```
//!
//! `["mon-fri 19:00-07:00", "sat-sun"]` is nights and weekends: Monday 19:00 to Tuesday
//! 07:00 and so on, Friday 19:00 to Saturday 07:00, all of Saturday and Sunday. The node
//! takes work while the time is inside any window.

use std::fmt;
use std::str::FromStr;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_A_DAY: u16 = 24 * 60;

/// A moment in the node's local time, as far as windows care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    /// 0 = Monday … 6 = Sunday.
    pub weekday: u8,
    /// Minutes since local midnight, 0 ≤ minute < 1440.
    pub minute: u16,
}

impl LocalTime {
    /// `day` as `mon` … `sun`, `hh:mm` as written; for tests and logs.
    pub fn new(day: &str, hour: u16, minute: u16) -> Option<Self> {
        let weekday = day_index(day)?;
        (hour < 24 && minute < 60).then_some(Self {
            weekday,
            minute: hour * 60 + minute,
        })
    }
}

/// One window: a set of days and a span of minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Bit `d` set: day `d` (0 = Monday) is listed.
    days: u8,
    /// Minutes since midnight; `start > end` crosses midnight; the whole day is 0..1440.
    start: u16,
    end: u16,
}

/// Why a window does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowError {
    #[error("the window is empty (write days, times or both, e.g. \"mon-fri 19:00-07:00\")")]
    Empty,
    #[error(
        "{0:?} is not a day (write mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, or daily)"
    )]
    Day(String),
    #[error("{0:?} is not a span of time (write HH:MM-HH:MM, e.g. 19:00-07:00)")]
    Times(String),
    #[error("{0:?} starts and ends at the same time (leave the times out for the whole day)")]
    EmptySpan(String),
    #[error("{0:?} is more than days and times (write e.g. \"sat-sun 08:00-20:00\")")]
    Extra(String),
}

impl Window {
    /// Whether `t` is inside this window.
    pub fn contains(&self, t: LocalTime) -> bool {
        let listed = |d: u8| self.days & (1 << d) != 0;
        if self.start < self.end {
            listed(t.weekday) && (self.start..self.end).contains(&t.minute)
        } else {
            // Crossing midnight: the evening of a listed day, or the morning after one.
            let yesterday = (t.weekday + 6) % 7;
            (listed(t.weekday) && t.minute >= self.start)
                || (listed(yesterday) && t.minute < self.end)
        }
    }
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let (days, times) = match words.as_slice() {
            [] => return Err(WindowError::Empty),
            [one] if one.contains(':') => (None, Some(*one)),
            [one] => (Some(*one), None),
            [days, times] => (Some(*days), Some(*times)),
            [_, _, extra, ..] => return Err(WindowError::Extra((*extra).to_string())),
        };
        let days = match days {
            None => 0x7f,
            Some(d) => parse_days(d)?,
        };
        let (start, end) = match times {
            None => (0, MINUTES_A_DAY),
            Some(t) => parse_span(t)?,
        };
        Ok(Self { days, start, end })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days: Vec<&str> = (0..7u8)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAYS[usize::from(d)])
            .collect();
        write!(
            f,
            "{} {:02}:{:02}-{:02}:{:02}",
            days.join(","),
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

fn day_index(s: &str) -> Option<u8> {
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == lower)
        .and_then(|i| u8::try_from(i).ok())
}

fn parse_days(s: &str) -> Result<u8, WindowError> {
    if s.eq_ignore_ascii_case("daily") {
        return Ok(0x7f);
    }
    let mut set = 0u8;
    for part in s.split(',') {
        let bad = || WindowError::Day(part.to_string());
        match part.split_once('-') {
            None => set |= 1 << day_index(part).ok_or_else(bad)?,
            Some((from, to)) => {
                let from = day_index(from).ok_or_else(bad)?;
                let to = day_index(to).ok_or_else(bad)?;
                let mut d = from;
                loop {
                    set |= 1 << d;
                    if d == to {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
        }
    }
    Ok(set)
}

fn parse_span(s: &str) -> Result<(u16, u16), WindowError> {
    let bad = || WindowError::Times(s.to_string());
    let (start, end) = s.split_once('-').ok_or_else(bad)?;
    let start = parse_clock(start).filter(|&m| m < MINUTES_A_DAY);
    let end = parse_clock(end);
    let (Some(start), Some(end)) = (start, end) else {
        return Err(bad());
    };
    if start == end {
        return Err(WindowError::EmptySpan(s.to_string()));
    }
    Ok((start, end))
}

/// `HH:MM` as minutes since midnight; `24:00` is the end of the day.
fn parse_clock(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    match (h, m) {
        (24, 0) => Some(MINUTES_A_DAY),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// The windows of `node.schedule`: the node takes work inside any of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    windows: Vec<Window>,
}

impl Schedule {
    /// A schedule of at least one window.
    pub fn new(windows: Vec<Window>) -> Option<Self> {
        (!windows.is_empty()).then_some(Self { windows })
    }

    /// Whether `t` is inside any window.
    pub fn contains(&self, t: LocalTime) -> bool {
        self.windows.iter().any(|w| w.contains(t))
    }

    pub fn windows(&self) -> &[Window] {
        &self.windows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: &str, h: u16, m: u16) -> LocalTime {
        LocalTime::new(day, h, m).unwrap()
    }

    fn schedule(windows: &[&str]) -> Schedule {
        Schedule::new(windows.iter().map(|w| w.parse().unwrap()).collect()).unwrap()
    }

    #[test]
    fn nights_and_weekends() {
        let s = schedule(&["mon-fri 19:00-07:00", "sat-sun"]);
        // A weekday: out during the day, in from 19:00 and until 07:00 the next morning.
        assert!(!s.contains(at("wed", 12, 0)));
        assert!(!s.contains(at("wed", 18, 59)));
        assert!(s.contains(at("wed", 19, 0)));
        assert!(s.contains(at("wed", 23, 59)));
        assert!(s.contains(at("thu", 0, 0)));
        assert!(s.contains(at("thu", 6, 59)));
        assert!(!s.contains(at("thu", 7, 0)));
        // Friday night runs into Saturday, which is listed anyway.
        assert!(s.contains(at("sat", 6, 0)));
        assert!(s.contains(at("sat", 12, 0)));
        // Across the weekend's end: "sat-sun" stops at Sunday midnight and Monday's night
        // starts on Monday evening, so Monday's small hours are out.
        assert!(s.contains(at("sun", 23, 59)));
        assert!(!s.contains(at("mon", 0, 30)));
        assert!(!s.contains(at("mon", 7, 0)));
        assert!(s.contains(at("tue", 6, 59)));
    }

    #[test]
    fn a_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let s = schedule(&["fri 22:00-02:00"]);
        assert!(!s.contains(at("fri", 21, 59)));
        assert!(s.contains(at("fri", 22, 0)));
        // Across the weekday boundary: Saturday's small hours belong to Friday night.
        assert!(s.contains(at("sat", 1, 59)));
        assert!(!s.contains(at("sat", 2, 0)));
        assert!(!s.contains(at("sat", 22, 30)));
        // Friday's own small hours belong to Thursday night, which is not listed.
        assert!(!s.contains(at("fri", 1, 0)));
        // Sunday night runs into Monday: the week wraps.
        let s = schedule(&["sun 23:00-01:00"]);
        assert!(s.contains(at("mon", 0, 59)));
        assert!(!s.contains(at("mon", 1, 0)));
    }

    #[test]
    fn days_alone_times_alone_lists_and_wrapping_ranges() {
        let s = schedule(&["09:00-17:00"]);
        assert!(s.contains(at("sun", 9, 0)) && !s.contains(at("sun", 17, 0)));
        let s = schedule(&["fri-mon"]);
        for (day, inside) in [
            ("thu", false),
            ("fri", true),
            ("sat", true),
            ("sun", true),
            ("mon", true),
            ("tue", false),
        ] {
            assert_eq!(s.contains(at(day, 12, 0)), inside, "{day}");
        }
        let s = schedule(&["Mon,wed,sat-sun 20:00-24:00"]);
        assert!(s.contains(at("wed", 23, 59)));
        assert!(!s.contains(at("thu", 0, 0)));
        assert!(!s.contains(at("tue", 21, 0)));
        let s = schedule(&["daily 00:00-24:00"]);
        assert!(s.contains(at("tue", 0, 0)) && s.contains(at("tue", 23, 59)));
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let err = |w: &str| w.parse::<Window>().unwrap_err();
        assert_eq!(err(""), WindowError::Empty);
        assert_eq!(
            err("mon-fry 19:00-07:00"),
            WindowError::Day("mon-fry".into())
        );
        assert_eq!(err("weekends"), WindowError::Day("weekends".into()));
        assert_eq!(err("mon 19:00"), WindowError::Times("19:00".into()));
        assert_eq!(
            err("mon 25:00-07:00"),
            WindowError::Times("25:00-07:00".into())
        );
        assert_eq!(err("mon 7:5-08:00"), WindowError::Times("7:5-08:00".into()));
        assert_eq!(
            err("mon 24:00-07:00"),
            WindowError::Times("24:00-07:00".into())
        );
        assert_eq!(
            err("mon 08:00-08:00"),
            WindowError::EmptySpan("08:00-08:00".into())
        );
        assert_eq!(err("mon 08:00-09:00 x"), WindowError::Extra("x".into()));
        assert!(
            err("mon-fry")
                .to_string()
                .contains("\"mon-fry\" is not a day")
        );
        assert!(Schedule::new(vec![]).is_none());
    }
}
