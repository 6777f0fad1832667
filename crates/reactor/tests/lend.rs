//! Receive buffers lent past `on_input`: what is sent from them arrives
//! intact and in order, lending stops at `max_lent_buffers`, and every
//! buffer comes back, also when the last `Bytes` is dropped on another
//! thread.

mod common;

use bytes::Bytes;
use common::*;
use ringcast_reactor::*;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Echoes by lending the receive buffer when offered, else by copying. Every
/// third lent buffer also gets a clone dropped on a thread of its own.
struct LendingEcho {
    echo: Echo,
    t: Tally,
}

impl Handler for LendingEcho {
    type Mail = ();
    fn on_open(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, peer: SocketAddr) {
        self.echo.on_open(ctx, conn, peer)
    }
    fn on_data(&mut self, _: &mut Ctx<'_, ()>, _: Conn, _: &mut [u8]) {
        unreachable!("on_input is implemented")
    }
    fn on_input(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, input: Input<'_>) {
        let (data, lender) = input.split();
        let out = match lender {
            Some(l) => {
                let n = self.t.lent.fetch_add(1, Ordering::Relaxed);
                let b = l.lend(data).expect("the call's own bytes can be lent");
                if n.is_multiple_of(3) {
                    let clone = b.clone();
                    let t = std::thread::spawn(move || {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                        drop(clone)
                    });
                    self.t.droppers.lock().unwrap().push(t);
                }
                b
            }
            None => {
                self.t.copied.fetch_add(1, Ordering::Relaxed);
                Bytes::copy_from_slice(data)
            }
        };
        ctx.send(conn, out);
    }
    fn on_close(&mut self, ctx: &mut Ctx<'_, ()>, conn: Conn, why: CloseReason) {
        self.echo.on_close(ctx, conn, why)
    }
    fn on_timer(&mut self, _: &mut Ctx<'_, ()>, _: TimerId, _: u64) {}
    fn on_mail(&mut self, _: &mut Ctx<'_, ()>, _: ()) {}
    fn on_shutdown(&mut self, ctx: &mut Ctx<'_, ()>) {
        self.echo.on_shutdown(ctx)
    }
}

/// What the shards of a [`LendingEcho`] server record.
#[derive(Clone, Default)]
struct Tally {
    lent: Arc<AtomicUsize>,
    copied: Arc<AtomicUsize>,
    droppers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn start_lending(c: Config) -> (Running<()>, Arc<Events>, Tally) {
    let ev = Arc::new(Events::default());
    let t = Tally::default();
    let (e2, t2) = (ev.clone(), t.clone());
    let r = start(c, move |_| LendingEcho {
        echo: Echo::new(e2.clone()),
        t: t2.clone(),
    })
    .unwrap();
    (r, ev, t)
}

fn lent_buffers_come_back(backend: BackendChoice) {
    let c = Config {
        buf_count: 8,
        buf_size: 1024,
        max_lent_buffers: 4,
        ..cfg(backend, 2)
    };
    let (r, ev, t) = start_lending(c);
    let (lent, copied, droppers) = (t.lent, t.copied, t.droppers);
    let addr = r.local_addrs()[0];
    let conns = 40u64;
    let per = 128 * 1024;
    let clients: Vec<_> = (0..conns)
        .map(|c| {
            std::thread::spawn(move || {
                let mut s = connect(addr);
                let mut w = s.try_clone().unwrap();
                let writer = std::thread::spawn(move || {
                    let mut data = vec![0u8; per];
                    fill(c, 0, &mut data);
                    for piece in data.chunks(3000) {
                        w.write_all(piece).unwrap();
                    }
                });
                let mut back = vec![0u8; per];
                s.read_exact(&mut back).unwrap();
                writer.join().unwrap();
                for (i, b) in back.iter().enumerate() {
                    assert_eq!(*b, pattern(c, i as u64), "conn {c} byte {i}");
                }
                s
            })
        })
        .collect();
    let socks: Vec<_> = clients.into_iter().map(|t| t.join().unwrap()).collect();
    for t in std::mem::take(&mut *droppers.lock().unwrap()) {
        t.join().unwrap();
    }
    let (lent, copied) = (lent.load(Ordering::Relaxed), copied.load(Ordering::Relaxed));
    eprintln!("{backend}: {lent} reads lent, {copied} copied");
    assert!(lent > 0, "lending was never offered");
    assert!(
        r.stats().iter().all(|s| s.lent_buffers <= 4),
        "{:?}",
        r.stats()
    );
    // Closing wakes the shards, which take back what was returned.
    drop(socks);
    wait_until("closed", || ev.closed() == conns as usize);
    wait_until("every lent buffer back", || {
        r.stats().iter().all(|s| s.lent_buffers == 0)
    });
    wait_table_empty(&r.handle());
    stop_and_join(r, &ev);
}
both_backends!(lent_buffers_come_back);

/// A client that sends and never reads pins the buffers its echoes were lent
/// from (they sit in its output queue). With io_uring lending stops at half
/// the buffers circulating, so other connections keep receiving; with epoll
/// at `max_lent_buffers`, after which reads go on in the remaining buffer.
fn a_client_that_never_reads_cannot_starve_receives(backend: BackendChoice) {
    // The server's socket to the hog absorbs up to tcp_wmem's maximum (here
    // 2.8 MB of 1 KiB writes on loopback, with the hog reading nothing), so
    // the hog sends twice that and more: the rest is sure to stay queued,
    // pinning the buffers lent from it. It sent 2 MiB before, which the
    // socket could take whole: the wait below then never ended.
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let hog_kib = (2 * wmem_max + (1 << 20)) / 1024;
    let c = Config {
        buf_count: 8,
        buf_size: 1024,
        max_lent_buffers: 100,
        ..cfg(backend, 1)
    };
    let (r, ev, t) = start_lending(c);
    let droppers = t.droppers;
    let addr = r.local_addrs()[0];
    let hog = connect_small_rcvbuf(addr, 4096);
    let mut w = hog.try_clone().unwrap();
    let hog_writer = std::thread::spawn(move || {
        // Bounded: an endless flood over 8 small buffers would starve the
        // other client for as long as it lasts (multishot fairness).
        for _ in 0..hog_kib {
            w.write_all(&[0x55u8; 1024]).unwrap();
        }
    });
    wait_until("the hog's echoes to pin buffers", || {
        r.stats()[0].lent_buffers >= 4
    });
    let mut s = connect(addr);
    let mut data = vec![0u8; 256 * 1024];
    fill(3, 0, &mut data);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || w.write_all(&sent).unwrap());
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).unwrap();
    writer.join().unwrap();
    assert!(back == data, "echo corrupted");
    // io_uring: half of the 8 buffers; epoll reads into buffers of its own.
    let cap = if backend == BackendChoice::IoUring {
        4
    } else {
        100
    };
    let st = r.stats()[0];
    assert!(st.lent_buffers <= cap, "{st:?}");
    drop(s);
    hog_writer.join().unwrap();
    reset(hog);
    wait_until("closed", || ev.closed() == 2);
    for t in std::mem::take(&mut *droppers.lock().unwrap()) {
        t.join().unwrap();
    }
    // Buffers dropped on other threads are taken back on the shard's next
    // loop pass: give it one.
    drop(connect(addr));
    wait_until("closed", || ev.closed() == 3);
    wait_until("every lent buffer back", || r.stats()[0].lent_buffers == 0);
    stop_and_join(r, &ev);
}
both_backends!(a_client_that_never_reads_cannot_starve_receives);
