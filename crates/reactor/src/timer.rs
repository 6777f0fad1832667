//! Per-shard hashed timer wheel: O(1) add, cancel and re-arm.
//!
//! Time is cut into 1 ms ticks counted from the shard's start. A timer due at
//! tick `t` sits in slot `t % SLOTS`, in an intrusive doubly linked list
//! threaded through a node table, so linking and unlinking are O(1). Timers
//! further away than one revolution share a slot with nearer ones and are
//! simply skipped (they keep their absolute deadline) until their turn.
//!
//! The shard loop asks [`Wheel::next_deadline`] for its wait timeout. An
//! occupancy bitmap finds the next non-empty slot in `SLOTS / 64` word scans,
//! so an idle shard with thousands of pending timers sleeps until the next
//! slot that holds one rather than waking every tick. Deadlines are rounded
//! up to the next tick: timers never fire early, and fire at most about one
//! tick plus scheduling latency late.

use std::time::{Duration, Instant};

const SLOTS: usize = 2048;
const WORDS: usize = SLOTS / 64;
const NIL: u32 = u32::MAX;
const TICK_NS: u128 = 1_000_000;

/// Handle to an armed timer. Stale ids (fired, cancelled) are ignored safely.
#[derive(Copy, Clone, Eq, PartialEq, Hash, Debug)]
pub struct TimerId {
    idx: u32,
    gen: u32,
}

/// What a timer is for: a handler timer, or the reactor's own close linger.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Payload {
    User(u64),
    /// `Ctx::close` flush deadline for connection (idx, gen).
    Linger(u32, u64),
}

#[derive(Copy, Clone, PartialEq, Eq, Debug)]
enum State {
    Free,
    Linked,
    /// Expired, waiting in `expired` to be delivered.
    Expired,
    /// Being delivered (handler may re-arm it).
    Firing,
}

#[derive(Debug)]
struct Node {
    gen: u32,
    state: State,
    due: u64,
    prev: u32,
    next: u32,
    payload: Payload,
}

pub(crate) struct Wheel {
    origin: Instant,
    nodes: Vec<Node>,
    free: Vec<u32>,
    heads: Box<[u32]>,
    occupied: [u64; WORDS],
    /// Next tick not yet processed.
    cursor: u64,
    linked: usize,
    expired: std::collections::VecDeque<u32>,
}

impl Wheel {
    pub fn new(origin: Instant) -> Self {
        Wheel {
            origin,
            nodes: Vec::new(),
            free: Vec::new(),
            heads: vec![NIL; SLOTS].into_boxed_slice(),
            occupied: [0; WORDS],
            cursor: 0,
            linked: 0,
            expired: Default::default(),
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.origin).as_nanos() / TICK_NS) as u64
    }

    fn due_tick(&self, now: Instant, after: Duration) -> u64 {
        let at = (now + after)
            .saturating_duration_since(self.origin)
            .as_nanos();
        // Round up so a timer never fires before `now + after`.
        let t = at.div_ceil(TICK_NS) as u64;
        t.max(self.cursor)
    }

    /// Number of armed (linked or pending delivery) timers.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.linked + self.expired.len()
    }

    pub fn add(&mut self, now: Instant, after: Duration, payload: Payload) -> TimerId {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.nodes.push(Node {
                    gen: 0,
                    state: State::Free,
                    due: 0,
                    prev: NIL,
                    next: NIL,
                    payload,
                });
                (self.nodes.len() - 1) as u32
            }
        };
        let due = self.due_tick(now, after);
        let n = &mut self.nodes[idx as usize];
        n.gen = n.gen.wrapping_add(1);
        n.payload = payload;
        n.due = due;
        let id = TimerId { idx, gen: n.gen };
        self.link(idx);
        id
    }

    fn live(&self, id: TimerId) -> Option<&Node> {
        self.nodes
            .get(id.idx as usize)
            .filter(|n| n.gen == id.gen && n.state != State::Free)
    }

    /// Cancel; no-op for stale ids.
    pub fn cancel(&mut self, id: TimerId) {
        let Some(n) = self.live(id) else { return };
        match n.state {
            State::Linked => {
                self.unlink(id.idx);
                self.release(id.idx);
            }
            // Removed from `expired` lazily (state check on pop).
            State::Expired | State::Firing => self.release(id.idx),
            State::Free => {}
        }
    }

    /// Re-arm to fire `after` from `now`. Works on pending timers and on the
    /// timer currently being delivered; returns the same id. A stale id arms
    /// nothing and is returned unchanged.
    pub fn reset(&mut self, now: Instant, id: TimerId, after: Duration) -> TimerId {
        let Some(n) = self.live(id) else { return id };
        match n.state {
            State::Linked => self.unlink(id.idx),
            State::Expired | State::Firing => {}
            State::Free => return id,
        }
        let due = self.due_tick(now, after);
        self.nodes[id.idx as usize].due = due;
        self.link(id.idx);
        id
    }

    fn release(&mut self, idx: u32) {
        self.nodes[idx as usize].state = State::Free;
        self.free.push(idx);
    }

    fn link(&mut self, idx: u32) {
        let due = self.nodes[idx as usize].due;
        let slot = (due % SLOTS as u64) as usize;
        let head = self.heads[slot];
        {
            let n = &mut self.nodes[idx as usize];
            n.state = State::Linked;
            n.prev = NIL;
            n.next = head;
        }
        if head != NIL {
            self.nodes[head as usize].prev = idx;
        }
        self.heads[slot] = idx;
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.linked += 1;
    }

    fn unlink(&mut self, idx: u32) {
        let (prev, next, due) = {
            let n = &self.nodes[idx as usize];
            (n.prev, n.next, n.due)
        };
        let slot = (due % SLOTS as u64) as usize;
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        } else {
            self.heads[slot] = next;
            if next == NIL {
                self.occupied[slot / 64] &= !(1 << (slot % 64));
            }
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        self.linked -= 1;
    }

    /// Move every timer due at or before `now` to the expired list.
    pub fn advance(&mut self, now: Instant) {
        let now_tick = self.tick_of(now);
        if now_tick < self.cursor || self.linked == 0 {
            self.cursor = self.cursor.max(now_tick + 1);
            return;
        }
        let span = (now_tick - self.cursor + 1).min(SLOTS as u64);
        for k in 0..span {
            let slot = ((self.cursor + k) % SLOTS as u64) as usize;
            let mut cur = self.heads[slot];
            while cur != NIL {
                let next = self.nodes[cur as usize].next;
                if self.nodes[cur as usize].due <= now_tick {
                    self.unlink(cur);
                    self.nodes[cur as usize].state = State::Expired;
                    self.expired.push_back(cur);
                }
                cur = next;
            }
        }
        self.cursor = now_tick + 1;
    }

    /// Next expired timer to deliver; it stays `Firing` until `finish`.
    pub fn pop_expired(&mut self) -> Option<(TimerId, Payload)> {
        while let Some(idx) = self.expired.pop_front() {
            let n = &mut self.nodes[idx as usize];
            if n.state == State::Expired {
                n.state = State::Firing;
                return Some((TimerId { idx, gen: n.gen }, n.payload));
            }
        }
        None
    }

    /// Delivery of `id` is over: free it unless the handler re-armed or cancelled it.
    pub fn finish(&mut self, id: TimerId) {
        if let Some(n) = self.live(id) {
            if n.state == State::Firing {
                self.release(id.idx);
            }
        }
    }

    pub fn has_expired(&self) -> bool {
        !self.expired.is_empty()
    }

    /// When the next non-empty slot comes due (never later than the earliest timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.expired.is_empty() {
            return Some(self.origin);
        }
        if self.linked == 0 {
            return None;
        }
        let start = (self.cursor % SLOTS as u64) as usize;
        // Scan the bitmap from `start`, wrapping once.
        for k in 0..=WORDS {
            let w = (start / 64 + k) % WORDS;
            let mut bits = self.occupied[w];
            if k == 0 {
                bits &= !0u64 << (start % 64);
            } else if k == WORDS {
                bits &= (1u64 << (start % 64)).wrapping_sub(1);
            }
            if bits != 0 {
                let slot = w * 64 + bits.trailing_zeros() as usize;
                let dist = (slot + SLOTS - start) % SLOTS;
                let tick = self.cursor + dist as u64;
                return Some(self.origin + Duration::from_millis(tick));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire_all(w: &mut Wheel, now: Instant) -> Vec<Payload> {
        w.advance(now);
        let mut v = Vec::new();
        while let Some((id, p)) = w.pop_expired() {
            v.push(p);
            w.finish(id);
        }
        v
    }

    #[test]
    fn order_cancel_reset() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let a = w.add(t0, Duration::from_millis(5), Payload::User(1));
        let b = w.add(t0, Duration::from_millis(3000), Payload::User(2));
        let c = w.add(t0, Duration::from_millis(5), Payload::User(3));
        assert!(fire_all(&mut w, t0 + Duration::from_millis(4)).is_empty());
        w.cancel(c);
        w.cancel(c);
        let d = w.next_deadline().unwrap();
        assert!(d >= t0 + Duration::from_millis(5));
        assert_eq!(
            fire_all(&mut w, t0 + Duration::from_millis(6)),
            vec![Payload::User(1)]
        );
        w.cancel(a); // stale: no-op
                     // b is more than one revolution away: skipped until due.
        assert!(fire_all(&mut w, t0 + Duration::from_millis(2500)).is_empty());
        let b2 = w.reset(
            t0 + Duration::from_millis(2500),
            b,
            Duration::from_millis(10),
        );
        assert_eq!(b2, b);
        assert_eq!(
            fire_all(&mut w, t0 + Duration::from_millis(2511)),
            vec![Payload::User(2)]
        );
        assert_eq!(w.len(), 0);
        assert!(w.next_deadline().is_none());
    }

    #[test]
    fn rearm_while_firing() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let a = w.add(t0, Duration::from_millis(1), Payload::User(7));
        w.advance(t0 + Duration::from_millis(2));
        let (id, _) = w.pop_expired().unwrap();
        assert_eq!(id, a);
        w.reset(t0 + Duration::from_millis(2), id, Duration::from_millis(1));
        w.finish(id);
        assert_eq!(w.len(), 1);
        assert_eq!(
            fire_all(&mut w, t0 + Duration::from_millis(4)),
            vec![Payload::User(7)]
        );
        assert_eq!(w.len(), 0);
    }

    #[test]
    fn many_timers() {
        let t0 = Instant::now();
        let mut w = Wheel::new(t0);
        let ids: Vec<_> = (0..10_000u64)
            .map(|i| w.add(t0, Duration::from_millis(i % 5000), Payload::User(i)))
            .collect();
        for id in ids.iter().step_by(2) {
            w.cancel(*id);
        }
        let mut got = fire_all(&mut w, t0 + Duration::from_millis(6000));
        got.sort_by_key(|p| match p {
            Payload::User(x) => *x,
            _ => 0,
        });
        assert_eq!(got.len(), 5000);
        assert!(got
            .iter()
            .all(|p| matches!(p, Payload::User(x) if x % 2 == 1)));
    }
}
