//! A real `redis-server` per test, on a free port, in a temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
static SEQ: AtomicU64 = AtomicU64::new(0);

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn redis_binary() -> String {
    std::env::var("RINGCAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let dir = std::env::temp_dir().join(format!(
            "ringcast-backplane-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Redis {
            child: None,
            port,
            dir,
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("redis.log")).unwrap();
        let mut cmd = Command::new(redis_binary());
        // If the test process is killed, take redis-server down with it (the signal fires
        // when the spawning thread ends; Drop has normally stopped it already).
        // SAFETY: the closure runs in the forked child before exec, where only
        // async-signal-safe calls are allowed: it makes one prctl syscall and
        // neither allocates nor takes a lock.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`{}` not found: these tests need a real Redis. Run ./scripts/install-test-deps.sh \
                 (or set RINGCAST_REDIS_SERVER to the redis-server binary)",
                redis_binary()
            ),
            Err(e) => panic!("cannot run {}: {e}", redis_binary()),
        };
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Resp::Simple(s)) = try_resp(self.port, &[b"PING"]) {
                if s == "PONG" {
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                panic!(
                    "redis-server exited ({status}) on port {}:\n{log}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Same port, empty data set.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn cmd(&self, args: &[&[u8]]) -> Resp {
        try_resp(self.port, args).expect("redis command")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Minimal RESP client for checks and for injecting foreign messages.
#[derive(Debug, PartialEq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Resp>),
}

pub fn try_resp(port: u16, args: &[&[u8]]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    s.write_all(&out)?;
    read_resp(&mut BufReader::new(s))
}

pub fn read_resp(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    if line.is_empty() {
        return Err(std::io::Error::other("connection closed"));
    }
    let (kind, rest) = line.split_at(1);
    let num = || rest.parse::<i64>().map_err(std::io::Error::other);
    Ok(match kind {
        "+" => Resp::Simple(rest.to_string()),
        "-" => Resp::Error(rest.to_string()),
        ":" => Resp::Int(num()?),
        "$" if num()? < 0 => Resp::Bulk(None),
        "$" => {
            let mut b = vec![0; num()? as usize + 2];
            r.read_exact(&mut b)?;
            b.truncate(b.len() - 2);
            Resp::Bulk(Some(b))
        }
        "*" => Resp::Array(
            (0..num()?.max(0))
                .map(|_| read_resp(r))
                .collect::<Result<_, _>>()?,
        ),
        _ => return Err(std::io::Error::other(format!("bad reply {line}"))),
    })
}
