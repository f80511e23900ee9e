//! The per-pool claim queue: idle slots oldest-first, waiting requests first-come first-served.
//!
//! Pure bookkeeping; the engine owns one per pool behind a mutex and does the IO. The invariant it
//! keeps: a slot id is handed out at most once per [`ClaimQueue::push_idle`] (a slot must be pushed
//! again — after its recycle — before it can be handed out again).

use std::collections::VecDeque;

/// Why a request could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue of waiting requests is at capacity.
    Full,
}

/// Idle slots and waiting requests of one pool. `W` is the engine's waiter handle.
#[derive(Debug)]
pub struct ClaimQueue<W> {
    idle: VecDeque<String>,
    waiters: VecDeque<(u64, W)>,
    capacity: usize,
    next_id: u64,
}

impl<W> ClaimQueue<W> {
    /// `capacity` bounds the number of waiting requests (default 8192 in the engine).
    pub fn new(capacity: usize) -> Self {
        ClaimQueue { idle: VecDeque::new(), waiters: VecDeque::new(), capacity, next_id: 0 }
    }

    pub fn idle_len(&self) -> usize {
        self.idle.len()
    }
    pub fn waiting_len(&self) -> usize {
        self.waiters.len()
    }
    pub fn is_idle(&self, slot_id: &str) -> bool {
        self.idle.iter().any(|s| s == slot_id)
    }

    /// A slot became idle (newest idle goes last). Ignored if already queued.
    pub fn push_idle(&mut self, slot_id: String) {
        if !self.is_idle(&slot_id) {
            self.idle.push_back(slot_id);
        }
    }

    /// Put a slot back at the head (a handed-out slot whose receiver was gone).
    pub fn return_idle(&mut self, slot_id: String) {
        if !self.is_idle(&slot_id) {
            self.idle.push_front(slot_id);
        }
    }

    /// Remove a slot from the idle list (scale-down, failure). `true` if it was there.
    pub fn remove_idle(&mut self, slot_id: &str) -> bool {
        let before = self.idle.len();
        self.idle.retain(|s| s != slot_id);
        before != self.idle.len()
    }

    /// Take the oldest idle slot now, but only if nobody is waiting (FIFO fairness).
    pub fn try_take(&mut self) -> Option<String> {
        if self.waiters.is_empty() { self.idle.pop_front() } else { None }
    }

    /// Queue a waiter; returns its ticket (to cancel it later).
    pub fn enqueue(&mut self, w: W) -> Result<u64, QueueError> {
        if self.waiters.len() >= self.capacity {
            return Err(QueueError::Full);
        }
        self.next_id += 1;
        self.waiters.push_back((self.next_id, w));
        Ok(self.next_id)
    }

    /// Remove a waiter that gave up. `true` if it was still queued.
    pub fn cancel(&mut self, ticket: u64) -> bool {
        let before = self.waiters.len();
        self.waiters.retain(|(t, _)| *t != ticket);
        before != self.waiters.len()
    }

    /// Pair the oldest waiter with the oldest idle slot, if both exist.
    pub fn match_next(&mut self) -> Option<(W, String)> {
        if self.idle.is_empty() || self.waiters.is_empty() {
            return None;
        }
        let (_, w) = self.waiters.pop_front()?;
        let slot = self.idle.pop_front()?;
        Some((w, slot))
    }

    /// Remove and return all waiters (pool deleted, shutdown).
    pub fn drain_waiters(&mut self) -> Vec<W> {
        self.waiters.drain(..).map(|(_, w)| w).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oldest_idle_first_and_no_double_handout() {
        let mut q: ClaimQueue<&str> = ClaimQueue::new(10);
        q.push_idle("a".into());
        q.push_idle("b".into());
        q.push_idle("a".into());
        assert_eq!(q.idle_len(), 2);
        assert_eq!(q.try_take().as_deref(), Some("a"));
        assert_eq!(q.try_take().as_deref(), Some("b"));
        assert_eq!(q.try_take(), None);
    }

    #[test]
    fn waiters_are_fifo_and_block_direct_takes() {
        let mut q: ClaimQueue<&str> = ClaimQueue::new(10);
        let t1 = q.enqueue("w1").unwrap();
        q.enqueue("w2").unwrap();
        q.push_idle("s1".into());
        assert_eq!(q.try_take(), None, "a direct take must not overtake waiters");
        assert_eq!(q.match_next(), Some(("w1", "s1".to_string())));
        assert!(!q.cancel(t1));
        q.push_idle("s2".into());
        assert_eq!(q.match_next(), Some(("w2", "s2".to_string())));
        assert_eq!(q.match_next(), None);
    }

    #[test]
    fn capacity_and_cancel() {
        let mut q: ClaimQueue<u8> = ClaimQueue::new(2);
        let a = q.enqueue(1).unwrap();
        q.enqueue(2).unwrap();
        assert_eq!(q.enqueue(3), Err(QueueError::Full));
        assert!(q.cancel(a));
        assert_eq!(q.waiting_len(), 1);
        q.push_idle("x".into());
        assert_eq!(q.match_next(), Some((2, "x".to_string())));
    }

    #[test]
    fn return_idle_goes_first() {
        let mut q: ClaimQueue<()> = ClaimQueue::new(1);
        q.push_idle("b".into());
        q.return_idle("a".into());
        assert_eq!(q.try_take().as_deref(), Some("a"));
        assert!(q.remove_idle("b"));
        assert_eq!(q.try_take(), None);
    }
}
