//! Creating a shard's ring, and deciding whether io_uring is usable at all.
//!
//! Setup flags, best first (each falls back on `EINVAL` from an older kernel):
//!
//! * `SINGLE_ISSUER | DEFER_TASKRUN` (6.1): only the shard thread submits, and
//!   completions are posted only when that thread asks for them in
//!   `io_uring_enter(GETEVENTS)`; no inter-processor interrupts or task-work
//!   signals interrupt the loop while it runs handler code, and completions
//!   arrive in batches. Skipped on 6.6 – 6.8-rc, where multishot accept was
//!   reported to return bad descriptors under DEFER_TASKRUN.
//! * `SINGLE_ISSUER | COOP_TASKRUN | TASKRUN_FLAG` (6.0 / 5.19): task work is
//!   not forced onto the thread with an IPI; it runs at the next syscall.
//! * `COOP_TASKRUN`, then no flags.
//!
//! The CQ is sized so that it cannot overflow (see [`cq_entries`]).
//!
//! [`probe`] explains, in words for an operator, why io_uring cannot be used:
//! ENOSYS (kernel built without it, or a seccomp filter returning ENOSYS),
//! EPERM (a seccomp filter such as Docker's default profile, or the
//! `kernel.io_uring_disabled` sysctl — read to tell which), a kernel too old
//! for multishot recv, or a missing opcode.

use super::bufring::BufRing;
use crate::config::ShardConfig;
use crate::sys;
use io_uring::{cqueue, opcode, types, IoUring, Probe};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// Flag combination in use (for logs and docs).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    DeferTaskrun,
    CoopSingleIssuer,
    Coop,
    Plain,
}

impl Mode {
    pub fn describe(self) -> &'static str {
        match self {
            Mode::DeferTaskrun => "SINGLE_ISSUER|DEFER_TASKRUN",
            Mode::CoopSingleIssuer => "SINGLE_ISSUER|COOP_TASKRUN",
            Mode::Coop => "COOP_TASKRUN",
            Mode::Plain => "no setup flags",
        }
    }
}

/// Largest CQ the kernel accepts (`IORING_MAX_CQ_ENTRIES`).
const MAX_CQ: u32 = 65536;

/// Completion-queue size that cannot overflow.
///
/// Completions outstanding at once are bounded by what we have in flight:
/// * recv data CQEs each hold a provided buffer until we process and
///   recycle it: at most `buf_count`;
/// * per connection at most one terminal recv CQE, one send CQE (at most
///   one send in flight) and, when it closes, one cancel CQE for each: 4;
/// * accepts: a multishot accept posts one CQE per queued connection, at
///   most `backlog` per listener between two drains;
/// * a few more for the wake read and listener cancels.
pub(crate) fn cq_entries(cfg: &ShardConfig, listeners: usize) -> (u32, bool) {
    let need = cfg.buf_count as u64
        + 4 * cfg.max_connections as u64
        + cfg.backlog as u64 * listeners.max(1) as u64
        + 64;
    let want = need.next_power_of_two().max(2 * cfg.ring_entries as u64);
    if want > MAX_CQ as u64 {
        (MAX_CQ, false)
    } else {
        (want as u32, true)
    }
}

fn kernel_disallows_defer() -> bool {
    let Ok(rel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let Some((maj, min)) = sys::kernel_version() else {
        return false;
    };
    (maj, min) == (6, 6) || (maj, min) == (6, 7) || ((maj, min) == (6, 8) && rel.contains("-rc"))
}

/// Build a ring with the best flags this kernel accepts.
pub(crate) fn build_ring(sq: u32, cq: u32) -> io::Result<(IoUring, Mode)> {
    let mut last = None;
    // Diagnostic override (kernel-bug workarounds, measurements):
    // RINGCAST_URING_SETUP=coop starts the cascade at COOP_TASKRUN.
    let skip_defer = std::env::var("RINGCAST_URING_SETUP").is_ok_and(|v| v == "coop");
    for mode in [
        Mode::DeferTaskrun,
        Mode::CoopSingleIssuer,
        Mode::Coop,
        Mode::Plain,
    ] {
        if mode == Mode::DeferTaskrun && (skip_defer || kernel_disallows_defer()) {
            continue;
        }
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        match mode {
            Mode::DeferTaskrun => {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            }
            Mode::CoopSingleIssuer => {
                b.setup_single_issuer()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag();
            }
            Mode::Coop => {
                b.setup_coop_taskrun();
            }
            Mode::Plain => {}
        }
        match b.build(sq) {
            Ok(r) => return Ok((r, mode)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)))
}

fn io_uring_disabled_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Explain a failed `io_uring_setup`.
pub(crate) fn explain_setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSYS) => "io_uring_setup returned ENOSYS: the kernel was built without io_uring \
             or a seccomp filter rejects it"
            .into(),
        Some(libc::EPERM) => match io_uring_disabled_sysctl() {
            Some(2) => "io_uring_setup returned EPERM: io_uring is disabled by the sysctl \
                 kernel.io_uring_disabled=2"
                .into(),
            Some(1) => "io_uring_setup returned EPERM: kernel.io_uring_disabled=1 limits io_uring to \
                 members of kernel.io_uring_group, and this process is not one"
                .into(),
            _ => "io_uring_setup returned EPERM: blocked by a seccomp filter (Docker's default \
                 profile blocks every io_uring syscall) or a security module"
                .into(),
        },
        Some(libc::ENOMEM) => format!("io_uring_setup returned ENOMEM ({e}): out of memory or the locked-memory limit (RLIMIT_MEMLOCK) is too low"),
        _ => format!("io_uring_setup failed: {e}"),
    }
}

/// Can the io_uring backend run here? Builds a ring with the flags shards
/// will use, checks features and opcodes, registers a buffer ring and runs
/// one real multishot recv over a socketpair.
pub(crate) fn probe(cfg: &ShardConfig) -> Result<Mode, String> {
    if let Some((maj, min)) = sys::kernel_version() {
        if (maj, min) < (6, 0) {
            return Err(format!(
                "kernel {maj}.{min} lacks multishot recv with provided-buffer rings (needs 6.0)"
            ));
        }
    }
    let (cq, _) = cq_entries(cfg, 1);
    let (mut ring, mode) = build_ring(8, cq.min(256)).map_err(|e| explain_setup_error(&e))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("kernel lacks IORING_FEAT_EXT_ARG (wait with timeout; 5.11)".into());
    }
    if !ring.params().is_feature_nodrop() {
        return Err("kernel lacks IORING_FEAT_NODROP (5.5)".into());
    }
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("IORING_REGISTER_PROBE failed: {e}"))?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::SendMsg::CODE, "IORING_OP_SENDMSG"),
        (opcode::AsyncCancel2::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("kernel lacks the {name} opcode"));
        }
    }
    // A real multishot recv into a registered buffer ring.
    let mut bufs = BufRing::new(2, 64, 0).map_err(|e| format!("mmap for buffer ring: {e}"))?;
    bufs.register(&ring.submitter(), 2)
        .map_err(|e| format!("provided-buffer ring registration failed: {e}"))?;
    let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
    let sqe = opcode::RecvMulti::new(types::Fd(a.as_raw_fd()), bufs.bgid())
        .build()
        .user_data(1);
    // SAFETY: the recv reads only into the registered buffer ring, which
    // `bufs` keeps mapped; it is cancelled and reaped (or the ring destroyed
    // with `bufs` leaked) before `bufs` is dropped below.
    unsafe {
        ring.submission()
            .push(&sqe)
            .map_err(|_| "submission queue full".to_string())?
    };
    std::io::Write::write_all(&mut &b, b"x").map_err(|e| e.to_string())?;
    let ts = types::Timespec::from(Duration::from_secs(5));
    let args = types::SubmitArgs::new().timespec(&ts);
    let _ = ring.submitter().submit_with_args(1, &args);
    let cqe = ring.completion().next();
    let ok = matches!(&cqe, Some(c) if c.result() == 1 && cqueue::more(c.flags()));
    // Clean up: cancel and reap, so the buffer memory is free to release.
    let cancel = opcode::AsyncCancel2::new(types::CancelBuilder::any())
        .build()
        .user_data(2);
    // SAFETY: the cancel carries no user memory.
    let _ = unsafe { ring.submission().push(&cancel) };
    let recv_pending = cqe.as_ref().is_none_or(|c| cqueue::more(c.flags()));
    let mut outstanding = if recv_pending { 2 } else { 1 };
    for _ in 0..8 {
        if outstanding == 0 {
            break;
        }
        let _ = ring.submitter().submit_with_args(1, &args);
        for c in ring.completion() {
            if c.user_data() == 2 || !cqueue::more(c.flags()) {
                outstanding -= 1;
            }
        }
    }
    let _ = ring.submitter().unregister_buf_ring(bufs.bgid());
    drop(ring);
    if outstanding == 0 {
        drop(bufs);
    } else {
        // The kernel might still reference it: never free, just leak 2 pages.
        std::mem::forget(bufs);
    }
    if !ok {
        return Err(match cqe {
            Some(c) if c.result() < 0 => format!(
                "multishot recv with a buffer ring failed: {}",
                io::Error::from_raw_os_error(-c.result())
            ),
            Some(_) => "multishot recv with a buffer ring did not stay armed".into(),
            None => "multishot recv with a buffer ring did not complete".into(),
        });
    }
    Ok(mode)
}
