//! Runs `examples/tcp_chat` (built by `cargo test`) on both backends with two
//! shards: every line reaches every other client on both shards, prefixed
//! with the sender's id; join/leave notices; graceful stop on SIGINT.

mod common;
use common::PATIENCE;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn chat_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("examples").join("tcp_chat");
    assert!(
        p.exists(),
        "{} not built (cargo test builds examples)",
        p.display()
    );
    p
}

/// The text between the first `[` and the next `]` (addresses in the
/// banner, client ids in the welcome line).
fn bracketed(s: &str) -> String {
    s.split('[')
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap()
        .to_string()
}

struct Client {
    id: String,
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn line(&mut self) -> String {
        let mut l = String::new();
        let n = self.r.read_line(&mut l).unwrap();
        assert!(n > 0, "unexpected EOF for {}", self.id);
        l
    }
}

fn chat(backend: &str) {
    let mut child = Command::new(chat_binary())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            "--backend",
            backend,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    err.read_line(&mut banner).unwrap();
    assert!(
        banner.contains(&format!("on {}", backend.replace('-', "_"))),
        "{banner}"
    );
    let addr = bracketed(&banner);

    // Connect until both shards have clients (SO_REUSEPORT hashing decides).
    let mut clients: Vec<Client> = Vec::new();
    while clients.len() < 4
        || !(clients.iter().any(|c| c.id.starts_with("0."))
            && clients.iter().any(|c| c.id.starts_with("1.")))
    {
        assert!(clients.len() < 64, "never reached both shards");
        let s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut c = Client {
            id: String::new(),
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        };
        let welcome = c.line();
        c.id = bracketed(&welcome);
        clients.push(c);
    }
    let n = clients.len();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("hello from client {i}\r\n");
        c.w.write_all(msg.as_bytes()).unwrap();
    }
    // Everyone receives the n-1 other lines (join notices interleave).
    for i in 0..n {
        let mut got = Vec::new();
        while got.len() < n - 1 {
            let l = clients[i].line();
            if l.starts_with("* ") {
                continue;
            }
            got.push(l);
        }
        for (j, other) in clients.iter().enumerate() {
            if j != i {
                let want = format!("[{}] hello from client {j}\n", other.id);
                assert!(got.contains(&want), "client {i} missing {want:?}: {got:?}");
            }
        }
    }
    // One leaves: the others hear about it.
    let gone = clients.remove(0);
    let gone_id = gone.id.clone();
    drop(gone);
    for c in clients.iter_mut() {
        loop {
            let l = c.line();
            if l == format!("* [{gone_id}] left\n") {
                break;
            }
        }
    }
    // Graceful stop: final frame, then EOF.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for c in clients.iter_mut() {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut c.r, &mut rest).unwrap();
        assert!(rest.ends_with("* server shutting down\n"), "{rest:?}");
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn chat_epoll() {
    chat("epoll");
}

#[test]
fn chat_io_uring() {
    chat("io-uring");
}
