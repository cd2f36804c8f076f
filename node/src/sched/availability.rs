//! "May this volunteer claim a new job now?": the owner's conditions in one pure decision.
//!
//! The actor gathers the inputs once a second (the paused flag, the local time, the
//! 1-minute load average from `/proc/loadavg`) and hands the answer to
//! [`Volunteer::set_unavailable`](super::Volunteer::set_unavailable) and to its advert.
//! Jobs already running are not affected: only `barn pause --stop` stops those.

use barn_protocol::message::Unavailable;

use super::window::{LocalTime, Schedule};

/// What the decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct Conditions<'a> {
    /// The owner ran `barn pause` (and not `barn resume` since).
    pub paused: bool,
    /// `node.schedule`; `None`: at any time.
    pub schedule: Option<&'a Schedule>,
    /// Now, in the node's local time.
    pub local: LocalTime,
    /// `node.max_load`; `None`: no limit.
    pub max_load: Option<f64>,
    /// The 1-minute load average; `None` when it could not be read (then no limit applies).
    pub load: Option<f64>,
}

/// Why the node may not claim now; empty: it may.
pub fn unavailable(c: &Conditions<'_>) -> Vec<Unavailable> {
    let mut why = Vec::new();
    if c.paused {
        why.push(Unavailable::Paused);
    }
    if c.schedule.is_some_and(|s| !s.contains(c.local)) {
        why.push(Unavailable::OutsideSchedule);
    }
    if over_load(c.load, c.max_load) {
        why.push(Unavailable::OverLoadLimit);
    }
    why
}

/// Whether `load` is above the limit `max` (as the Guix build agent's
/// `max-1min-load-average`: equal to the limit is still fine).
pub fn over_load(load: Option<f64>, max: Option<f64>) -> bool {
    matches!((load, max), (Some(load), Some(max)) if load > max)
}

/// `/proc/loadavg` could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("/proc/loadavg does not start with a load average: {0:?}")]
pub struct LoadAvgError(pub String);

/// The 1-minute load average from the text of `/proc/loadavg` (`0.52 0.58 0.59 1/467 12345`).
pub fn parse_loadavg(text: &str) -> Result<f64, LoadAvgError> {
    text.split_whitespace()
        .next()
        .and_then(|w| w.parse::<f64>().ok())
        .filter(|l| l.is_finite() && *l >= 0.0)
        .ok_or_else(|| LoadAvgError(text.chars().take(60).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conditions(schedule: Option<&Schedule>) -> Conditions<'_> {
        Conditions {
            paused: false,
            schedule,
            local: LocalTime::new("wed", 12, 0).unwrap(),
            max_load: None,
            load: None,
        }
    }

    #[test]
    fn the_load_limit_refuses_above_it_and_only_when_set() {
        assert!(over_load(Some(4.01), Some(4.0)));
        assert!(!over_load(Some(4.0), Some(4.0)));
        assert!(!over_load(Some(0.5), Some(4.0)));
        assert!(!over_load(Some(100.0), None));
        assert!(!over_load(None, Some(4.0)));
        let mut c = conditions(None);
        c.max_load = Some(1.5);
        c.load = Some(2.0);
        assert_eq!(unavailable(&c), vec![Unavailable::OverLoadLimit]);
        c.load = Some(1.0);
        assert_eq!(unavailable(&c), vec![]);
    }

    #[test]
    fn every_reason_is_reported_and_none_means_available() {
        let nights = Schedule::new(vec!["19:00-07:00".parse().unwrap()]).unwrap();
        let c = conditions(Some(&nights));
        assert_eq!(unavailable(&c), vec![Unavailable::OutsideSchedule]);
        let c = Conditions {
            paused: true,
            max_load: Some(1.0),
            load: Some(3.0),
            ..c
        };
        assert_eq!(
            unavailable(&c),
            vec![
                Unavailable::Paused,
                Unavailable::OutsideSchedule,
                Unavailable::OverLoadLimit
            ]
        );
        let c = Conditions {
            local: LocalTime::new("wed", 23, 0).unwrap(),
            paused: false,
            load: Some(0.5),
            ..c
        };
        assert_eq!(unavailable(&c), vec![]);
        assert_eq!(unavailable(&conditions(None)), vec![]);
    }

    #[test]
    fn loadavg_is_read_from_its_first_field() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Ok(0.52));
        assert_eq!(parse_loadavg("12.00 1 1 1/1 1"), Ok(12.0));
        assert!(parse_loadavg("").is_err());
        assert!(parse_loadavg("busy 1 1").is_err());
        assert!(parse_loadavg("-1 1 1").is_err());
    }
}
