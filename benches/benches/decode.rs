//! Frame parsing: a parsed-and-unmasked small message, batches of small
//! frames, large frames, and a fragmented message (the buffered path).
//!
//! Each iteration decodes the same buffer in place, so its payload flips
//! between masked and unmasked; the ASCII-safe key keeps text valid UTF-8
//! either way and the work per iteration is identical.

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringcast_benches::{ascii, client_frame, ASCII_SAFE_KEY};
use ringcast_codec::{Decoder, DecoderConfig, Message, OpCode};

fn run(dec: &mut Decoder, buf: &mut [u8]) -> usize {
    let mut n = 0;
    dec.decode(buf, |m| {
        n += match m {
            Message::Text(s) => s.len(),
            Message::Binary(b) => b.len(),
            _ => 0,
        };
        black_box(&m);
        ControlFlow::Continue(())
    })
    .expect("valid input");
    n
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");

    let mut text20 = client_frame(true, OpCode::Text, &ascii(20), ASCII_SAFE_KEY);
    let mut dec = Decoder::new(DecoderConfig::default());
    g.throughput(Throughput::Elements(1));
    g.bench_function("text_20B", |b| {
        b.iter(|| run(&mut dec, black_box(&mut text20)))
    });

    let mut bin20 = client_frame(true, OpCode::Binary, &ascii(20), ASCII_SAFE_KEY);
    g.bench_function("binary_20B", |b| {
        b.iter(|| run(&mut dec, black_box(&mut bin20)))
    });

    let mut batch = Vec::new();
    for _ in 0..100 {
        batch.extend(client_frame(true, OpCode::Text, &ascii(20), ASCII_SAFE_KEY));
    }
    g.throughput(Throughput::Elements(100));
    g.bench_function("text_20B_x100_one_chunk", |b| {
        b.iter(|| run(&mut dec, black_box(&mut batch)))
    });

    for (name, len) in [("binary_16KiB", 16 * 1024), ("binary_1MiB", 1024 * 1024)] {
        let mut big = client_frame(true, OpCode::Binary, &ascii(len), ASCII_SAFE_KEY);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(name, |b| b.iter(|| run(&mut dec, black_box(&mut big))));
    }

    let mut text = client_frame(true, OpCode::Text, &ascii(16 * 1024), ASCII_SAFE_KEY);
    g.throughput(Throughput::Bytes(16 * 1024));
    g.bench_function("text_16KiB", |b| {
        b.iter(|| run(&mut dec, black_box(&mut text)))
    });

    // A 16 KiB message cut by a 16 KiB read, as a 16 KiB receive buffer
    // delivers it: unmasked in place, then copied into the message buffer.
    let split = client_frame(true, OpCode::Binary, &ascii(16 * 1024), ASCII_SAFE_KEY);
    let (mut head, mut tail) = (split[..16 * 1024].to_vec(), split[16 * 1024..].to_vec());
    g.throughput(Throughput::Bytes(16 * 1024));
    g.bench_function("binary_16KiB_split", |b| {
        b.iter(|| run(&mut dec, black_box(&mut head)) + run(&mut dec, black_box(&mut tail)))
    });

    let mut frag = Vec::new();
    for i in 0..4 {
        let op = if i == 0 {
            OpCode::Binary
        } else {
            OpCode::Continuation
        };
        frag.extend(client_frame(i == 3, op, &ascii(4096), ASCII_SAFE_KEY));
    }
    g.throughput(Throughput::Bytes(4 * 4096));
    g.bench_function("binary_4x4KiB_fragmented", |b| {
        b.iter(|| run(&mut dec, black_box(&mut frag)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = ringcast_benches::config();
    targets = decode
}
criterion_main!(benches);
