//! The prefork master's decisions, as a pure state machine: events in (a worker was spawned,
//! reported that it serves, exited; a signal; the clock), actions out (spawn a worker, signal
//! one, stop). No system call happens here, so every rule is unit-tested without forking; the
//! master loop in `prefork` does the syscalls.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::logging::Level;

/// Exit status of a worker whose handler factory failed (gunicorn's `WORKER_BOOT_ERROR`).
pub(crate) const BOOT_ERROR: i32 = 3;

/// A crash this soon after a worker was spawned counts as a crash loop and backs off.
const FAST_CRASH: Duration = Duration::from_secs(1);
/// The first wait before spawning again after a fast crash or a boot failure; it doubles with
/// each one in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a worker killed for its timeout gets between SIGTERM and SIGKILL.
pub(crate) const OVERDUE_GRACE: Duration = Duration::from_secs(2);
/// How often the master wants a [`Event::Tick`] while it has something to watch.
pub(crate) const TICK: Duration = Duration::from_millis(100);

/// Signals with a meaning to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sig {
    Term,
    Kill,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// The master started: spawn the first workers.
    Start,
    /// The clock moved on.
    Tick,
    /// A worker of `generation` was forked as `pid` (after [`Action::Spawn`]).
    Spawned { pid: i32, generation: u32 },
    /// Forking failed (after [`Action::Spawn`]).
    SpawnFailed,
    /// The worker built its handler and serves.
    Ready { pid: i32 },
    /// The worker exited with `code` (128 + signal when killed).
    Exited { pid: i32, code: i32 },
    /// The worker is stuck (`why`: its request or its heartbeat is older than the timeout).
    Overdue { pid: i32, why: String },
    /// The worker served its `max_requests`: replace it, new worker first.
    Recycle { pid: i32 },
    /// TERM: stop gracefully.
    GracefulStop,
    /// INT or QUIT: stop now.
    QuickStop,
    /// HUP: new workers first, then retire the old ones.
    Reload,
    /// TTIN: one worker more.
    MoreWorkers,
    /// TTOU: one worker fewer (never below one).
    FewerWorkers,
    /// WINCH: every worker stops gracefully and none is started; the master stays, for a `HUP`
    /// that brings them back or a `TERM` (the old master of a binary upgrade).
    StopWorkers,
}

/// What the master must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Fork a worker of this generation, then report [`Event::Spawned`] or [`Event::SpawnFailed`].
    Spawn {
        generation: u32,
    },
    Signal {
        pid: i32,
        sig: Sig,
    },
    Log(Level, String),
    /// The first workers all serve: the service is up (once per master).
    Serving,
    /// Every worker is gone: return from `serve`, with an error message if the service failed.
    Done(Result<(), String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Booting,
    Serving,
    /// Serving, and due for recycling (`max_requests`): it retires once a replacement serves.
    Recycling,
    /// Told to stop (SIGTERM); killed (SIGKILL) if still there at `deadline`.
    Stopping {
        deadline: Instant,
        killed: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Worker {
    generation: u32,
    spawned: Instant,
    state: State,
}

/// The master's view of its workers.
#[derive(Debug)]
pub(crate) struct Arbiter {
    target: usize,
    grace: Duration,
    /// The generation new workers belong to; a reload starts the next one.
    generation: u32,
    /// The generation that serves while a newer one boots (`None` outside a reload).
    previous: Option<u32>,
    workers: BTreeMap<i32, Worker>,
    /// Forks asked for and not yet reported.
    spawning: usize,
    /// Boot failures and fast crashes in a row, and when spawning may resume.
    failures: u32,
    resume_at: Option<Instant>,
    /// Stopping: graceful (`Some(deadline)`) or quick (`None`).
    stopping: Option<Option<Instant>>,
    /// Why the service failed, once it did.
    failed: Option<String>,
    done: bool,
    /// Whether [`Action::Serving`] was given.
    announced: bool,
    /// The target to come back to, while the workers are stopped by [`Event::StopWorkers`].
    parked: Option<usize>,
}

impl Arbiter {
    /// `target` workers; a graceful stop or a retirement waits `grace` before SIGKILL.
    pub(crate) fn new(target: usize, grace: Duration) -> Arbiter {
        Arbiter {
            target: target.max(1),
            grace,
            generation: 0,
            previous: None,
            workers: BTreeMap::new(),
            spawning: 0,
            failures: 0,
            resume_at: None,
            stopping: None,
            failed: None,
            done: false,
            announced: false,
            parked: None,
        }
    }

    /// Worker pids, for the master to check its children against.
    #[cfg(test)]
    fn pids(&self) -> Vec<i32> {
        self.workers.keys().copied().collect()
    }

    /// How many workers the master keeps.
    #[cfg(test)]
    fn target(&self) -> usize {
        self.target
    }

    /// Whether the master is stopping (it then answers no reload or resize).
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Handles one event at `now`, appending what to do to `actions`.
    pub(crate) fn handle(&mut self, event: Event, now: Instant, actions: &mut Vec<Action>) {
        if self.done {
            return;
        }
        match event {
            Event::Start | Event::Tick => {}
            Event::Spawned { pid, generation } => {
                self.spawning = self.spawning.saturating_sub(1);
                self.workers.insert(pid, Worker { generation, spawned: now, state: State::Booting });
                if self.stopping.is_some() || generation < self.generation && self.previous != Some(generation) {
                    // Forked just before a stop or a newer reload: it is not wanted any more.
                    self.retire(pid, now, actions);
                }
            }
            Event::SpawnFailed => {
                self.spawning = self.spawning.saturating_sub(1);
                self.failed_once(now, actions);
            }
            Event::Ready { pid } => self.ready(pid, now, actions),
            Event::Recycle { pid } => {
                if let Some(w) = self.workers.get_mut(&pid).filter(|w| w.state == State::Serving) {
                    if self.stopping.is_none() {
                        w.state = State::Recycling;
                        actions.push(Action::Log(
                            Level::Info,
                            format!("worker {pid} served its requests: starting its replacement"),
                        ));
                    }
                }
            }
            Event::Overdue { pid, why } => {
                if self.workers.get(&pid).is_some_and(|w| !matches!(w.state, State::Stopping { .. })) {
                    actions.push(Action::Log(
                        Level::Warn,
                        format!("worker {pid} timed out ({why}): killing and replacing it"),
                    ));
                    self.retire_within(pid, now + OVERDUE_GRACE, actions);
                }
            }
            Event::Exited { pid, code } => self.exited(pid, code, now, actions),
            Event::GracefulStop => {
                if self.stopping.is_none() {
                    actions.push(Action::Log(Level::Info, "stopping: workers finish their requests".into()));
                    self.stopping = Some(Some(now + self.grace));
                    let pids: Vec<i32> = self.workers.keys().copied().collect();
                    for pid in pids {
                        self.retire(pid, now, actions);
                    }
                }
            }
            Event::QuickStop => {
                actions.push(Action::Log(Level::Warn, "quick stop: killing the workers".into()));
                self.stopping = Some(None);
                for (&pid, w) in &mut self.workers {
                    if !matches!(w.state, State::Stopping { killed: true, .. }) {
                        w.state = State::Stopping { deadline: now, killed: true };
                        actions.push(Action::Signal { pid, sig: Sig::Kill });
                    }
                }
            }
            Event::StopWorkers if self.stopping.is_none() && self.parked.is_none() => {
                actions.push(Action::Log(
                    Level::Info,
                    "stopping the workers: HUP brings them back, TERM stops the master".into(),
                ));
                self.parked = Some(self.target);
                self.target = 0;
                self.previous = None;
                let pids: Vec<i32> = self.workers.keys().copied().collect();
                for pid in pids {
                    self.retire(pid, now, actions);
                }
            }
            Event::Reload if self.stopping.is_none() && self.parked.is_some() => {
                self.target = self.parked.take().unwrap_or(1);
                self.generation += 1;
                self.failures = 0;
                self.resume_at = None;
                actions.push(Action::Log(Level::Info, format!("bringing back {} worker(s)", self.target)));
            }
            Event::Reload if self.stopping.is_none() => {
                let old = self.generation;
                self.generation += 1;
                // A reload during a reload: the workers of the one that did not finish go, and
                // the generation that served before it keeps serving until the newest is up.
                let serving = self.previous.unwrap_or(old);
                let booting: Vec<i32> = self.pids_of(old).filter(|_| self.previous.is_some()).collect();
                for pid in booting {
                    self.retire(pid, now, actions);
                }
                self.previous = Some(serving);
                // A reload is a fresh start: no backoff carried over.
                self.failures = 0;
                self.resume_at = None;
                actions.push(Action::Log(Level::Info, format!("reloading: starting {} new worker(s)", self.target)));
            }
            Event::MoreWorkers if self.stopping.is_none() && self.parked.is_none() => {
                self.target += 1;
                actions.push(Action::Log(Level::Info, format!("workers: {}", self.target)));
            }
            Event::FewerWorkers if self.stopping.is_none() && self.parked.is_none() => {
                if self.target > 1 {
                    self.target -= 1;
                    actions.push(Action::Log(Level::Info, format!("workers: {}", self.target)));
                }
            }
            Event::Reload | Event::MoreWorkers | Event::FewerWorkers | Event::StopWorkers => {}
        }
        self.settle(now, actions);
    }

    /// When the master needs a [`Event::Tick`] at the latest.
    pub(crate) fn next_tick(&self, now: Instant) -> Option<Duration> {
        (!self.done).then_some(match self.resume_at {
            Some(t) if t > now => (t - now).min(TICK),
            _ => TICK,
        })
    }

    /// The workers of `generation` that count towards the target: booting or serving, not
    /// stopping or due for recycling.
    fn pids_of(&self, generation: u32) -> impl Iterator<Item = i32> + '_ {
        self.workers
            .iter()
            .filter(move |(_, w)| w.generation == generation && matches!(w.state, State::Booting | State::Serving))
            .map(|(&pid, _)| pid)
    }

    /// Every worker of `generation` not yet told to stop.
    fn unstopped_of(&self, generation: u32) -> Vec<i32> {
        self.workers
            .iter()
            .filter(|(_, w)| w.generation == generation && !matches!(w.state, State::Stopping { .. }))
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// Sends SIGTERM to a worker: it finishes its requests and exits, or is killed at the grace
    /// (at a graceful stop's deadline, if one is under way).
    fn retire(&mut self, pid: i32, now: Instant, actions: &mut Vec<Action>) {
        let deadline = match self.stopping {
            Some(Some(deadline)) => deadline,
            _ => now + self.grace,
        };
        self.retire_within(pid, deadline, actions);
    }

    fn retire_within(&mut self, pid: i32, deadline: Instant, actions: &mut Vec<Action>) {
        if let Some(w) = self.workers.get_mut(&pid) {
            match w.state {
                State::Stopping { deadline: d, killed: false } if deadline < d => {
                    w.state = State::Stopping { deadline, killed: false };
                }
                State::Stopping { .. } => {}
                _ => {
                    w.state = State::Stopping { deadline, killed: false };
                    actions.push(Action::Signal { pid, sig: Sig::Term });
                }
            }
        }
    }

    fn ready(&mut self, pid: i32, now: Instant, actions: &mut Vec<Action>) {
        let Some(w) = self.workers.get_mut(&pid) else { return };
        if w.state != State::Booting {
            return;
        }
        w.state = State::Serving;
        self.failures = 0;
        self.resume_at = None;
        if !self.announced && self.workers.values().filter(|w| w.state == State::Serving).count() >= self.target {
            self.announced = true;
            actions.push(Action::Serving);
        }
        // A replacement serves: one worker due for recycling can go.
        let due = self.workers.iter().find(|(_, w)| w.state == State::Recycling).map(|(&pid, _)| pid);
        if let Some(due) = due {
            self.retire(due, now, actions);
        }
        let Some(previous) = self.previous else { return };
        let current = self.generation;
        let up = self.workers.values().filter(|w| w.generation == current && w.state == State::Serving).count();
        if up >= self.target {
            // The new generation serves in full: only now do the old workers go.
            let old = self.unstopped_of(previous);
            actions.push(Action::Log(Level::Info, format!("reloaded: retiring {} old worker(s)", old.len())));
            for pid in old {
                self.retire(pid, now, actions);
            }
            self.previous = None;
        }
    }

    fn exited(&mut self, pid: i32, code: i32, now: Instant, actions: &mut Vec<Action>) {
        let Some(w) = self.workers.remove(&pid) else { return };
        if let State::Stopping { .. } = w.state {
            return;
        }
        let booting = w.state == State::Booting;
        if code == BOOT_ERROR && booting {
            actions.push(Action::Log(Level::Error, format!("worker {pid} failed to boot")));
            if self.previous.is_some() && w.generation == self.generation {
                // The reload's new code cannot boot: keep the old workers, drop the reload.
                let previous = self.previous.take().unwrap_or(0);
                actions.push(Action::Log(
                    Level::Error,
                    "reload failed: new workers cannot boot; the old ones keep serving".into(),
                ));
                let doomed: Vec<i32> = self.pids_of(self.generation).collect();
                for pid in doomed {
                    self.retire(pid, now, actions);
                }
                self.generation = previous;
                return;
            }
            let serving = self.workers.values().any(|w| w.state == State::Serving);
            if !serving && self.stopping.is_none() {
                self.fail("no worker could boot (the handler factory failed)", now, actions);
                return;
            }
            self.failed_once(now, actions);
            return;
        }
        actions.push(Action::Log(Level::Error, format!("worker {pid} exited with status {code}; replacing it")));
        if booting || now.duration_since(w.spawned) < FAST_CRASH {
            self.failed_once(now, actions);
        }
    }

    /// A boot failure or a fast crash: wait longer before the next spawn.
    fn failed_once(&mut self, now: Instant, actions: &mut Vec<Action>) {
        self.failures += 1;
        let backoff = FIRST_BACKOFF.saturating_mul(1 << self.failures.min(16).saturating_sub(1)).min(MAX_BACKOFF);
        if self.failures > 1 {
            actions.push(Action::Log(
                Level::Error,
                format!("{} failures in a row: next worker in {backoff:?}", self.failures),
            ));
        }
        self.resume_at = Some(now + backoff);
    }

    /// The service cannot go on: stop every worker, and report why once they are gone.
    fn fail(&mut self, why: &str, now: Instant, actions: &mut Vec<Action>) {
        actions.push(Action::Log(Level::Info, format!("stopping: {why}")));
        self.failed = Some(why.to_string());
        self.stopping = Some(Some(now + self.grace));
        let pids: Vec<i32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.retire(pid, now, actions);
        }
    }

    /// Spawns what is missing, kills what overstayed its grace, and ends once all are gone.
    fn settle(&mut self, now: Instant, actions: &mut Vec<Action>) {
        for (&pid, w) in &mut self.workers {
            if let State::Stopping { deadline, killed: false } = w.state {
                if now >= deadline {
                    w.state = State::Stopping { deadline, killed: true };
                    actions.push(Action::Log(Level::Warn, format!("worker {pid} did not stop in time: killing it")));
                    actions.push(Action::Signal { pid, sig: Sig::Kill });
                }
            }
        }
        if self.stopping.is_some() {
            if self.workers.is_empty() && self.spawning == 0 {
                self.done = true;
                actions.push(Action::Done(self.failed.take().map_or(Ok(()), Err)));
            }
            return;
        }
        // Too many (after TTOU): the newest of the current generation go first.
        let current: Vec<i32> = self.pids_of(self.generation).collect();
        if current.len() > self.target {
            for &pid in current.iter().rev().take(current.len() - self.target) {
                self.retire(pid, now, actions);
            }
        }
        if self.resume_at.is_some_and(|t| now < t) {
            return;
        }
        let have = self.pids_of(self.generation).count() + self.spawning;
        // After a failure, one at a time until one serves.
        let want = if self.failures > 0 { (have < self.target) as usize } else { self.target.saturating_sub(have) };
        for _ in 0..want {
            self.spawning += 1;
            actions.push(Action::Spawn { generation: self.generation });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives an arbiter, forking imaginary workers with increasing pids.
    struct Master {
        arbiter: Arbiter,
        now: Instant,
        next_pid: i32,
        log: Vec<String>,
        signals: Vec<(i32, Sig)>,
        done: Option<Result<(), String>>,
        serving: usize,
    }

    impl Master {
        fn start(workers: usize) -> Master {
            let mut m = Master {
                arbiter: Arbiter::new(workers, Duration::from_secs(5)),
                now: Instant::now(),
                next_pid: 100,
                serving: 0,
                log: Vec::new(),
                signals: Vec::new(),
                done: None,
            };
            m.event(Event::Start);
            m
        }

        fn event(&mut self, event: Event) {
            let mut queue = vec![event];
            while let Some(e) = queue.pop() {
                let mut actions = Vec::new();
                self.arbiter.handle(e, self.now, &mut actions);
                for a in actions {
                    match a {
                        Action::Spawn { generation } => {
                            self.next_pid += 1;
                            queue.push(Event::Spawned { pid: self.next_pid, generation });
                        }
                        Action::Signal { pid, sig } => self.signals.push((pid, sig)),
                        Action::Log(_, l) => self.log.push(l),
                        Action::Serving => self.serving += 1,
                        Action::Done(r) => self.done = Some(r),
                    }
                }
            }
        }

        fn ready_all(&mut self) {
            for pid in self.arbiter.pids() {
                self.event(Event::Ready { pid });
            }
        }

        fn after(&mut self, d: Duration) {
            self.now += d;
            self.event(Event::Tick);
        }

        fn terms(&self) -> Vec<i32> {
            self.signals.iter().filter(|s| s.1 == Sig::Term).map(|s| s.0).collect()
        }
    }

    #[test]
    fn winch_stops_every_worker_and_hup_brings_them_back() {
        let mut m = Master::start(2);
        m.ready_all();
        m.after(Duration::from_secs(10));
        m.event(Event::StopWorkers);
        assert_eq!(m.terms(), vec![101, 102]);
        m.event(Event::Exited { pid: 101, code: 0 });
        m.event(Event::Exited { pid: 102, code: 0 });
        m.after(Duration::from_secs(10));
        assert!(m.arbiter.pids().is_empty(), "none replaced");
        assert_eq!(m.done, None, "the master stays");
        m.event(Event::MoreWorkers);
        assert!(m.arbiter.pids().is_empty(), "no resize while stopped");
        m.event(Event::Reload);
        assert_eq!(m.arbiter.pids(), vec![103, 104], "HUP brings both back");
        m.ready_all();
        m.event(Event::StopWorkers);
        m.event(Event::GracefulStop);
        m.event(Event::Exited { pid: 103, code: 0 });
        m.event(Event::Exited { pid: 104, code: 0 });
        assert_eq!(m.done, Some(Ok(())));
    }

    #[test]
    fn the_service_is_up_once_every_first_worker_serves() {
        let mut m = Master::start(2);
        m.event(Event::Ready { pid: 101 });
        assert_eq!(m.serving, 0, "one of two workers is not the service up");
        m.event(Event::Ready { pid: 102 });
        assert_eq!(m.serving, 1);
        m.event(Event::Exited { pid: 101, code: 137 });
        m.ready_all();
        m.event(Event::Reload);
        m.ready_all();
        assert_eq!(m.serving, 1, "announced once, not again for replacements or reloads");
    }

    #[test]
    fn starts_its_workers_and_replaces_one_that_dies() {
        let mut m = Master::start(3);
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103]);
        m.ready_all();
        m.after(Duration::from_secs(10));
        m.event(Event::Exited { pid: 102, code: 137 });
        assert_eq!(m.arbiter.pids(), vec![101, 103, 104]);
        assert!(m.log.iter().any(|l| l.contains("worker 102 exited with status 137")), "{:?}", m.log);
    }

    #[test]
    fn a_crash_loop_backs_off_and_doubles() {
        let mut m = Master::start(1);
        m.ready_all();
        m.after(Duration::from_secs(10));
        m.event(Event::Exited { pid: 101, code: 139 });
        // Long-lived worker: replaced at once.
        assert_eq!(m.arbiter.pids(), vec![102]);
        m.event(Event::Ready { pid: 102 });
        m.event(Event::Exited { pid: 102, code: 139 });
        // Crashed within a second: the replacement waits.
        assert!(m.arbiter.pids().is_empty());
        m.after(Duration::from_millis(50));
        assert!(m.arbiter.pids().is_empty());
        m.after(Duration::from_millis(60));
        assert_eq!(m.arbiter.pids(), vec![103]);
        m.event(Event::Exited { pid: 103, code: 139 });
        m.after(Duration::from_millis(150));
        assert!(m.arbiter.pids().is_empty(), "the second wait is 200 ms");
        m.after(Duration::from_millis(60));
        assert_eq!(m.arbiter.pids(), vec![104]);
    }

    #[test]
    fn when_no_worker_can_boot_the_master_stops_with_the_reason() {
        let mut m = Master::start(2);
        m.event(Event::Exited { pid: 101, code: BOOT_ERROR });
        assert_eq!(m.terms(), vec![102]);
        m.event(Event::Exited { pid: 102, code: 143 });
        assert_eq!(m.done, Some(Err("no worker could boot (the handler factory failed)".into())));
    }

    #[test]
    fn a_reload_retires_the_old_workers_only_once_every_new_one_serves() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::Reload);
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103, 104]);
        m.event(Event::Ready { pid: 103 });
        assert!(m.terms().is_empty(), "one new worker is not enough");
        m.event(Event::Ready { pid: 104 });
        assert_eq!(m.terms(), vec![101, 102]);
        m.event(Event::Exited { pid: 101, code: 0 });
        m.event(Event::Exited { pid: 102, code: 0 });
        assert_eq!(m.arbiter.pids(), vec![103, 104]);
        m.after(Duration::from_secs(1));
        assert_eq!(m.arbiter.pids(), vec![103, 104], "nothing more to spawn");
    }

    #[test]
    fn a_reload_whose_workers_cannot_boot_keeps_the_old_ones() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::Reload);
        m.event(Event::Exited { pid: 103, code: BOOT_ERROR });
        assert_eq!(m.terms(), vec![104]);
        m.event(Event::Exited { pid: 104, code: 143 });
        assert!(m.log.iter().any(|l| l.contains("reload failed")), "{:?}", m.log);
        m.after(Duration::from_secs(1));
        assert_eq!(m.arbiter.pids(), vec![101, 102]);
        assert_eq!(m.done, None);
        // The old ones are still replaced when they die.
        m.after(Duration::from_secs(10));
        m.event(Event::Exited { pid: 101, code: 137 });
        assert_eq!(m.arbiter.pids(), vec![102, 105]);
    }

    #[test]
    fn a_graceful_stop_terms_then_kills_at_the_grace_and_ends_when_all_are_gone() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::GracefulStop);
        assert_eq!(m.terms(), vec![101, 102]);
        m.event(Event::Exited { pid: 101, code: 0 });
        m.after(Duration::from_secs(6));
        assert!(m.signals.contains(&(102, Sig::Kill)));
        assert_eq!(m.done, None);
        m.event(Event::Exited { pid: 102, code: 137 });
        assert_eq!(m.done, Some(Ok(())));
        m.event(Event::Reload);
        assert_eq!(m.arbiter.pids(), Vec::<i32>::new(), "nothing after the end");
    }

    #[test]
    fn an_overdue_worker_is_replaced_at_once_and_killed_after_a_short_grace() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::Overdue { pid: 101, why: "request running for 31s".into() });
        assert_eq!(m.terms(), vec![101]);
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103], "its replacement starts now");
        m.after(OVERDUE_GRACE / 2);
        assert!(!m.signals.contains(&(101, Sig::Kill)));
        m.after(OVERDUE_GRACE);
        assert!(m.signals.contains(&(101, Sig::Kill)));
        // Reported again while it dies: nothing more.
        let before = m.signals.len();
        m.event(Event::Overdue { pid: 101, why: "again".into() });
        assert_eq!(m.signals.len(), before);
    }

    #[test]
    fn a_worker_due_for_recycling_retires_only_once_its_replacement_serves() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::Recycle { pid: 101 });
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103], "the replacement first");
        assert!(m.terms().is_empty(), "the old one serves meanwhile");
        m.event(Event::Recycle { pid: 101 });
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103], "asked twice, replaced once");
        m.event(Event::Ready { pid: 103 });
        assert_eq!(m.terms(), vec![101]);
        m.event(Event::Exited { pid: 101, code: 0 });
        m.after(Duration::from_secs(1));
        assert_eq!(m.arbiter.pids(), vec![102, 103]);
    }

    #[test]
    fn a_quick_stop_kills_at_once() {
        let mut m = Master::start(2);
        m.event(Event::QuickStop);
        assert_eq!(m.signals, vec![(101, Sig::Kill), (102, Sig::Kill)]);
        m.event(Event::Exited { pid: 101, code: 137 });
        m.event(Event::Exited { pid: 102, code: 137 });
        assert_eq!(m.done, Some(Ok(())));
    }

    #[test]
    fn ttin_and_ttou_change_the_count_and_the_newest_goes_first() {
        let mut m = Master::start(2);
        m.ready_all();
        m.event(Event::MoreWorkers);
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103]);
        m.event(Event::FewerWorkers);
        assert_eq!(m.terms(), vec![103]);
        m.event(Event::FewerWorkers);
        m.event(Event::FewerWorkers);
        assert_eq!(m.arbiter.target(), 1, "never below one");
        assert_eq!(m.terms(), vec![103, 102]);
    }

    #[test]
    fn a_reload_during_a_reload_keeps_the_serving_generation_until_the_newest_serves() {
        let mut m = Master::start(1);
        m.ready_all();
        m.event(Event::Reload);
        assert_eq!(m.arbiter.pids(), vec![101, 102]);
        m.event(Event::Reload);
        assert_eq!(m.terms(), vec![102], "the unfinished reload's worker goes");
        assert_eq!(m.arbiter.pids(), vec![101, 102, 103]);
        m.event(Event::Ready { pid: 103 });
        assert_eq!(m.terms(), vec![102, 101]);
    }
}
