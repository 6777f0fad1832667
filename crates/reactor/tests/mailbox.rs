//! Mailbox stress: every shard mails every shard (itself included) while an
//! outside thread mails them all through a `Handle`. Small mailboxes and
//! outboxes force the full-mailbox paths. Checked: no loss, no duplication,
//! FIFO per sender, no deadlock when shards fill each other's mailboxes.
//!
//! Volume: 4 shards x 4 targets x 250,000 + 4 x 250,000 external = 5,000,000
//! messages in release builds; debug builds scale down to 1/5 (1,000,000)
//! to stay within a few seconds.

mod common;
use common::*;
use ringcast_reactor::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHARDS: usize = 4;
const EXTERNAL: usize = SHARDS; // sender id of the outside thread
const PER_PAIR: u64 = if cfg!(debug_assertions) {
    50_000
} else {
    250_000
};

enum Mail {
    Kick,
    Msg {
        from: usize,
        seq: u64,
        payload: Arc<u64>,
    },
}

struct Stress {
    next_out: [u64; SHARDS],
    expect: [u64; SHARDS + 1],
    done: Arc<AtomicUsize>,
    finished_recv: bool,
    full_hits: u64,
}

impl Stress {
    fn send_some(&mut self, ctx: &mut Ctx<'_, Mail>) {
        let me = ctx.shard();
        for _ in 0..2_000 {
            let mut progressed = false;
            for t in 0..SHARDS {
                let seq = self.next_out[t];
                if seq == PER_PAIR {
                    continue;
                }
                match ctx.mail(
                    t,
                    Mail::Msg {
                        from: me,
                        seq,
                        payload: Arc::new(seq),
                    },
                ) {
                    Ok(()) => {
                        self.next_out[t] += 1;
                        progressed = true;
                    }
                    Err(_) => self.full_hits += 1, // outbox full: retry later
                }
            }
            if !progressed {
                break;
            }
        }
        if self.next_out.iter().any(|&n| n < PER_PAIR) {
            // Keep the loop turning: a self-kick is delivered on a later pass;
            // if even that cannot be queued, come back in a millisecond.
            if ctx.mail(me, Mail::Kick).is_err() {
                ctx.timer(Duration::from_millis(1), 0);
            }
        }
    }
}

impl Handler for Stress {
    type Mail = Mail;
    fn on_open(&mut self, _: &mut Ctx<'_, Mail>, _: Conn, _: SocketAddr) {}
    fn on_data(&mut self, _: &mut Ctx<'_, Mail>, _: Conn, _: &mut [u8]) {}
    fn on_close(&mut self, _: &mut Ctx<'_, Mail>, _: Conn, _: CloseReason) {}
    fn on_timer(&mut self, ctx: &mut Ctx<'_, Mail>, _: TimerId, _: u64) {
        self.send_some(ctx);
    }
    fn on_mail(&mut self, ctx: &mut Ctx<'_, Mail>, m: Mail) {
        match m {
            Mail::Kick => self.send_some(ctx),
            Mail::Msg { from, seq, payload } => {
                assert_eq!(*payload, seq);
                assert_eq!(
                    seq,
                    self.expect[from],
                    "shard {} from {from}: loss, duplicate or reorder",
                    ctx.shard()
                );
                self.expect[from] += 1;
                if !self.finished_recv && self.expect.iter().all(|&n| n == PER_PAIR) {
                    self.finished_recv = true;
                    self.done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    fn on_shutdown(&mut self, _: &mut Ctx<'_, Mail>) {}
}

fn mailbox_stress(backend: BackendChoice) {
    let done = Arc::new(AtomicUsize::new(0));
    let d2 = done.clone();
    let c = Config {
        mailbox_capacity: 1024,
        outbox_capacity: 4096,
        ..cfg(backend, SHARDS)
    };
    let r = start(c, move |_| Stress {
        next_out: [0; SHARDS],
        expect: [0; SHARDS + 1],
        done: d2.clone(),
        finished_recv: false,
        full_hits: 0,
    })
    .unwrap();
    let h = r.handle();
    let t0 = std::time::Instant::now();
    for s in 0..SHARDS {
        while h.mail(s, Mail::Kick).is_err() {
            std::thread::yield_now();
        }
    }
    // The outside sender (like a Redis thread): retries when a mailbox is full.
    let h2 = h.clone();
    let ext = std::thread::spawn(move || {
        let mut next = [0u64; SHARDS];
        let mut full = 0u64;
        while next.iter().any(|&n| n < PER_PAIR) {
            for (t, n) in next.iter_mut().enumerate() {
                if *n < PER_PAIR {
                    match h2.mail(
                        t,
                        Mail::Msg {
                            from: EXTERNAL,
                            seq: *n,
                            payload: Arc::new(*n),
                        },
                    ) {
                        Ok(()) => *n += 1,
                        Err(_) => {
                            full += 1;
                            std::thread::yield_now();
                        }
                    }
                }
            }
        }
        full
    });
    wait_until("every shard received everything", || {
        done.load(Ordering::SeqCst) == SHARDS
    });
    let full = ext.join().unwrap();
    let total = (SHARDS * SHARDS + SHARDS) as u64 * PER_PAIR;
    eprintln!(
        "{backend}: {total} messages in {:?} (external sender saw a full mailbox {full} times)",
        t0.elapsed()
    );
    h.stop(Duration::from_secs(5));
    r.join().unwrap();
}
both_backends!(mailbox_stress);
