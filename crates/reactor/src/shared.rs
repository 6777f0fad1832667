//! State shared by all shards and every `Handle`: mailboxes, the stop
//! request, and per-shard counters.

use crate::config::Backend;
use crate::mailbox::Mailbox;
use crate::stats::StatsCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// On its own cache line: bumped once per connection accepted on a shared
/// listener, while `stop` beside it is read by every shard every pass.
#[repr(align(128))]
#[derive(Default)]
struct Turn(AtomicUsize);

pub(crate) struct Shared<M> {
    pub mailboxes: Box<[Mailbox<M>]>,
    pub stats: Box<[StatsCell]>,
    pub backend: Backend,
    stop: AtomicBool,
    drain_ns: AtomicU64,
    default_drain: Duration,
    /// Round-robin position for connections accepted on shared listeners.
    turn: Turn,
}

impl<M> Shared<M> {
    pub fn new(
        shards: usize,
        capacity: usize,
        backend: Backend,
        default_drain: Duration,
    ) -> std::io::Result<Self> {
        let mailboxes = (0..shards)
            .map(|_| Mailbox::new(capacity, shards, backend == Backend::Epoll))
            .collect::<std::io::Result<Vec<_>>>()?
            .into_boxed_slice();
        Ok(Shared {
            mailboxes,
            stats: (0..shards).map(|_| StatsCell::default()).collect(),
            backend,
            stop: AtomicBool::new(false),
            drain_ns: AtomicU64::new(default_drain.as_nanos() as u64),
            default_drain,
            turn: Turn::default(),
        })
    }

    /// The next shard, in a reactor-wide round robin, to give a connection
    /// accepted on a shared listener. One counter for all acceptors, so the
    /// spread is even whichever shards do the accepting.
    pub fn next_turn(&self) -> usize {
        self.turn.0.fetch_add(1, Ordering::Relaxed) % self.shards()
    }

    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    /// Ask every shard to stop, draining for at most `drain`. The first
    /// request's deadline wins for shards that already started draining.
    pub fn stop(&self, drain: Option<Duration>) {
        let d = drain.unwrap_or(self.default_drain);
        if !self.stop.load(Ordering::Acquire) {
            self.drain_ns
                .store(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        }
        self.stop.store(true, Ordering::Release);
        for mb in self.mailboxes.iter() {
            mb.force_wake();
        }
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_nanos(self.drain_ns.load(Ordering::Relaxed))
    }

    /// Mail from any thread: push and wake the target if it sleeps.
    pub fn mail(&self, shard: usize, m: M) -> Result<(), M> {
        let Some(mb) = self.mailboxes.get(shard) else {
            return Err(m);
        };
        mb.push(m)?;
        mb.notify();
        Ok(())
    }
}
