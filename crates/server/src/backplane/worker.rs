//! The backplane thread: its state ([`Worker`]), its main function and the run loop
//! that multiplexes requests, heartbeats, reconnect attempts and reader losses.
//!
//! The jobs themselves live next door: `session` (the connection pair: connect, go
//! live, down, backoff), `node` (node id, liveness, retire, resync), `reader` (the
//! subscription stream), `local` (requests -> effects on this node's state) and `exec`
//! (effects -> one pipeline, replies, fallbacks).

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::Client;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::task::LocalSet;
use tokio::time::{interval, sleep_until, MissedTickBehavior};
use tracing::{debug, error};

use super::local::{Cmd, Local};
use super::session::{Live, Retry};
use super::wire::Names;
use super::{BackplaneConfig, BackplaneError, BackplaneStats, Inbound, Shared};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

/// Calls the server's callback; a panic in it must not take the backplane down.
pub(super) struct Emitter {
    pub f: Box<dyn Fn(Inbound) + Send>,
    pub stats: Arc<BackplaneStats>,
}

impl Emitter {
    pub fn emit(&self, ev: Inbound) {
        if catch_unwind(AssertUnwindSafe(|| (self.f)(ev))).is_err() {
            error!("backplane: the deliver callback panicked; event dropped");
            BackplaneStats::inc(&self.stats.errors_total);
        }
    }
}

/// Small xorshift generator for jitter and instance tokens (no crypto needed).
pub(super) struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = 0u8;
        let addr = &local as *const u8 as u64;
        Rng::from_seed(t ^ (u64::from(std::process::id()) << 32) ^ addr)
    }

    fn from_seed(seed: u64) -> Rng {
        // splitmix64 of the mixed seed, so similar seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Everything the backplane thread owns.
pub(super) struct Worker {
    pub cfg: BackplaneConfig,
    pub client: Client,
    pub names: Rc<Names>,
    pub node: u16,
    /// Random per start: tells this instance's liveness key from a previous one's.
    pub token: String,
    pub emitter: Rc<Emitter>,
    pub shared: Arc<Shared>,
    /// Interest and member counts of this node.
    pub local: Local,
    /// Topics subscribed on the current Redis connection.
    pub subscribed: HashSet<String>,
    pub live: Option<Live>,
    /// Connection generation, so a stale reader's "lost" signal is ignored.
    pub gen: u64,
    pub lost_tx: UnboundedSender<u64>,
    pub retry: Retry,
    pub ever_up: bool,
    pub resync_needed: bool,
    pub down_reason: String,
    pub rng: Rng,
    pub bad_inbound: Rc<Cell<u64>>,
}

pub(crate) fn thread_main(
    cfg: BackplaneConfig,
    client: Client,
    shared: Arc<Shared>,
    rx: UnboundedReceiver<Cmd>,
    deliver: Box<dyn Fn(Inbound) + Send>,
    init: std::sync::mpsc::Sender<Result<u16, BackplaneError>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = init.send(Err(BackplaneError::Thread(e.to_string())));
            shared.mark_done();
            return;
        }
    };
    let local = LocalSet::new();
    let done = shared.clone();
    local.block_on(&rt, async move {
        let (lost_tx, lost_rx) = unbounded_channel();
        let mut rng = Rng::seeded();
        let token = format!("{:016x}{:016x}", rng.next(), rng.next());
        let mut w = Worker {
            names: Rc::new(Names::new(&cfg.prefix)),
            node: cfg.node_id.unwrap_or(0),
            token,
            emitter: Rc::new(Emitter {
                f: deliver,
                stats: shared.stats.clone(),
            }),
            shared,
            local: Local::default(),
            subscribed: HashSet::new(),
            live: None,
            gen: 0,
            lost_tx,
            retry: Retry::new(cfg.reconnect_min, cfg.reconnect_max),
            ever_up: false,
            resync_needed: false,
            down_reason: "redis backplane not connected yet".into(),
            rng,
            bad_inbound: Rc::new(Cell::new(0)),
            cfg,
            client,
        };
        if w.start(init).await {
            w.run(rx, lost_rx).await;
        }
        if let Some(live) = w.live.take() {
            live.reader.abort();
        }
    });
    drop(local);
    drop(rt);
    done.mark_done();
}

impl Worker {
    async fn run(&mut self, mut rx: UnboundedReceiver<Cmd>, mut lost_rx: UnboundedReceiver<u64>) {
        let max = self.cfg.max_batch;
        let mut buf = Vec::with_capacity(max);
        let mut hb = interval(self.cfg.heartbeat);
        hb.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.live.is_some() {
                tokio::select! {
                    n = rx.recv_many(&mut buf, max) => {
                        if self.serve(n, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                    _ = hb.tick() => self.heartbeat().await,
                    Some(g) = lost_rx.recv() => {
                        if g == self.gen && self.live.is_some() {
                            self.mark_down("the subscription connection was closed".into());
                        }
                    }
                }
                if self.resync_needed && self.live.is_some() {
                    self.resync().await;
                }
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut buf, max) => {
                        if self.serve(n, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                    _ = sleep_until(self.retry.next_attempt) => {
                        if self.attempt(&mut rx, &mut buf).await == Flow::Stop {
                            return self.refuse_rest(&mut rx);
                        }
                    }
                }
            }
        }
    }

    /// After shutdown: requests that raced with it are answered, not dropped.
    fn refuse_rest(&self, rx: &mut UnboundedReceiver<Cmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            self.refuse_after_shutdown(cmd);
        }
    }

    /// Serves `n` requests just received into `buf`. `n == 0` means every
    /// handle was dropped without `shutdown`: stop like a crashed node would.
    pub(super) async fn serve(&mut self, n: usize, buf: &mut Vec<Cmd>) -> Flow {
        if n == 0 {
            debug!("backplane: all handles dropped; stopping without cleanup");
            return Flow::Stop;
        }
        self.process(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn rng_streams_differ_and_never_stick_at_zero() {
        let (mut a, mut b) = (Rng::from_seed(1), Rng::from_seed(2));
        let xs: Vec<u64> = (0..8).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next()).collect();
        assert_ne!(xs, ys);
        assert!(xs.iter().all(|&x| x != 0));
        // Seed 0 must not give the all-zero xorshift state.
        assert_ne!(Rng::from_seed(0).next(), 0);
    }

    #[test]
    fn emitter_survives_a_panicking_callback() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let stats = Arc::new(BackplaneStats::default());
        let em = Emitter {
            f: Box::new(move |ev| {
                if matches!(ev, Inbound::Barrier { tag: 1 }) {
                    panic!("callback bug");
                }
                s.lock().unwrap().push(ev);
            }),
            stats: stats.clone(),
        };
        em.emit(Inbound::Barrier { tag: 1 });
        em.emit(Inbound::Barrier { tag: 2 });
        assert_eq!(*seen.lock().unwrap(), vec![Inbound::Barrier { tag: 2 }]);
        assert_eq!(
            stats
                .errors_total
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
