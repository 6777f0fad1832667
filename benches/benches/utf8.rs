//! UTF-8 validation: `simdutf8::basic` in one go (the decoder's whole-frame
//! path), the streaming validator fed in 1 KiB pieces (split and fragmented
//! text), and `std::str::from_utf8` as the reference.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringcast_benches::{ascii, mixed_utf8};
use ringcast_codec::internals::Utf8Stream;

fn utf8(c: &mut Criterion) {
    let inputs = [
        ("ascii_64B", ascii(64)),
        ("ascii_16KiB", ascii(16 * 1024)),
        ("mixed_16KiB", mixed_utf8(16 * 1024)),
    ];
    for (name, data) in &inputs {
        let mut g = c.benchmark_group(format!("utf8/{name}"));
        g.throughput(Throughput::Bytes(data.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("std"), |b| {
            b.iter(|| std::str::from_utf8(black_box(data)).is_ok())
        });
        g.bench_function(BenchmarkId::from_parameter("simdutf8_basic"), |b| {
            b.iter(|| simdutf8::basic::from_utf8(black_box(data)).is_ok())
        });
        g.bench_function(BenchmarkId::from_parameter("stream_1KiB_pieces"), |b| {
            b.iter(|| {
                let mut s = Utf8Stream::new();
                for p in black_box(data).chunks(1024) {
                    s.feed(p).unwrap();
                }
                s.finish().is_ok()
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = ringcast_benches::config();
    targets = utf8
}
criterion_main!(benches);
