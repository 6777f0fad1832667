//! Cross-shard mailboxes: one bounded lock-free MPSC queue per shard, plus a
//! coalesced wake-up.
//!
//! The queue is `crossbeam_queue::ArrayQueue` (bounded, lock-free, FIFO). Any
//! thread may push; only the owning shard pops. Because each producer's pushes
//! are linearised in order, per-(sender, target) FIFO holds.
//!
//! Wake-ups are coalesced with a `sleeping` flag (a Dekker-style handshake):
//!
//! * the shard, before blocking: `sleeping = true`, `fence(SeqCst)`, then
//!   re-checks its queue and stop flag; if anything is there it does not block;
//! * a sender: push, `fence(SeqCst)`, then loads `sleeping`; only if it is set
//!   does it `swap(false)` and, if it won the swap, write the eventfd.
//!
//! With both fences sequentially consistent, at least one side sees the other's
//! write: either the shard sees the message (and stays awake) or the sender sees
//! `sleeping` (and wakes it). A shard that is awake costs a sender one load, no
//! syscall; a sleeping shard costs exactly one eventfd write however many
//! senders race (only the swap winner writes). A spurious eventfd count left
//! behind only makes the next wait return early once.
//!
//! Beside the handler's mail, each mailbox has a small second queue of
//! connections handed over by the shard that accepted them on a shared
//! (inherited) listener (`Core::hand_out`). It has its own capacity, so a
//! mail flood cannot crowd out connections (or the reverse), and it shares
//! the wake-up above: `is_empty` covers both queues.

use crate::waker::Waker;
use crossbeam_queue::ArrayQueue;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};

/// Connections waiting in one shard's handoff queue; beyond this the
/// accepting shard keeps the connection itself.
pub(crate) const HANDOFF_CAPACITY: usize = 1024;

/// An accepted socket and its peer address, not yet in any shard's table.
/// Dropping it closes the socket.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub fd: OwnedFd,
    pub peer: SocketAddr,
}

pub(crate) struct Mailbox<M> {
    queue: ArrayQueue<M>,
    handoffs: ArrayQueue<Accepted>,
    sleeping: AtomicBool,
    /// The shard has exited: further mail is refused.
    closed: AtomicBool,
    /// `room_wanted[s]`: shard `s` found this queue full and has messages
    /// waiting in its outbox for us; wake it when we make room.
    room_wanted: Box<[AtomicBool]>,
    waker: Waker,
}

impl<M> Mailbox<M> {
    pub fn new(capacity: usize, shards: usize, nonblocking_waker: bool) -> std::io::Result<Self> {
        Ok(Mailbox {
            queue: ArrayQueue::new(capacity),
            handoffs: ArrayQueue::new(HANDOFF_CAPACITY),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            room_wanted: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            waker: Waker::new(nonblocking_waker)?,
        })
    }

    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Push without waking (the caller wakes once per batch with `notify`).
    pub fn push(&self, m: M) -> Result<(), M> {
        if self.closed.load(Ordering::Acquire) {
            return Err(m);
        }
        self.queue.push(m)
    }

    pub fn pop(&self) -> Option<M> {
        self.queue.pop()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Nothing for the owner: no mail and no handed-over connection.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.handoffs.is_empty()
    }

    /// Give the owner a connection to register (the caller wakes it with
    /// `notify`). `Err` gives the socket back if the owner has exited or the
    /// queue is full.
    ///
    /// If the owner exits between our `closed` check and the push, the
    /// connection must not sit in a dead queue until `Shared` is dropped:
    /// `close` stores the flag, fences, then empties the queue; we push,
    /// fence, then re-check the flag (Dekker, as for `sleeping`). Either
    /// its emptying sees our push or we see the flag and empty it ourselves.
    /// Both close what they take: the owner only exits once every shard was
    /// asked to stop, so no shard would serve the connection anyway.
    pub fn hand_off(&self, a: Accepted) -> Result<(), Accepted> {
        if self.closed.load(Ordering::Acquire) {
            return Err(a);
        }
        self.handoffs.push(a)?;
        fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Relaxed) {
            while self.handoffs.pop().is_some() {}
        }
        Ok(())
    }

    /// Owner: the next handed-over connection.
    pub fn take_handoff(&self) -> Option<Accepted> {
        self.handoffs.pop()
    }

    /// Wake the owner if it is (about to be) blocked. Call after pushing.
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Unconditional wake (stop requests).
    pub fn force_wake(&self) {
        self.sleeping.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// Owner: announce the intent to block. Returns false (and clears the
    /// flag) if mail arrived meanwhile, in which case the owner must not block.
    pub fn prepare_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if !self.is_empty() {
            self.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Owner: awake again.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Sender shard `me` found the queue full. Registers interest, then
    /// retries the push once: the same Dekker handshake as `prepare_sleep` /
    /// `notify` (flag store, SeqCst fence, re-check) guarantees that either
    /// this retry sees the room or the consumer's `take_room_wanted` sees the
    /// flag and wakes us.
    pub fn push_or_want_room(&self, me: usize, m: M) -> Result<(), M> {
        if let Some(f) = self.room_wanted.get(me) {
            f.store(true, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.push(m)
    }

    /// Consumer, after popping: shards that wait for room, to be woken.
    pub fn take_room_wanted(&self, mut wake: impl FnMut(usize)) {
        fence(Ordering::SeqCst);
        for (s, f) in self.room_wanted.iter().enumerate() {
            if f.load(Ordering::Relaxed) && f.swap(false, Ordering::AcqRel) {
                wake(s);
            }
        }
    }

    /// Owner exits: refuse further mail and close the sockets of connections
    /// handed over too late (see `hand_off`).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        while self.handoffs.pop().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn accepted_pair() -> (Accepted, std::os::unix::net::UnixStream) {
        let (ours, peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let a = Accepted {
            fd: OwnedFd::from(ours),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
        };
        (a, peer)
    }

    /// The peer of a handed-over socket sees EOF once the socket is closed.
    fn closed_by_us(peer: &mut std::os::unix::net::UnixStream) -> bool {
        use std::io::Read;
        peer.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        matches!(peer.read(&mut [0u8; 1]), Ok(0))
    }

    /// Handoffs wake a sleeping owner, are refused once it has exited, and
    /// any still queued when it exits are closed, not kept.
    #[test]
    fn handoff_queue() {
        let mb = Mailbox::<u64>::new(4, 2, true).unwrap();
        assert!(mb.prepare_sleep());
        let (a, _p1) = accepted_pair();
        mb.hand_off(a).unwrap();
        mb.notify();
        assert!(mb.waker().wait_timeout(std::time::Duration::from_secs(30)));
        assert!(!mb.is_empty());
        assert!(
            !mb.prepare_sleep(),
            "a queued handoff keeps the owner awake"
        );
        assert!(mb.take_handoff().is_some());
        assert!(mb.is_empty());

        let (a, mut queued_peer) = accepted_pair();
        mb.hand_off(a).unwrap();
        mb.close();
        assert!(closed_by_us(&mut queued_peer), "queued at exit: closed");
        let (a, _p3) = accepted_pair();
        let back = mb.hand_off(a).expect_err("refused after exit");
        drop(back);
        assert!(mb.take_handoff().is_none());
    }

    /// Stress the sleep/notify handshake: a consumer that blocks on the eventfd
    /// whenever it sees an empty queue must never miss a message.
    #[test]
    fn no_lost_wakeup() {
        let mb = Arc::new(Mailbox::<u64>::new(1024, 1, true).unwrap());
        let n: u64 = if cfg!(debug_assertions) {
            50_000
        } else {
            500_000
        };
        let producers = 3;
        let mut hs = Vec::new();
        for p in 0..producers {
            let mb = mb.clone();
            hs.push(std::thread::spawn(move || {
                for i in 0..n {
                    let mut m = (p << 32) | i;
                    loop {
                        match mb.push(m) {
                            Ok(()) => break,
                            Err(back) => {
                                m = back;
                                mb.notify();
                                std::thread::yield_now();
                            }
                        }
                    }
                    mb.notify();
                }
            }));
        }
        let mut next = vec![0u64; producers as usize];
        let mut got = 0u64;
        while got < n * producers {
            while let Some(m) = mb.pop() {
                let (p, i) = ((m >> 32) as usize, m & 0xffff_ffff);
                assert_eq!(next[p], i, "per-producer FIFO");
                next[p] += 1;
                got += 1;
            }
            if got < n * producers && mb.prepare_sleep() {
                // Producers are still pushing, so a 30 s silence is a lost wake-up.
                let woke = mb.waker().wait_timeout(std::time::Duration::from_secs(30));
                assert!(
                    woke,
                    "lost wake-up: {} queued, got {got}, next {next:?}",
                    mb.len()
                );
                mb.awake();
            }
        }
        for h in hs {
            h.join().unwrap();
        }
    }
}

/// Loom model of the sleep/notify handshake above (same orderings and
/// fences; the queue is modelled by a counter, the eventfd by a flag).
/// Run: `RUSTFLAGS="--cfg loom" cargo test -p ringcast-reactor --lib --release loom`
#[cfg(loom)]
mod loom_model {
    use loom::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
    use loom::sync::Arc;

    #[test]
    fn loom_no_lost_wakeup() {
        loom::model(|| {
            let queued = Arc::new(AtomicUsize::new(0));
            let sleeping = Arc::new(AtomicBool::new(false));
            let woken = Arc::new(AtomicBool::new(false));
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let (q, s, w) = (queued.clone(), sleeping.clone(), woken.clone());
                    loom::thread::spawn(move || {
                        q.fetch_add(1, Ordering::AcqRel); // push
                        fence(Ordering::SeqCst); // notify()
                        if s.load(Ordering::Relaxed) && s.swap(false, Ordering::AcqRel) {
                            w.store(true, Ordering::Release);
                        }
                    })
                })
                .collect();
            // prepare_sleep()
            sleeping.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let blocks = queued.load(Ordering::Acquire) == 0;
            if !blocks {
                sleeping.store(false, Ordering::Relaxed);
            }
            for p in producers {
                p.join().unwrap();
            }
            if blocks {
                // We went to sleep on an empty queue: someone must wake us.
                assert!(woken.load(Ordering::Acquire), "lost wake-up");
            }
        });
    }

    /// `hand_off` / `close`: a connection pushed while the owner exits is
    /// never left in the dead queue (one side or the other empties it).
    #[test]
    fn loom_no_stranded_handoff() {
        loom::model(|| {
            let queued = Arc::new(AtomicUsize::new(0));
            let closed = Arc::new(AtomicBool::new(false));
            let (q2, c2) = (queued.clone(), closed.clone());
            let owner = loom::thread::spawn(move || {
                // close()
                c2.store(true, Ordering::Release);
                fence(Ordering::SeqCst);
                q2.store(0, Ordering::Release);
            });
            // hand_off()
            if !closed.load(Ordering::Acquire) {
                queued.fetch_add(1, Ordering::AcqRel);
                fence(Ordering::SeqCst);
                if closed.load(Ordering::Relaxed) {
                    queued.store(0, Ordering::Release);
                }
            }
            owner.join().unwrap();
            assert_eq!(queued.load(Ordering::Acquire), 0, "stranded handoff");
        });
    }

    /// `push_or_want_room` / `take_room_wanted`: a sender that finds the
    /// queue full either gets in on its retry or is woken by the consumer.
    #[test]
    fn loom_no_lost_room_wakeup() {
        loom::model(|| {
            // Capacity 1, initially full.
            let len = Arc::new(AtomicUsize::new(1));
            let wanted = Arc::new(AtomicBool::new(false));
            let woken = Arc::new(AtomicBool::new(false));
            let (l2, w2, k2) = (len.clone(), wanted.clone(), woken.clone());
            let consumer = loom::thread::spawn(move || {
                l2.fetch_sub(1, Ordering::AcqRel); // pop
                fence(Ordering::SeqCst);
                if w2.load(Ordering::Relaxed) && w2.swap(false, Ordering::AcqRel) {
                    k2.store(true, Ordering::Release); // force_wake
                }
            });
            // Sender: first push failed (full); register and retry once.
            wanted.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            let got_in = len
                .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            consumer.join().unwrap();
            if !got_in {
                assert!(woken.load(Ordering::Acquire), "lost room wake-up");
            }
        });
    }
}
