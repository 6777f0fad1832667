//! Handshake parser fuzz target.
//!
//! Input: one limit byte, one split byte, then the bytes. The server-side
//! request parser runs on the input whole and in small chunks (same outcome
//! required), every accessor and response builder is exercised, and the
//! client-side response parser is fed the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_codec::{
    error_response, response_101, ClientHandshake, HandshakeError, RequestParser,
};

#[derive(Debug, PartialEq, Eq)]
struct Seen {
    path: String,
    query: Option<String>,
    headers: Vec<(String, String)>,
    valid: Result<String, HandshakeError>,
    remaining: Vec<u8>,
}

fn chunks(input: &[u8], split: u8) -> Vec<&[u8]> {
    if split == 0 {
        return vec![input];
    }
    let mut out = Vec::new();
    let mut pos = 0;
    let mut step = 0usize;
    while pos < input.len() {
        let n = 1 + (step * 5 + split as usize) % split as usize;
        step += 1;
        let end = input.len().min(pos + n);
        out.push(&input[pos..end]);
        pos = end;
    }
    out
}

fn server(input: &[u8], limit: usize, split: u8) -> Result<Option<Seen>, HandshakeError> {
    let mut p = RequestParser::new(limit);
    let mut req = None;
    for c in chunks(input, split) {
        match p.push(c) {
            Ok(Some(r)) => {
                assert!(req.is_none(), "head completed twice");
                req = Some(r);
            }
            Ok(None) => {}
            Err(e) => {
                assert!(matches!(e.status, 400 | 431), "{e}");
                assert!(req.is_none());
                // Sticky.
                assert_eq!(p.push(b"\r\n\r\n").unwrap_err(), e);
                let resp = error_response(e.status, e.reason);
                assert!(resp.starts_with(b"HTTP/1.1 4"));
                return Err(e);
            }
        }
    }
    let Some(r) = req else {
        return Ok(None);
    };
    // Exercise every accessor.
    let _ = (
        r.method(),
        r.host(),
        r.origin(),
        r.wants_upgrade(),
        r.header("upgrade"),
    );
    let protos = r.protocols();
    let _ = r.extensions();
    let valid = r.validate_upgrade().map(|k| {
        let resp = response_101(k, protos.first().copied());
        assert!(resp.ends_with(b"\r\n\r\n"));
        k.to_owned()
    });
    if let Err(e) = valid {
        assert!(matches!(e.status, 400 | 426), "{e}");
    }
    Ok(Some(Seen {
        path: r.path().to_owned(),
        query: r.query().map(str::to_owned),
        headers: r
            .headers()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        valid,
        remaining: p.take_remaining(),
    }))
}

fn client(input: &[u8], split: u8) {
    let mut c = ClientHandshake::new("h", "/", [3; 16], &[("Sec-WebSocket-Protocol", "chat")]);
    let mut fed = 0usize;
    for ch in chunks(input, split) {
        match c.push_response(ch) {
            Ok(None) => fed += ch.len(),
            Ok(Some(n)) => {
                assert!(n <= ch.len());
                assert!(fed + n <= input.len());
                return;
            }
            Err(_) => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [limit, split, input @ ..] = data else {
        return;
    };
    let limit = if *limit == 0 {
        8192
    } else {
        *limit as usize * 8
    };
    let whole = server(input, limit, 0);
    let pieces = server(input, limit, split % 13);
    assert_eq!(whole, pieces);
    client(input, split % 13);
});
