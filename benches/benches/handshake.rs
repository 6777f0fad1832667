//! Opening handshake: parse a browser-like request head, validate it and
//! build the 101 response.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ringcast_codec::{accept_key, response_101, RequestParser, MAX_HEADER_BYTES_DEFAULT};

const REQUEST: &[u8] = b"GET /events?room=lobby HTTP/1.1\r\n\
Host: ringcast.example.com\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: https://ringcast.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.bench_function("parse_validate_respond", |b| {
        b.iter(|| {
            let mut p = RequestParser::new(MAX_HEADER_BYTES_DEFAULT);
            let req = p.push(black_box(REQUEST)).unwrap().unwrap();
            let key = req.validate_upgrade().unwrap();
            response_101(key, None)
        })
    });
    g.bench_function("parse_in_64B_pieces", |b| {
        b.iter(|| {
            let mut p = RequestParser::new(MAX_HEADER_BYTES_DEFAULT);
            let mut done = None;
            for piece in black_box(REQUEST).chunks(64) {
                if let Some(r) = p.push(piece).unwrap() {
                    done = Some(r);
                }
            }
            done.unwrap()
        })
    });
    g.bench_function("accept_key", |b| {
        b.iter(|| accept_key(black_box("dGhlIHNhbXBsZSBub25jZQ==")))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = ringcast_benches::config();
    targets = handshake
}
criterion_main!(benches);
