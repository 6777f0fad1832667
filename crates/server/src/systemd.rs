//! The small part of the systemd service protocol ringcast speaks, without
//! libsystemd:
//!
//! * `sd_notify`: datagrams such as `READY=1` to the unix socket named by
//!   `$NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace).
//! * The watchdog: `$WATCHDOG_USEC` (and `$WATCHDOG_PID`) say how often
//!   `WATCHDOG=1` must arrive.
//! * Socket activation: `$LISTEN_PID` / `$LISTEN_FDS` hand us listening
//!   sockets starting at fd 3.
//!
//! Everything is a no-op when the variables are absent, so the same binary
//! runs unchanged outside systemd.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// First inherited fd (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Takes the listening sockets passed by systemd socket activation.
///
/// Returns an empty list when `$LISTEN_PID` is unset or names another process
/// (the variables were inherited by accident). Otherwise returns fds
/// `3..3+$LISTEN_FDS`, each marked close-on-exec and checked to be a
/// listening stream socket; the first bad fd is a clear error. The fds are
/// returned in the order of the `.socket` unit, in the blocking mode systemd
/// created them with (the caller makes them non-blocking as it needs).
///
/// `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` are removed from the
/// environment in every case, so a second call returns an empty list rather
/// than taking ownership of the same fds twice, and children don't inherit
/// them. Call it early in `main`, before other threads start (changing the
/// environment races with threads that read it).
pub fn listen_fds() -> io::Result<Vec<OwnedFd>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");

    let count = parse_listen_env(pid.as_deref(), fds.as_deref(), std::process::id())?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let fd = LISTEN_FDS_START + i as RawFd;
        check_fd_open_and_cloexec(fd)?;
        // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process (LISTEN_PID
        // matched our pid) and nothing else in the process claims them; fcntl just
        // confirmed the fd is open. The environment variables are already removed,
        // so this is the only place that ever takes ownership of them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        check_listening_stream(owned.as_fd())
            .map_err(|e| io::Error::new(e.kind(), format!("socket activation: fd {fd}: {e}")))?;
        out.push(owned);
    }
    Ok(out)
}

/// How many fds were passed to us, from the values of `LISTEN_PID` and
/// `LISTEN_FDS` and our pid. Pure, for testing.
fn parse_listen_env(pid: Option<&str>, fds: Option<&str>, my_pid: u32) -> io::Result<usize> {
    let Some(pid) = pid else { return Ok(0) };
    let pid: u32 = pid.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: bad LISTEN_PID={pid:?}"),
        )
    })?;
    if pid != my_pid {
        // Meant for another process (e.g. we were exec'd by a wrapper that forked).
        return Ok(0);
    }
    let Some(fds) = fds else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket activation: LISTEN_PID is set but LISTEN_FDS is missing",
        ));
    };
    let n: usize = fds.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: bad LISTEN_FDS={fds:?}"),
        )
    })?;
    // Fd numbers are ints; anything near that is nonsense, not a real hand-over.
    if n > 65_536 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket activation: LISTEN_FDS={n} is implausibly large"),
        ));
    }
    Ok(n)
}

fn check_fd_open_and_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD only queries the descriptor flags of `fd`; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("socket activation: LISTEN_FDS covers fd {fd} but it is not open: {e}"),
        ));
    }
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: F_SETFD only changes the descriptor flags of `fd`; no memory is passed.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` holds the size of
    // `value`, so the kernel writes at most that many bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Errors unless `fd` is a socket of type SOCK_STREAM in the listening state.
fn check_listening_stream(fd: BorrowedFd<'_>) -> io::Result<()> {
    let ty = match getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
        Ok(t) => t,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a socket; ringcast needs a listening TCP socket (ListenStream= in the .socket unit)",
            ));
        }
        Err(e) => return Err(e),
    };
    if ty != libc::SOCK_STREAM {
        let what = match ty {
            libc::SOCK_DGRAM => "a datagram socket (ListenDatagram=)",
            libc::SOCK_SEQPACKET => "a seqpacket socket (ListenSequentialPacket=)",
            _ => "not a stream socket",
        };
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}; ringcast needs a listening stream socket (ListenStream=)"),
        ));
    }
    if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a stream socket that is not listening (Accept=yes in the .socket unit?); \
             ringcast needs Accept=no and a listening socket",
        ));
    }
    Ok(())
}

/// Where `$NOTIFY_SOCKET` points.
fn parse_notify_socket(value: &str) -> Option<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        // Abstract namespace: '@' stands for the leading NUL byte.
        SocketAddr::from_abstract_name(name.as_bytes()).ok()
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value).ok()
    } else {
        // e.g. "vsock:..." (VMs); not supported, silently off.
        None
    }
}

/// The watchdog interval from `$WATCHDOG_USEC`, if it applies to `my_pid`.
fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, my_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != my_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

struct Target {
    addr: SocketAddr,
    /// For READY/STOPPING: blocking with a short timeout, since these matter.
    reliable: UnixDatagram,
    /// For WATCHDOG/STATUS: non-blocking; if the manager isn't reading, drop
    /// the datagram instead of stalling the caller (possibly an event loop).
    lossy: UnixDatagram,
}

/// Sends `sd_notify` messages. A no-op when `$NOTIFY_SOCKET` is unset.
/// `Send + Sync`: may be shared by all shards and the supervisor thread.
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.target.is_some())
            .field("watchdog", &self.watchdog)
            .finish()
    }
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`. The
    /// variables are left in place.
    pub fn from_env() -> Self {
        let target = std::env::var("NOTIFY_SOCKET").ok().and_then(|v| {
            let addr = parse_notify_socket(&v)?;
            let reliable = UnixDatagram::unbound().ok()?;
            reliable
                .set_write_timeout(Some(Duration::from_secs(2)))
                .ok()?;
            let lossy = UnixDatagram::unbound().ok()?;
            lossy.set_nonblocking(true).ok()?;
            Some(Target {
                addr,
                reliable,
                lossy,
            })
        });
        let watchdog = parse_watchdog(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            target,
            watchdog,
            warned: AtomicBool::new(false),
        }
    }

    /// A notifier that never sends anything.
    pub fn disabled() -> Self {
        Notifier {
            target: None,
            watchdog: None,
            warned: AtomicBool::new(false),
        }
    }

    /// True when `$NOTIFY_SOCKET` was set to a usable address.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    fn send(&self, msg: &str, reliable: bool) {
        let Some(t) = &self.target else { return };
        let sock = if reliable { &t.reliable } else { &t.lossy };
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), &t.addr) {
            // Worth one warning; repeating it per watchdog tick is noise.
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "sd_notify to NOTIFY_SOCKET failed");
            }
        }
    }

    /// Sends an arbitrary newline-separated state string.
    pub fn notify(&self, state: &str) {
        self.send(state, true);
    }

    /// `READY=1`: every shard is listening.
    pub fn ready(&self) {
        self.send("READY=1", true);
    }

    /// `STOPPING=1`: a drain has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1", true);
    }

    /// `STATUS=...`: free text shown by `systemctl status`. Newlines are
    /// replaced, since they would start a new assignment.
    pub fn status(&self, s: &str) {
        let line: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
        self.send(&format!("STATUS={line}"), false);
    }

    /// `WATCHDOG=1`: the service is alive. Call only from a place that proves
    /// the event loops run (see [`spawn_supervisor`]).
    pub fn watchdog(&self) {
        if self.target.is_some() && self.watchdog.is_some() {
            self.send("WATCHDOG=1", false);
        }
    }

    /// `$WATCHDOG_USEC` when the watchdog is on for this process. Ping at
    /// least twice per interval.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        if self.target.is_some() {
            self.watchdog
        } else {
            None
        }
    }
}

/// Longest delay between setting the supervisor's `stop` flag and its exit.
const STOP_POLL: Duration = Duration::from_millis(50);

/// A text for `STATUS=`.
pub fn status_text(metrics: &Metrics) -> String {
    let conns = metrics.total_connections();
    let rooms = metrics.total_rooms();
    format!(
        "{conns} connection{}, {rooms} room{}, {} shard{} ({})",
        if conns == 1 { "" } else { "s" },
        if rooms == 1 { "" } else { "s" },
        metrics.shards().len(),
        if metrics.shards().len() == 1 { "" } else { "s" },
        metrics.backend(),
    )
}

/// Starts a thread that keeps systemd informed until `stop` is set:
///
/// * `STATUS=` with the connection count every `status_every` (when it changed);
/// * `WATCHDOG=1` twice per watchdog interval, but only while every shard's
///   event loop is alive: each shard calls [`crate::metrics::ShardMetrics::heartbeat`]
///   on every loop iteration (and on a timer tick when idle, at least every
///   quarter of the watchdog interval). A shard whose counter stopped moving
///   withholds the ping, so systemd restarts a wedged process. Shards that
///   never called `heartbeat` at all are not checked (then the ping only proves
///   the process is alive).
///
/// Returns `None` when `$NOTIFY_SOCKET` is unset (nothing to do).
pub fn spawn_supervisor(
    notifier: Arc<Notifier>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    status_every: Duration,
) -> io::Result<Option<JoinHandle<()>>> {
    if !notifier.enabled() {
        return Ok(None);
    }
    let handle = std::thread::Builder::new()
        .name("ringcast-sd".into())
        .spawn(move || {
            let ping_every = notifier.watchdog_interval().map(|w| w / 2);
            let tick = match ping_every {
                Some(p) => p.min(status_every),
                None => status_every,
            }
            .max(Duration::from_millis(10));
            let mut last_beats: Vec<u64> =
                metrics.shards().iter().map(|s| s.heartbeats()).collect();
            let mut last_ping = Instant::now();
            let mut last_status_at = Instant::now() - status_every;
            let mut last_status = String::new();
            let mut stalled_warned = false;
            while !stop.load(Ordering::Relaxed) {
                if let Some(every) = ping_every {
                    if last_ping.elapsed() >= every {
                        last_ping = Instant::now();
                        let beats: Vec<u64> =
                            metrics.shards().iter().map(|s| s.heartbeats()).collect();
                        let stalled: Vec<usize> = beats
                            .iter()
                            .zip(&last_beats)
                            .enumerate()
                            .filter(|(_, (now, before))| **now != 0 && now == before)
                            .map(|(i, _)| metrics.shards()[i].shard())
                            .collect();
                        if stalled.is_empty() {
                            notifier.watchdog();
                            stalled_warned = false;
                        } else if !stalled_warned {
                            tracing::error!(
                                ?stalled,
                                "shard event loop stalled; withholding systemd watchdog ping"
                            );
                            stalled_warned = true;
                        }
                        last_beats = beats;
                    }
                }
                if last_status_at.elapsed() >= status_every {
                    last_status_at = Instant::now();
                    let text = status_text(&metrics);
                    if text != last_status {
                        notifier.status(&text);
                        last_status = text;
                    }
                }
                // Sleep in short slices so that setting `stop` ends the thread
                // (and lets the process exit) promptly, not after a whole tick.
                let wake = Instant::now() + tick;
                while !stop.load(Ordering::Relaxed) {
                    let left = wake.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(left.min(STOP_POLL));
                }
            }
        })?;
    Ok(Some(handle))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ShardMetrics;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    #[test]
    fn listen_env_parsing() {
        assert_eq!(parse_listen_env(None, None, 10).unwrap(), 0);
        assert_eq!(parse_listen_env(None, Some("2"), 10).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("11"), Some("2"), 10).unwrap(), 0);
        assert_eq!(parse_listen_env(Some("10"), Some("2"), 10).unwrap(), 2);
        assert_eq!(parse_listen_env(Some("10"), Some("0"), 10).unwrap(), 0);
        assert!(parse_listen_env(Some("x"), Some("1"), 10).is_err());
        assert!(parse_listen_env(Some("10"), None, 10).is_err());
        assert!(parse_listen_env(Some("10"), Some("-1"), 10).is_err());
        assert!(parse_listen_env(Some("10"), Some("1x"), 10).is_err());
        assert!(parse_listen_env(Some("10"), Some("99999999"), 10).is_err());
    }

    #[test]
    fn watchdog_parsing() {
        assert_eq!(parse_watchdog(None, None, 1), None);
        assert_eq!(parse_watchdog(Some("0"), None, 1), None);
        assert_eq!(parse_watchdog(Some("abc"), None, 1), None);
        assert_eq!(
            parse_watchdog(Some("500000"), None, 1),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            parse_watchdog(Some("500000"), Some("1"), 1),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_watchdog(Some("500000"), Some("2"), 1), None);
        assert_eq!(parse_watchdog(Some("500000"), Some("x"), 1), None);
    }

    #[test]
    fn notify_socket_parsing() {
        let a = parse_notify_socket("/run/systemd/notify").unwrap();
        assert_eq!(
            a.as_pathname().unwrap().to_str(),
            Some("/run/systemd/notify")
        );
        let b = parse_notify_socket("@abc").unwrap();
        assert_eq!(b.as_abstract_name(), Some(&b"abc"[..]));
        assert!(parse_notify_socket("vsock:2:1").is_none());
        assert!(parse_notify_socket("").is_none());
    }

    #[test]
    fn validates_socket_kinds() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        check_listening_stream(l.as_fd()).unwrap();

        let s = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let e = check_listening_stream(s.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not listening"), "{e}");

        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let e = check_listening_stream(u.as_fd()).unwrap_err();
        assert!(e.to_string().contains("datagram"), "{e}");

        let f = std::fs::File::open("/dev/null").unwrap();
        let e = check_listening_stream(f.as_fd()).unwrap_err();
        assert!(e.to_string().contains("not a socket"), "{e}");
    }

    fn test_notifier(addr: SocketAddr, watchdog: Option<Duration>) -> Notifier {
        let reliable = UnixDatagram::unbound().unwrap();
        let lossy = UnixDatagram::unbound().unwrap();
        lossy.set_nonblocking(true).unwrap();
        Notifier {
            target: Some(Target {
                addr,
                reliable,
                lossy,
            }),
            watchdog,
            warned: AtomicBool::new(false),
        }
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_abstract_socket() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("ringcast-unit-{}-{nanos}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = test_notifier(addr, None);
        n.ready();
        assert_eq!(recv(&rx), "READY=1");
        n.status("3 connections\nX=1");
        assert_eq!(recv(&rx), "STATUS=3 connections X=1");
        n.watchdog(); // no WATCHDOG_USEC: nothing sent
        n.stopping();
        assert_eq!(recv(&rx), "STOPPING=1");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn disabled_is_silent() {
        let n = Notifier::disabled();
        n.ready();
        n.watchdog();
        assert_eq!(n.watchdog_interval(), None);
        assert!(!n.enabled());
    }

    #[test]
    fn supervisor_stops_promptly() {
        // An hour between status updates must not mean an hour to shut down.
        let addr = SocketAddr::from_abstract_name(b"ringcast-unit-nobody-listens").unwrap();
        let notifier = Arc::new(test_notifier(addr, None));
        let metrics = Arc::new(Metrics::new(vec![Arc::new(ShardMetrics::new(0))], "epoll"));
        let stop = Arc::new(AtomicBool::new(false));
        let h = spawn_supervisor(notifier, metrics, stop.clone(), Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let t = Instant::now();
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "supervisor slept through stop"
        );
    }

    #[test]
    fn supervisor_pings_only_while_shards_beat() {
        let dir = std::env::temp_dir().join(format!("ringcast-sd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("n.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let addr = SocketAddr::from_pathname(&path).unwrap();
        let notifier = Arc::new(test_notifier(addr, Some(Duration::from_millis(100))));
        let shard = Arc::new(ShardMetrics::new(0));
        let metrics = Arc::new(Metrics::new(vec![shard.clone()], "epoll"));
        let stop = Arc::new(AtomicBool::new(false));
        let beating = Arc::new(AtomicBool::new(true));
        let beater = {
            let (shard, beating) = (shard.clone(), beating.clone());
            std::thread::spawn(move || {
                while beating.load(Ordering::Relaxed) {
                    shard.heartbeat();
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let h = spawn_supervisor(notifier, metrics, stop.clone(), Duration::from_secs(3600))
            .unwrap()
            .unwrap();
        let mut seen = Vec::new();
        while seen.iter().filter(|m: &&String| *m == "WATCHDOG=1").count() < 2 {
            seen.push(recv(&rx));
        }
        assert!(
            seen.iter().any(|m| m.starts_with("STATUS=0 connections")),
            "{seen:?}"
        );
        // Wedge the shard: once the beater has exited no heartbeat can happen, so
        // at most one more ping (for the last beat) may arrive; a supervisor that
        // ignored the stall would send one every 50 ms.
        beating.store(false, Ordering::Relaxed);
        beater.join().unwrap();
        rx.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        let mut after = 0;
        let mut buf = [0u8; 64];
        while let Ok(n) = rx.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1" {
                after += 1;
            }
            assert!(after <= 1, "watchdog kept pinging for a stalled shard");
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
