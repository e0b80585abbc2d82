//! The work queue of the pool's workers, also the event loops' offload threads: jobs handed
//! out oldest first to whichever worker is idle, and, for the pool, the leadership (the turn
//! to wait for readiness) passed between them.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

/// Jobs waiting for a worker.
pub(super) struct WorkQueue<J> {
    state: Mutex<QueueState<J>>,
    /// Signalled when a job is queued, the leadership is free, or the queue closes.
    changed: Condvar,
}

struct QueueState<J> {
    jobs: VecDeque<J>,
    /// Workers waiting: a change wakes one only when one waits.
    idle: usize,
    /// Whether a worker is leading (waiting for readiness). Always set in a queue without
    /// leadership, so that no worker is ever asked to lead.
    leading: bool,
    /// No more jobs will come: workers exit once the queue is empty.
    closed: bool,
}

/// What a worker does next.
pub(super) enum Turn<J> {
    Work(J),
    /// Wait for readiness (only in a queue with leadership): see [`WorkQueue::end_lead`].
    Lead,
    Exit,
}

impl<J> WorkQueue<J> {
    /// A queue whose workers also take turns leading (the pool).
    pub(super) fn with_leadership() -> WorkQueue<J> {
        WorkQueue::new(false)
    }

    /// A queue of jobs only (the event loops' offload threads).
    pub(super) fn jobs_only() -> WorkQueue<J> {
        WorkQueue::new(true)
    }

    fn new(leading: bool) -> WorkQueue<J> {
        WorkQueue {
            state: Mutex::new(QueueState { jobs: VecDeque::new(), idle: 0, leading, closed: false }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a job, or for the leadership to be free.
    pub(super) fn next_turn(&self) -> Turn<J> {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Turn::Work(job);
            }
            if state.closed {
                return Turn::Exit;
            }
            if !state.leading {
                state.leading = true;
                return Turn::Lead;
            }
            state.idle += 1;
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }

    /// Queues one job and wakes an idle worker for it.
    pub(super) fn push(&self, job: J) {
        let mut state = self.lock();
        state.jobs.push_back(job);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.changed.notify_one();
        }
    }

    /// Ends a turn as leader: queues the jobs it found, frees the leadership, wakes idle
    /// workers (one to lead and one per queued job), and returns the oldest job for the leader
    /// itself. Oldest first: a leader that served what it just found before what earlier leaders
    /// queued would make the queued requests wait behind newer ones (the tail latency).
    pub(super) fn end_lead(&self, jobs: impl Iterator<Item = J>) -> Option<J> {
        let mut state = self.lock();
        state.jobs.extend(jobs);
        state.leading = false;
        let mine = state.jobs.pop_front();
        let wake = state.idle.min(state.jobs.len() + 1);
        drop(state);
        for _ in 0..wake {
            self.changed.notify_one();
        }
        mine
    }

    /// Lets the workers finish what is queued, then exit.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_come_out_oldest_first_and_a_jobs_only_queue_never_asks_to_lead() {
        let queue = WorkQueue::jobs_only();
        queue.push(1);
        queue.push(2);
        assert!(matches!(queue.next_turn(), Turn::Work(1)));
        assert!(matches!(queue.next_turn(), Turn::Work(2)));
        queue.close();
        assert!(matches!(queue.next_turn(), Turn::Exit));
    }

    #[test]
    fn the_leader_serves_the_oldest_job_and_frees_the_leadership() {
        let queue = WorkQueue::with_leadership();
        assert!(matches!(queue.next_turn(), Turn::Lead));
        queue.push(1);
        assert_eq!(queue.end_lead([2, 3].into_iter()), Some(1));
        assert!(matches!(queue.next_turn(), Turn::Work(2)));
        assert!(matches!(queue.next_turn(), Turn::Work(3)));
        assert!(matches!(queue.next_turn(), Turn::Lead));
    }
}
