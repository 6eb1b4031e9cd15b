//! A bounded queue between a producer that must never wait and a consumer that may be slow:
//! when it is full, a push drops the oldest item instead of blocking.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

pub struct Queue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> Queue<T> {
    pub fn new(capacity: usize) -> Queue<T> {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panicking holder leaves the queue itself consistent: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `item`; when the queue is full, the oldest item goes to make room. Returns
    /// whether one did. Holds the lock only to move pointers: the consumer takes items out
    /// before it works on them.
    pub fn push(&self, item: T) -> bool {
        let mut s = self.lock();
        let dropped = if s.items.len() >= self.capacity {
            s.items.pop_front().is_some()
        } else {
            false
        };
        s.items.push_back(item);
        drop(s);
        self.ready.notify_one();
        dropped
    }

    /// Waits until there are items (or the queue is closed) and moves all of them into
    /// `out`. False once the queue is closed and empty.
    pub fn take_all(&self, out: &mut VecDeque<T>) -> bool {
        let mut s = self.lock();
        while s.items.is_empty() && !s.closed {
            s = self.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if s.items.is_empty() {
            return false;
        }
        // Swap rather than drain, so the lock is held for a moment whatever the backlog.
        std::mem::swap(&mut s.items, out);
        true
    }

    /// No more pushes will come: `take_all` returns what is left, then false.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let q = Queue::new(3);
        let dropped: Vec<bool> = (1..=5).map(|i| q.push(i)).collect();
        assert_eq!(dropped, [false, false, false, true, true]);
        let mut out = VecDeque::new();
        assert!(q.take_all(&mut out));
        assert_eq!(Vec::from(out), [3, 4, 5]);
    }

    #[test]
    fn close_ends_the_consumer_after_the_backlog() {
        let q = Arc::new(Queue::new(8));
        let consumer = {
            let q = q.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut batch = VecDeque::new();
                while q.take_all(&mut batch) {
                    got.extend(batch.drain(..));
                }
                got
            })
        };
        for i in 0..5 {
            q.push(i);
        }
        q.close();
        assert_eq!(consumer.join().expect("consumer"), [0, 1, 2, 3, 4]);
    }
}
