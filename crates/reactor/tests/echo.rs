//! 1,000 concurrent echo connections with random write chunking: every byte
//! must come back, in order, on both backends.

mod common;
use common::*;
use std::io::{Read, Write};

const CONNS: usize = 1000;
const THREADS: usize = 8;

fn echo_1000(backend: ringcast_reactor::BackendChoice) {
    let (r, ev) = start_echo(cfg(backend, 2));
    let addr = r.local_addrs()[0];
    let per_conn: usize = if cfg!(debug_assertions) {
        48 * 1024
    } else {
        256 * 1024
    };

    // Open all connections first so all 1,000 are concurrently live.
    let mut socks: Vec<_> = (0..CONNS).map(|_| connect(addr)).collect();
    wait_until("all accepted", || ev.opened() == CONNS);

    let mut groups: Vec<Vec<(u64, std::net::TcpStream)>> =
        (0..THREADS).map(|_| Vec::new()).collect();
    for (i, s) in socks.drain(..).enumerate() {
        groups[i % THREADS].push((i as u64, s));
    }
    let workers: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(t, mut group)| {
            std::thread::spawn(move || {
                let mut rng = Rng(0x1234_5678 + t as u64);
                let mut sent = vec![0usize; group.len()];
                let mut buf = vec![0u8; 8192];
                let mut back = vec![0u8; 8192];
                loop {
                    let mut progressed = false;
                    // One random-sized chunk per connection per round, then read
                    // each echo back (small chunks never block on the write side).
                    let mut chunk = vec![0usize; group.len()];
                    for (k, (c, s)) in group.iter_mut().enumerate() {
                        if sent[k] < per_conn {
                            let n = rng.range(1, 4097).min(per_conn - sent[k]);
                            // Split the chunk into random-sized writes to vary segmentation.
                            fill(*c, sent[k] as u64, &mut buf[..n]);
                            let mut off = 0;
                            while off < n {
                                let w = rng.range(1, n - off + 1);
                                s.write_all(&buf[off..off + w]).unwrap();
                                off += w;
                            }
                            chunk[k] = n;
                            progressed = true;
                        }
                    }
                    for (k, (c, s)) in group.iter_mut().enumerate() {
                        let n = chunk[k];
                        if n == 0 {
                            continue;
                        }
                        s.read_exact(&mut back[..n]).unwrap();
                        for (j, b) in back[..n].iter().enumerate() {
                            assert_eq!(
                                *b,
                                pattern(*c, (sent[k] + j) as u64),
                                "conn {c} byte {}",
                                sent[k] + j
                            );
                        }
                        sent[k] += n;
                    }
                    if !progressed {
                        break;
                    }
                }
                group.len()
            })
        })
        .collect();
    let done: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(done, CONNS);
    wait_until("all closed", || ev.closed() == CONNS);
    wait_table_empty(&r.handle());
    assert_all_closed_by(&ev, ringcast_reactor::CloseReason::PeerEof);
    stop_and_join(r, &ev);
}
both_backends!(echo_1000);
