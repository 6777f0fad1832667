//! Wake-up cost between two io_uring threads: eventfd vs IORING_OP_MSG_RING.
//!
//! ```text
//! cargo run --release -p ringcast-reactor --example wake_cost -- 200000
//! ```
//!
//! Two threads, pinned to CPUs 0 and 1, each block in `io_uring_enter`
//! waiting for one completion, and wake each other in turn (ping-pong):
//!
//! * **eventfd**: each ring keeps an 8-byte read on its own eventfd; the
//!   waker calls `write(2)` on the other's eventfd — what the reactor does;
//! * **MSG_RING**: the waker queues `IORING_OP_MSG_RING` on its *own* ring
//!   (`CQE_SKIP_SUCCESS`, so it gets no completion itself), which posts a CQE
//!   straight into the other ring; the SQE rides along with the waker's next
//!   `io_uring_enter` (the one it then waits in), so it costs no extra syscall.
//!
//! Reported: round trip (two wake-ups) and the waker-side cost of waking a
//! sleeping thread in isolation (a `write` vs an `io_uring_enter` submitting
//! one MSG_RING), both averaged.

use io_uring::{opcode, squeue, types, IoUring};
use nix::sys::eventfd::{EfdFlags, EventFd};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

fn ring() -> IoUring {
    IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(64)
        .or_else(|_| IoUring::builder().setup_coop_taskrun().build(64))
        .expect("io_uring")
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn eventfd_side(
    cpu: usize,
    n: usize,
    initiator: bool,
    tx: mpsc::Sender<RawFd>,
    rx: mpsc::Receiver<RawFd>,
    go: Arc<Barrier>,
) -> Duration {
    pin(cpu);
    let mut ring = ring();
    let efd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap();
    let mut buf = Box::new([0u8; 8]);
    let arm = |ring: &mut IoUring, buf: &mut [u8; 8]| {
        let sqe =
            opcode::Read::new(types::Fd(efd.as_fd().as_raw_fd()), buf.as_mut_ptr(), 8).build();
        // SAFETY: `buf` is boxed and outlives the ring's use of it: every read
        // is reaped (the loop waits for it) before the next one is armed, and
        // the final one completes before the function returns.
        unsafe { ring.submission().push(&sqe).unwrap() };
    };
    arm(&mut ring, &mut buf);
    ring.submit().unwrap();
    tx.send(efd.as_fd().as_raw_fd()).unwrap();
    let other = rx.recv().unwrap();
    let poke = |fd: RawFd| {
        nix::unistd::write(
            // SAFETY: `other` is the peer thread's eventfd, open until both threads finish.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            &1u64.to_ne_bytes(),
        )
        .unwrap()
    };
    go.wait();
    let t0 = Instant::now();
    for _ in 0..n {
        if initiator {
            poke(other);
        }
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        arm(&mut ring, &mut buf);
        if !initiator {
            poke(other);
        }
    }
    let el = t0.elapsed();
    go.wait(); // both done before either closes its eventfd
               // Reap the last armed read: wake ourselves.
    poke(efd.as_fd().as_raw_fd());
    ring.submit_and_wait(1).unwrap();
    el
}

fn msgring_side(
    cpu: usize,
    n: usize,
    initiator: bool,
    tx: mpsc::Sender<RawFd>,
    rx: mpsc::Receiver<RawFd>,
    go: Arc<Barrier>,
) -> Duration {
    pin(cpu);
    let mut ring = ring();
    tx.send(ring.as_raw_fd()).unwrap();
    let other = rx.recv().unwrap();
    let msg = |ring: &mut IoUring| {
        let sqe = opcode::MsgRingData::new(types::Fd(other), 0, 42, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: MSG_RING carries no user memory; `other` is the peer's ring fd,
        // open until both threads pass the final barrier.
        unsafe { ring.submission().push(&sqe).unwrap() };
    };
    go.wait();
    let t0 = Instant::now();
    for _ in 0..n {
        if initiator {
            msg(&mut ring);
        }
        ring.submit_and_wait(1).unwrap();
        ring.completion().for_each(drop);
        if !initiator {
            msg(&mut ring);
            ring.submit().unwrap();
        }
    }
    let el = t0.elapsed();
    go.wait();
    el
}

/// Waker-side cost of waking a thread that is asleep: `write(eventfd)` vs
/// `io_uring_enter` submitting one MSG_RING. The sleeper is re-armed and
/// given time to block again between samples (not counted).
fn waker_cost(samples: usize) -> (Duration, Duration) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (tx, rx) = mpsc::channel::<RawFd>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let efd = Arc::new(EventFd::from_flags(EfdFlags::EFD_CLOEXEC).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let (e2, s2) = (efd.clone(), stop.clone());
    let sleeper = std::thread::spawn(move || {
        pin(1);
        let mut buf = Box::new([0u8; 8]);
        let mut ring = ring();
        tx.send(ring.as_raw_fd()).unwrap();
        let arm = |ring: &mut IoUring, buf: &mut [u8; 8]| {
            let sqe = opcode::Read::new(types::Fd(e2.as_fd().as_raw_fd()), buf.as_mut_ptr(), 8)
                .build()
                .user_data(1);
            // SAFETY: `buf` is declared before `ring`, so it outlives the ring;
            // a read is re-armed only after the previous one was reaped, and the
            // last one is reaped before the loop returns.
            unsafe { ring.submission().push(&sqe).unwrap() };
        };
        arm(&mut ring, &mut buf);
        loop {
            ring.submit_and_wait(1).unwrap();
            let uds: Vec<u64> = ring.completion().map(|c| c.user_data()).collect();
            for ud in uds {
                if ud == 1 {
                    if s2.load(Ordering::Acquire) {
                        return;
                    }
                    arm(&mut ring, &mut buf);
                }
                let _ = done_tx.send(());
            }
        }
    });
    let target = rx.recv().unwrap();
    pin(0);
    let mut mine = ring();
    let settle = || std::thread::sleep(Duration::from_micros(300));
    let mut ev = Duration::ZERO;
    let mut mr = Duration::ZERO;
    for _ in 0..samples {
        settle();
        let t = Instant::now();
        nix::unistd::write(efd.as_fd(), &1u64.to_ne_bytes()).unwrap();
        ev += t.elapsed();
        done_rx.recv().unwrap();
        settle();
        let sqe = opcode::MsgRingData::new(types::Fd(target), 0, 42, None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS);
        // SAFETY: no user memory; the target ring lives until the sleeper exits.
        unsafe { mine.submission().push(&sqe).unwrap() };
        let t = Instant::now();
        mine.submit().unwrap();
        mr += t.elapsed();
        done_rx.recv().unwrap();
    }
    stop.store(true, Ordering::Release);
    nix::unistd::write(efd.as_fd(), &1u64.to_ne_bytes()).unwrap();
    sleeper.join().unwrap();
    (ev / samples as u32, mr / samples as u32)
}

/// One side of a ping-pong: (cpu, iterations, initiator, send my fd, receive
/// the peer's fd, start/end barrier) -> elapsed.
type Side =
    fn(usize, usize, bool, mpsc::Sender<RawFd>, mpsc::Receiver<RawFd>, Arc<Barrier>) -> Duration;

fn pingpong(n: usize, side: Side) -> Duration {
    let (tx_a, rx_b) = mpsc::channel();
    let (tx_b, rx_a) = mpsc::channel();
    let go = Arc::new(Barrier::new(2));
    let g2 = go.clone();
    let b = std::thread::spawn(move || side(1, n, false, tx_b, rx_b, g2));
    let a = side(0, n, true, tx_a, rx_a, go);
    let _ = b.join().unwrap();
    a / n as u32
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    // Warm up both paths once.
    pingpong(n / 10 + 1, eventfd_side);
    pingpong(n / 10 + 1, msgring_side);
    let ev = pingpong(n, eventfd_side);
    let mr = pingpong(n, msgring_side);
    println!("round trip (2 wake-ups), {n} iterations, CPUs 0 <-> 1:");
    println!("  eventfd + ring read : {:>7.2} us", ev.as_secs_f64() * 1e6);
    println!("  MSG_RING            : {:>7.2} us", mr.as_secs_f64() * 1e6);
    let (wev, wmr) = waker_cost(2000);
    println!("waker-side cost of waking a sleeping ring thread (avg of 2000):");
    println!(
        "  write(eventfd)          : {:>7.2} us",
        wev.as_secs_f64() * 1e6
    );
    println!(
        "  io_uring_enter(MSG_RING): {:>7.2} us",
        wmr.as_secs_f64() * 1e6
    );
}
