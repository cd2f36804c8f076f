//! The host's clock over one VM: which phase it is in and when that phase must end.
//!
//! ```text
//!   Boot ──(ready, once)──▶ Run ──(result, once)──▶ Collect
//!   ends by start+BOOT      └──── both end by ready+timeout ────┘
//! ```
//!
//! Every deadline is computed from the host's own clock, starting when QEMU started; the
//! guest's markers can only move the machine forward, each at most once and in order
//! (`ready` only while booting, tasks in index order only while running, `result` only
//! while running). A task shares the console with the init and can print any marker, so
//! no marker after `ready` moves a deadline: the job's timeout covers its tasks *and*
//! writing its outputs (a `result` printed early by a task used to buy two more minutes).
//! However a guest behaves, the VM is stopped by `start + BOOT + timeout`. Markers out of
//! order are ignored and counted (a task printing `barn: ready` every second used to
//! restart the clock).

use std::time::{Duration, Instant};

use barn_protocol::guest::{Mark, task_index};

/// The phase the VM is in, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPhase {
    Boot,
    Run,
    Collect,
}

/// A marker the machine accepted, for the runner to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Ready,
    Vary,
    TaskStarted(usize),
    TaskFinished {
        index: usize,
        exit_code: i32,
        duration_ms: u64,
    },
    Result,
}

/// The phase machine of one VM.
#[derive(Debug)]
pub struct Phases {
    start: Instant,
    boot: Duration,
    timeout: Duration,
    phase: VmPhase,
    ready_at: Option<Instant>,
    result_at: Option<Instant>,
    varied: bool,
    /// The index the next task must have.
    next_task: usize,
    /// The task running, and since when.
    running: Option<(usize, Instant)>,
    /// Markers refused (out of order or repeated).
    pub ignored: u64,
}

impl Phases {
    pub fn new(start: Instant, boot: Duration, timeout: Duration) -> Self {
        Self {
            start,
            boot,
            timeout,
            phase: VmPhase::Boot,
            ready_at: None,
            result_at: None,
            varied: false,
            next_task: 0,
            running: None,
            ignored: 0,
        }
    }

    pub fn phase(&self) -> VmPhase {
        self.phase
    }

    /// When the current phase must have ended.
    pub fn deadline(&self) -> Instant {
        let end = match (self.phase, self.ready_at) {
            (VmPhase::Run | VmPhase::Collect, Some(ready)) => ready + self.timeout,
            _ => self.start + self.boot,
        };
        end.min(self.hard_end())
    }

    /// No VM lives past this, whatever happened.
    pub fn hard_end(&self) -> Instant {
        self.start + self.boot + self.timeout
    }

    /// When the guest said it was ready, and when it said its tasks were over.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }

    pub fn result_at(&self) -> Option<Instant> {
        self.result_at
    }

    /// Whether the guest init said it applied the variations (before it was ready).
    pub fn varied(&self) -> bool {
        self.varied
    }

    /// The task running when the VM was stopped, and since when.
    pub fn running(&self) -> Option<(usize, Instant)> {
        self.running
    }

    /// Takes one marker seen at `now`; returns what it means, or `None` when it is out of
    /// order (ignored).
    pub fn accept(&mut self, mark: Mark, now: Instant) -> Option<Accepted> {
        let accepted = match (self.phase, mark) {
            (VmPhase::Boot, Mark::Vary) if !self.varied => {
                self.varied = true;
                Some(Accepted::Vary)
            }
            (VmPhase::Boot, Mark::Ready) => {
                self.phase = VmPhase::Run;
                self.ready_at = Some(now);
                Some(Accepted::Ready)
            }
            (VmPhase::Run, Mark::TaskStart(name))
                if self.running.is_none() && task_index(&name) == Some(self.next_task) =>
            {
                self.running = Some((self.next_task, now));
                Some(Accepted::TaskStarted(self.next_task))
            }
            (
                VmPhase::Run,
                Mark::TaskExit {
                    name,
                    exit_code,
                    duration_ms,
                },
            ) if self
                .running
                .is_some_and(|(i, _)| task_index(&name) == Some(i)) =>
            {
                let index = self.next_task;
                self.running = None;
                self.next_task += 1;
                Some(Accepted::TaskFinished {
                    index,
                    exit_code,
                    duration_ms,
                })
            }
            (VmPhase::Run, Mark::Result) => {
                self.phase = VmPhase::Collect;
                self.result_at = Some(now);
                self.running = None;
                Some(Accepted::Result)
            }
            _ => None,
        };
        if accepted.is_none() {
            self.ignored += 1;
        }
        accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn task(name: &str, exit: Option<i32>) -> Mark {
        match exit {
            None => Mark::TaskStart(name.into()),
            Some(exit_code) => Mark::TaskExit {
                name: name.into(),
                exit_code,
                duration_ms: 1,
            },
        }
    }

    #[test]
    fn markers_never_extend_a_deadline() {
        let t0 = Instant::now();
        let mut p = Phases::new(t0, 120 * S, 8 * S);
        assert_eq!(p.deadline(), t0 + 120 * S);
        assert_eq!(p.accept(Mark::Ready, t0 + S), Some(Accepted::Ready));
        let run_end = t0 + 9 * S;
        assert_eq!(p.deadline(), run_end);
        // A task printing the host's markers every second, for 200 seconds.
        for i in 2..200 {
            let now = t0 + i * S;
            assert_eq!(p.accept(Mark::Ready, now), None);
            assert_eq!(p.accept(Mark::Vary, now), None);
            assert_eq!(p.deadline(), run_end, "after {i} s");
        }
        assert_eq!(p.phase(), VmPhase::Run);
        // `result` ends the run once, and gives no more time: writing the outputs is
        // within the timeout; a second one changes nothing either.
        assert_eq!(p.accept(Mark::Result, t0 + 5 * S), Some(Accepted::Result));
        assert_eq!(p.phase(), VmPhase::Collect);
        assert_eq!(p.deadline(), run_end);
        assert_eq!(p.accept(Mark::Result, t0 + 100 * S), None);
        assert_eq!(p.accept(Mark::Ready, t0 + 100 * S), None);
        assert_eq!(p.deadline(), run_end);
        assert!(p.deadline() <= p.hard_end());
        assert!(p.ignored >= 2 * 198 + 2);
    }

    #[test]
    fn tasks_are_accepted_once_and_in_order() {
        let t0 = Instant::now();
        let mut p = Phases::new(t0, 10 * S, 10 * S);
        assert_eq!(p.accept(task("000-a", None), t0), None, "before ready");
        p.accept(Mark::Ready, t0);
        assert_eq!(p.accept(task("001-b", None), t0), None, "out of order");
        assert_eq!(
            p.accept(task("000-a", None), t0),
            Some(Accepted::TaskStarted(0))
        );
        assert_eq!(p.accept(task("000-a", None), t0), None, "twice");
        assert_eq!(p.accept(task("001-b", Some(0)), t0), None, "not running");
        assert!(matches!(
            p.accept(task("000-a", Some(2)), t0),
            Some(Accepted::TaskFinished {
                index: 0,
                exit_code: 2,
                ..
            })
        ));
        assert_eq!(p.accept(task("000-a", Some(0)), t0), None, "finished twice");
        assert_eq!(
            p.accept(task("001-b", None), t0 + S),
            Some(Accepted::TaskStarted(1))
        );
        assert_eq!(p.running().map(|(i, _)| i), Some(1));
    }

    #[test]
    fn vary_counts_only_while_booting() {
        let t0 = Instant::now();
        let mut p = Phases::new(t0, S, S);
        p.accept(Mark::Ready, t0);
        assert_eq!(p.accept(Mark::Vary, t0), None);
        assert!(!p.varied());
    }
}
