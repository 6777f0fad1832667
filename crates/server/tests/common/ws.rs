//! A minimal WebSocket client for tests (masking with a fixed key is fine here).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long a test waits for a frame.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A minimal WebSocket client (masking with a fixed key is fine for tests).
pub struct Client {
    pub s: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr, path: &str) -> Client {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut c = Client { s, buf: Vec::new() };
        let end = loop {
            if let Some(p) = c.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            c.fill();
        };
        assert!(
            c.buf.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&c.buf)
        );
        c.buf.drain(..end);
        c
    }

    pub fn fill(&mut self) {
        let mut tmp = [0u8; 65536];
        let n = loop {
            match self.s.read(&mut tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r.expect("read"),
            }
        };
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&tmp[..n]);
    }

    pub fn send(&mut self, opcode: u8, payload: &[u8]) {
        let key = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    pub fn text(&mut self, t: &str) {
        self.send(1, t.as_bytes());
    }

    /// Next frame: (opcode, payload); pings are skipped.
    pub fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            while self.buf.len() < 2 {
                self.fill();
            }
            let op = self.buf[0] & 0x0f;
            let (len, off) = match self.buf[1] & 0x7f {
                126 => {
                    while self.buf.len() < 4 {
                        self.fill();
                    }
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                }
                127 => {
                    while self.buf.len() < 10 {
                        self.fill();
                    }
                    (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    )
                }
                n => (n as usize, 2),
            };
            while self.buf.len() < off + len {
                self.fill();
            }
            let payload = self.buf[off..off + len].to_vec();
            self.buf.drain(..off + len);
            if op != 9 {
                return (op, payload);
            }
        }
    }

    pub fn recv_text(&mut self) -> String {
        let (op, p) = self.recv();
        assert_eq!(
            op,
            1,
            "expected text, got opcode {op}: {:?}",
            String::from_utf8_lossy(&p)
        );
        String::from_utf8(p).unwrap()
    }

    pub fn recv_close_code(&mut self) -> u16 {
        loop {
            let (op, p) = self.recv();
            if op == 8 {
                return u16::from_be_bytes([p[0], p[1]]);
            }
        }
    }
}
