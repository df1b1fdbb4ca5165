//! The scheduler's decisions, without the hardware: who runs next, who waits in the run
//! queue and among the sleepers, and when the one-shot timer must fire.
//!
//! There is no periodic tick (a timer interrupt in user mode costs ~30 µs on kvm_pvm): the
//! timer is armed only for a quantum while another thread is runnable, or for the earliest
//! sleeper's deadline. The kernel keeps thread states itself and asks this queue what to do;
//! every method that may need the timer returns an [`Arm`] for the caller to program.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Program the one-shot timer to fire at `deadline` (`now` is when that was decided, both
/// in ns since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Arm {
    pub deadline: u64,
    pub now: u64,
}

pub struct RunQueue<T> {
    ready: VecDeque<T>,
    current: Option<T>,
    /// Sleeping threads and their deadlines.
    sleepers: Vec<(u64, T)>,
    /// When the armed timer fires, if it is armed.
    timer: Option<u64>,
    quantum: u64,
}

impl<T: Copy + Eq> RunQueue<T> {
    pub const fn new(quantum: u64) -> Self {
        RunQueue {
            ready: VecDeque::new(),
            current: None,
            sleepers: Vec::new(),
            timer: None,
            quantum,
        }
    }

    pub fn current(&self) -> Option<T> {
        self.current
    }

    pub fn set_current(&mut self, t: Option<T>) {
        self.current = t;
    }

    pub fn take_current(&mut self) -> Option<T> {
        self.current.take()
    }

    pub fn ready(&self) -> impl Iterator<Item = T> + '_ {
        self.ready.iter().copied()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn has_sleepers(&self) -> bool {
        !self.sleepers.is_empty()
    }

    /// Queues `t` at the back unless it is queued or running already; no timer decision
    /// (the caller is about to schedule).
    pub fn push_ready(&mut self, t: T) {
        if !self.ready.contains(&t) && self.current != Some(t) {
            self.ready.push_back(t);
        }
    }

    /// Queues `t` and makes sure the running thread will be preempted for it within a
    /// quantum even if it never enters the kernel again (`spawn(child); loop {}`).
    #[must_use = "the timer must be programmed as decided"]
    pub fn enqueue(&mut self, t: T, now: impl FnOnce() -> u64) -> Option<Arm> {
        self.push_ready(t);
        self.arm_preemption(now)
    }

    /// Arms the quantum if a thread runs, another waits and no timer is armed.
    #[must_use = "the timer must be programmed as decided"]
    pub fn arm_preemption(&mut self, now: impl FnOnce() -> u64) -> Option<Arm> {
        if self.current.is_some() && self.timer.is_none() && !self.ready.is_empty() {
            let now = now();
            return self.ensure_timer(now + self.quantum, now);
        }
        None
    }

    /// `next` runs at once in place of the running thread (a direct IPC hand-off), which
    /// goes to the back of the queue if `requeue`, else is left to the caller (it blocked).
    pub fn hand_off(&mut self, next: T, requeue: bool) {
        let old = self.current.replace(next);
        self.ready.retain(|&q| q != next);
        if let Some(old) = old.filter(|&o| requeue && o != next && !self.ready.contains(&o)) {
            self.ready.push_back(old);
        }
    }

    /// The next thread from the front of the queue.
    pub fn pop_ready(&mut self) -> Option<T> {
        self.ready.pop_front()
    }

    /// Takes `t` out of the run queue and the sleepers (it stopped or ended).
    pub fn forget(&mut self, t: T) {
        self.ready.retain(|&q| q != t);
        self.sleepers.retain(|&(_, q)| q != t);
    }

    pub fn sleep(&mut self, t: T, deadline: u64) {
        self.sleepers.push((deadline, t));
    }

    /// A sleeper whose deadline has come, taken out of the sleepers (call until `None`).
    pub fn take_due(&mut self, now: u64) -> Option<T> {
        let i = self.sleepers.iter().position(|&(d, _)| d <= now)?;
        Some(self.sleepers.swap_remove(i).1)
    }

    pub fn earliest_sleeper(&self) -> Option<u64> {
        self.sleepers.iter().map(|&(d, _)| d).min()
    }

    /// Whether the armed timer (if any) already fires no later than `deadline`; else it
    /// must be (re)armed for it.
    #[must_use = "the timer must be programmed as decided"]
    pub fn ensure_timer(&mut self, deadline: u64, now: u64) -> Option<Arm> {
        if self.timer.is_some_and(|d| d <= deadline) {
            return None;
        }
        self.timer = Some(deadline);
        Some(Arm { deadline, now })
    }

    /// The timer fired: nothing is armed any more.
    pub fn timer_fired(&mut self) {
        self.timer = None;
    }

    pub fn timer(&self) -> Option<u64> {
        self.timer
    }

    /// The thread that really runs is `real` (the floor switch changed it without the
    /// scheduler): it is current and not queued; the one that was current is queued if
    /// `old_runnable` says it can run.
    pub fn adopt_current(&mut self, real: T, old_runnable: impl FnOnce(T) -> bool) {
        let Some(old) = self.current else { return };
        if real != old {
            self.current = Some(real);
            self.ready.retain(|&t| t != real);
            if old_runnable(old) {
                self.ready.push_back(old);
            }
        }
    }

    /// `t` starts running: it is current, and the timer covers a quantum if another thread
    /// waits and the earliest sleeper's deadline (whichever is earlier).
    #[must_use = "the timer must be programmed as decided"]
    pub fn switched_to(&mut self, t: T, now: impl FnOnce() -> u64) -> Option<Arm> {
        self.current = Some(t);
        self.ready.retain(|&q| q != t);
        if self.ready.is_empty() && self.sleepers.is_empty() {
            return None;
        }
        let now = now();
        let quantum =
            (!self.ready.is_empty() && self.timer.is_none()).then_some(now + self.quantum);
        let deadline = quantum.into_iter().chain(self.earliest_sleeper()).min()?;
        self.ensure_timer(deadline, now)
    }

    /// After a timer interrupt that did not preempt: the timer covers the earliest sleeper
    /// and, while another thread waits, the next quantum.
    #[must_use = "the timer must be programmed as decided"]
    pub fn rearm_after_timer(&mut self, now: u64) -> Option<Arm> {
        let quantum = (!self.ready.is_empty()).then_some(now + self.quantum);
        let deadline = self.earliest_sleeper().into_iter().chain(quantum).min()?;
        self.ensure_timer(deadline, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::vec;

    const Q: u64 = 10;

    #[test]
    fn a_thread_queued_beside_a_running_one_arms_the_quantum_once() {
        let mut q = RunQueue::new(Q);
        // Nobody runs: the scheduler picks the thread at once, no timer.
        assert_eq!(q.enqueue(1, || 100), None);
        let first = q.pop_ready();
        q.set_current(first);
        assert_eq!(
            q.enqueue(2, || 100),
            Some(Arm {
                deadline: 110,
                now: 100
            })
        );
        // Armed already: a second waiter changes nothing, nor does queueing twice.
        assert_eq!(q.enqueue(3, || panic!("no clock read needed")), None);
        assert_eq!(q.enqueue(3, || 105), None);
        assert_eq!(q.ready().collect::<Vec<_>>(), [2, 3]);
        // The running thread is never queued beside itself.
        q.push_ready(1);
        assert_eq!(q.ready().collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn an_earlier_sleeper_wins_over_the_quantum_and_a_later_one_does_not() {
        let mut q = RunQueue::new(Q);
        q.push_ready(2);
        q.sleep(3, 104);
        assert_eq!(
            q.switched_to(1, || 100),
            Some(Arm {
                deadline: 104,
                now: 100
            })
        );
        assert_eq!(q.take_due(103), None);
        assert_eq!(q.take_due(104), Some(3));
        q.timer_fired();
        q.sleep(4, 500);
        assert_eq!(
            q.rearm_after_timer(104),
            Some(Arm {
                deadline: 114,
                now: 104
            })
        );
    }

    #[test]
    fn a_lone_thread_takes_no_timer() {
        let mut q = RunQueue::new(Q);
        assert_eq!(q.switched_to(1, || panic!("no clock read needed")), None);
        assert_eq!(q.rearm_after_timer(50), None);
        assert_eq!(q.timer(), None);
    }

    #[test]
    fn a_hand_off_runs_the_receiver_and_requeues_the_sender_only_if_asked() {
        let mut q = RunQueue::new(Q);
        q.set_current(Some(1));
        q.push_ready(2);
        q.push_ready(3);
        q.hand_off(2, true);
        assert_eq!(
            (q.current(), q.ready().collect::<Vec<_>>()),
            (Some(2), vec![3, 1])
        );
        q.hand_off(3, false);
        assert_eq!(
            (q.current(), q.ready().collect::<Vec<_>>()),
            (Some(3), vec![1])
        );
    }

    #[test]
    fn forgetting_a_thread_takes_it_out_of_every_queue() {
        let mut q = RunQueue::new(Q);
        q.push_ready(1);
        q.push_ready(2);
        q.sleep(2, 10);
        q.forget(2);
        assert_eq!(q.ready().collect::<Vec<_>>(), [1]);
        assert_eq!((q.has_sleepers(), q.take_due(u64::MAX)), (false, None));
    }

    #[test]
    fn adopting_the_floor_switchs_thread_requeues_the_old_one_if_runnable() {
        let mut q = RunQueue::new(Q);
        q.set_current(Some(1));
        q.push_ready(2);
        q.adopt_current(2, |_| true);
        assert_eq!(
            (q.current(), q.ready().collect::<Vec<_>>()),
            (Some(2), vec![1])
        );
        q.adopt_current(1, |_| false);
        assert_eq!((q.current(), q.ready().count()), (Some(1), 0));
    }

    /// What the kernel's scheduler does with nobody running: run the first ready thread,
    /// or idle with the timer set for the earliest sleeper.
    fn schedule(q: &mut RunQueue<u32>, now: u64) -> Option<Arm> {
        match q.pop_ready() {
            Some(n) => q.switched_to(n, || now),
            None => q.earliest_sleeper().and_then(|d| q.ensure_timer(d, now)),
        }
    }

    /// A model test: random operations in the kernel's patterns, with the invariants the
    /// kernel relies on checked after each: no live thread is lost (each is running, queued
    /// or asleep), none is both running and queued or queued twice, whenever one runs while
    /// another waits a timer is armed (no starvation), the timer fires no later than the
    /// earliest sleeper's deadline, and no sleeper stays asleep past a timer that fired.
    #[test]
    fn model_run_queue_and_timer_invariants_hold_under_random_operations() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut q = RunQueue::new(Q);
        let mut now = 0u64;
        let mut armed: Option<u64> = None; // what the "hardware" timer was told
        let mut alive: BTreeSet<u32> = BTreeSet::new(); // started and not killed
        let program = |a: Option<Arm>, armed: &mut Option<u64>| {
            if let Some(a) = a {
                *armed = Some(a.deadline);
            }
        };
        for _ in 0..200_000 {
            now += next() % 5;
            let t = (next() % 8) as u32;
            match next() % 8 {
                0 | 1 => {
                    alive.insert(t);
                    let a = q.enqueue(t, || now);
                    program(a, &mut armed);
                }
                2 => {
                    // The running thread sleeps and the scheduler picks another.
                    if let Some(c) = q.take_current() {
                        q.forget(c);
                        q.sleep(c, now + next() % 50);
                    }
                    program(schedule(&mut q, now), &mut armed);
                }
                3 => {
                    // A yield.
                    if let Some(c) = q.take_current() {
                        q.push_ready(c);
                    }
                    program(schedule(&mut q, now), &mut armed);
                }
                4 => {
                    // The timer fires (if due): sleepers wake, and the running thread is
                    // preempted if another waits.
                    if armed.is_some_and(|d| d <= now) {
                        armed = None;
                        q.timer_fired();
                        while let Some(w) = q.take_due(now) {
                            let a = q.enqueue(w, || now);
                            program(a, &mut armed);
                        }
                        assert!(
                            q.earliest_sleeper().is_none_or(|d| d > now),
                            "a due sleeper left asleep"
                        );
                        if q.current().is_some() && q.has_ready() {
                            let c = q.take_current().unwrap();
                            q.push_ready(c);
                            let n = q.pop_ready().unwrap();
                            let a = q.switched_to(n, || now);
                            program(a, &mut armed);
                        } else {
                            let a = q.rearm_after_timer(now);
                            program(a, &mut armed);
                        }
                    }
                }
                5 => {
                    // The thread is stopped or killed.
                    alive.remove(&t);
                    q.forget(t);
                    if q.current() == Some(t) {
                        q.set_current(None);
                        program(schedule(&mut q, now), &mut armed);
                    }
                }
                6 => {
                    // An IPC hand-off to a queued thread; then the scheduler resumes it.
                    let target = q.ready().nth((next() % 4) as usize);
                    if let (Some(c), Some(n)) = (q.current(), target) {
                        let requeue = next() % 2 == 0;
                        if !requeue {
                            alive.remove(&c); // it blocked (in IPC): in no queue here
                        }
                        q.hand_off(n, requeue);
                        let a = q.switched_to(n, || now);
                        program(a, &mut armed);
                    }
                }
                _ => {
                    // Idle CPU: the scheduler runs whoever is ready.
                    if q.current().is_none() {
                        if let Some(n) = q.pop_ready() {
                            let a = q.switched_to(n, || now);
                            program(a, &mut armed);
                        }
                    }
                }
            }
            let ready: Vec<u32> = q.ready().collect();
            let unique: BTreeSet<u32> = ready.iter().copied().collect();
            assert_eq!(unique.len(), ready.len(), "queued twice: {ready:?}");
            if let Some(c) = q.current() {
                assert!(!ready.contains(&c), "running and queued: {c} in {ready:?}");
                if !ready.is_empty() {
                    assert!(armed.is_some(), "{c} runs, {ready:?} wait, no timer");
                }
            }
            let mut seen: BTreeSet<u32> = ready.iter().copied().collect();
            seen.extend(q.current());
            seen.extend(q.sleepers.iter().map(|&(_, s)| s));
            assert!(alive.is_subset(&seen), "lost: {alive:?} vs {seen:?}");
            if let Some(d) = q.earliest_sleeper() {
                assert!(
                    armed.is_some_and(|a| a <= d),
                    "sleeper due {d}, timer {armed:?}"
                );
            }
            // The queue's idea of the timer is what was programmed.
            assert_eq!(q.timer(), armed);
        }
    }
}
