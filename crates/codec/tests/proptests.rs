//! Property tests: client→server round trips under arbitrary chunking, every
//! unmask variant against the byte-at-a-time reference, the streaming UTF-8
//! validator against `std`, the request parser under arbitrary splits, and
//! the extension parser and permessage-deflate negotiation on any input.

mod common;

use common::*;
use proptest::prelude::*;
use ringcast_codec::internals::{unmask, variants, Utf8Stream};
use ringcast_codec::{
    encode_client_frame, parse_extensions, BufferPool, Decoder, DecoderConfig, DeflateConfig, Lend,
    MaskGen, NoLend, OpCode, ProtocolError, RequestParser,
};

/// Deterministic filler so large buffers are cheap to generate.
fn fill(len: usize, seed: u64) -> Vec<u8> {
    let mut g = MaskGen::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&g.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Cuts `0..len` at the given fractions.
fn cuts(len: usize, fracs: &[f64]) -> Vec<usize> {
    let mut c: Vec<usize> = fracs.iter().map(|f| (f * len as f64) as usize).collect();
    c.push(0);
    c.push(len);
    c.sort_unstable();
    c.dedup();
    c
}

/// Feeds `wire` cut at `cuts`, collecting everything up to the first error.
fn feed_at<P: BufferPool>(
    dec: &mut Decoder<P>,
    wire: &[u8],
    cuts: &[usize],
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    feed_at_lent(dec, wire, cuts, &mut NoLend)
}

/// [`feed_at`] through a lender.
fn feed_at_lent<P: BufferPool, L: for<'a> Lend<'a>>(
    dec: &mut Decoder<P>,
    wire: &[u8],
    cuts: &[usize],
    lend: &mut L,
) -> (Vec<Owned>, Result<(), ProtocolError>) {
    let mut got = Vec::new();
    for w in cuts.windows(2) {
        let (m, r) = feed_lent(dec, &wire[w[0]..w[1]], lend);
        got.extend(m);
        if r.is_err() {
            return (got, r);
        }
    }
    (got, Ok(()))
}

#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

fn msg() -> impl Strategy<Value = (Msg, usize)> {
    let frag = 1usize..300;
    prop_oneof![
        (any::<String>(), frag.clone()).prop_map(|(s, f)| (Msg::Text(s), f)),
        (prop::collection::vec(any::<u8>(), 0..2000), frag.clone())
            .prop_map(|(b, f)| (Msg::Binary(b), f)),
        (0usize..70_000, any::<u64>(), Just(70_000usize))
            .prop_map(|(n, s, f)| (Msg::Binary(fill(n, s)), f)),
        prop::collection::vec(any::<u8>(), 0..=125).prop_map(|b| (Msg::Ping(b), 1)),
    ]
}

/// Encodes a data message as client frames of at most `frag` bytes, cutting
/// text anywhere (even inside a code point).
fn encode(out: &mut Vec<u8>, m: &Msg, frag: usize, g: &mut MaskGen) {
    let (op, bytes) = match m {
        Msg::Text(s) => (OpCode::Text, s.as_bytes()),
        Msg::Binary(b) => (OpCode::Binary, &b[..]),
        Msg::Ping(p) => {
            encode_client_frame(out, true, OpCode::Ping, p, g.next_mask());
            return;
        }
    };
    let pieces: Vec<&[u8]> = if bytes.is_empty() {
        vec![&[]]
    } else {
        bytes.chunks(frag).collect()
    };
    for (i, p) in pieces.iter().enumerate() {
        let o = if i == 0 { op } else { OpCode::Continuation };
        encode_client_frame(out, i + 1 == pieces.len(), o, p, g.next_mask());
    }
}

fn expected(m: &Msg) -> Owned {
    match m {
        Msg::Text(s) => Owned::Text(s.clone()),
        Msg::Binary(b) => Owned::Binary(b.clone()),
        Msg::Ping(p) => Owned::Ping(p.clone()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn client_to_server_round_trip(
        msgs in prop::collection::vec(msg(), 0..8),
        seed in any::<u64>(),
        fracs in prop::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let mut g = MaskGen::new(seed);
        let mut wire = Vec::new();
        for (m, frag) in &msgs {
            encode(&mut wire, m, *frag, &mut g);
        }
        let c = cuts(wire.len(), &fracs);
        let mut dec = Decoder::new(DecoderConfig::default());
        let (got, r) = feed_at(&mut dec, &wire, &c);
        prop_assert_eq!(r, Ok(()));
        let want: Vec<Owned> = msgs.iter().map(|(m, _)| expected(m)).collect();
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(dec.capacity(), 0);

        // The same through a pool that builds server frames: the same
        // messages, and every frame it sealed carries one of them, in order.
        let (mut dec, sealed) = framing_server(DecoderConfig::default(), 0);
        prop_assert_eq!(feed_at(&mut dec, &wire, &c), (want.clone(), Ok(())));
        prop_assert_eq!(dec.buffered(), 0);
        prop_assert_eq!(dec.capacity(), 0);
        let carried = decode_frames(&sealed.borrow());
        let mut rest = want.iter();
        for m in &carried {
            prop_assert!(rest.any(|w| w == m), "sealed frame {:?} is not a message, in order", m);
        }

        // And with a lender as well (taking every frame it is offered, or
        // none): the same messages; every frame lent or sealed carries one
        // of them, in order.
        for decline in [false, true] {
            let (mut dec, sealed) = framing_server(DecoderConfig::default(), 0);
            let mut lend = CopyLend { decline, ..CopyLend::default() };
            prop_assert_eq!(feed_at_lent(&mut dec, &wire, &c, &mut lend), (want.clone(), Ok(())));
            prop_assert_eq!((dec.buffered(), dec.capacity()), (0, 0));
            let lent = lend.lent.borrow();
            prop_assert!(!decline || lent.is_empty());
            for frames in [&lent[..], &sealed.borrow()[..]] {
                let mut rest = want.iter();
                for m in &decode_frames(frames) {
                    prop_assert!(rest.any(|w| w == m), "frame {:?} is not a message, in order", m);
                }
            }
        }
    }

    #[test]
    fn chunking_never_changes_the_outcome(
        frames in prop::collection::vec(
            (any::<u8>(), any::<bool>(), prop::collection::vec(any::<u8>(), 0..300)),
            0..6,
        ),
        client_role in any::<bool>(),
        max in 0usize..700,
        cut_tail in 0usize..20,
        fracs in prop::collection::vec(0.0f64..1.0, 0..10),
    ) {
        // Random header bits (reserved opcodes, RSV, FIN, masking) so most
        // rules fire somewhere; the stream may end mid-frame.
        let mut wire = Vec::new();
        for (b0, is_masked, payload) in &frames {
            if *is_masked {
                wire.extend(masked(*b0, payload, KEY));
            } else {
                wire.extend(unmasked(*b0, payload));
            }
        }
        wire.truncate(wire.len().saturating_sub(cut_tail));
        let cfg = DecoderConfig {
            role: if client_role { ringcast_codec::Role::Client } else { ringcast_codec::Role::Server },
            max_message_size: max,
            allow_rsv1: false,
        };
        let whole = feed(&mut Decoder::new(cfg), &wire);
        let c = cuts(wire.len(), &fracs);
        let mut dec = Decoder::new(cfg);
        prop_assert_eq!(&whole, &feed_at(&mut dec, &wire, &c));
        prop_assert!(dec.capacity() <= max);

        // Building server frames changes nothing either.
        if !client_role {
            let (mut dec, _) = framing_server(cfg, 0);
            prop_assert_eq!(&whole, &feed_at(&mut dec, &wire, &c));
            // Nor does lending frames out of the chunk.
            let mut dec = Decoder::new(cfg);
            prop_assert_eq!(&whole, &feed_at_lent(&mut dec, &wire, &c, &mut CopyLend::default()));
        }
    }

    #[test]
    fn unmask_variants_equal_reference(
        len in 0usize..70_000,
        start in 0usize..64,
        key in any::<[u8; 4]>(),
        offset in any::<usize>(),
        seed in any::<u64>(),
        fracs in prop::collection::vec(0.0f64..1.0, 0..6),
    ) {
        let orig = fill(start + len, seed);
        let mut want = orig.clone();
        variants::bytewise(&mut want[start..], key, offset);
        type F = fn(&mut [u8], [u8; 4], usize);
        let mut fs: Vec<(&str, F)> = vec![("unmask", unmask), ("words", variants::words)];
        #[cfg(target_arch = "x86_64")]
        {
            fs.push(("sse2", variants::sse2));
            fs.push(("avx2", variants::avx2));
            fs.push(("avx512", variants::avx512));
        }
        #[cfg(target_arch = "aarch64")]
        fs.push(("neon", variants::neon));
        let c = cuts(len, &fracs);
        for (name, f) in fs {
            let mut got = orig.clone();
            let buf = &mut got[start..];
            // Chunk by chunk, the offset carrying the rotation.
            for w in c.windows(2) {
                f(&mut buf[w[0]..w[1]], key, offset.wrapping_add(w[0]));
            }
            prop_assert!(got == want, "{} differs", name);
        }
    }

    #[test]
    fn utf8_stream_agrees_with_std(
        s in any::<String>(),
        noise in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        fracs in prop::collection::vec(0.0f64..1.0, 0..8),
    ) {
        let mut bytes = s.into_bytes();
        if !bytes.is_empty() {
            for (i, b) in noise {
                let at = i.index(bytes.len());
                bytes[at] = b;
            }
        }
        let want = std::str::from_utf8(&bytes).is_ok();
        let mut st = Utf8Stream::new();
        let c = cuts(bytes.len(), &fracs);
        let mut ok = true;
        for w in c.windows(2) {
            if st.feed(&bytes[w[0]..w[1]]).is_err() {
                ok = false;
                break;
            }
        }
        let got = ok && st.finish().is_ok();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn request_parser_split_anywhere(
        path in "/[a-z0-9/]{0,40}",
        query in proptest::option::of("[a-z0-9=&]{0,20}"),
        key in any::<[u8; 16]>(),
        fracs in prop::collection::vec(0.0f64..1.0, 0..10),
        tail in prop::collection::vec(any::<u8>(), 0..20),
    ) {
        let target = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
        let c = ringcast_codec::ClientHandshake::new("host", &target, key, &[("Origin", "http://o")]);
        let mut input = c.request().to_vec();
        input.extend_from_slice(&tail);
        let cs = cuts(input.len(), &fracs);
        let mut p = RequestParser::default();
        let mut got = None;
        for w in cs.windows(2) {
            if let Some(r) = p.push(&input[w[0]..w[1]]).unwrap() {
                prop_assert!(got.is_none());
                got = Some(r);
            }
        }
        let r = got.expect("complete");
        prop_assert_eq!(r.path(), path.as_str());
        prop_assert_eq!(r.query(), query.as_deref());
        prop_assert_eq!(r.origin(), Some("http://o"));
        prop_assert!(r.validate_upgrade().is_ok());
        prop_assert_eq!(p.take_remaining(), tail);
    }

    #[test]
    fn extension_header_bytes_never_panic(
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
    ) {
        if let Ok(offers) = parse_extensions(&lines) {
            let _ = DeflateConfig::default().negotiate(&offers);
        }
    }

    #[test]
    fn deflate_offers_negotiate_within_rfc_7692(
        params in prop::collection::vec((0usize..6, 0u8..20, any::<bool>()), 0..6),
        cfg in (any::<bool>(), any::<bool>(), 0u8..20, 0u8..20),
    ) {
        // Offers built from the real parameter names, with and without
        // values, quoted or not, in range or not: close to what is valid.
        const NAMES: [&str; 6] = [
            "server_no_context_takeover", "client_no_context_takeover",
            "server_max_window_bits", "client_max_window_bits", "x", "Server_max_window_bits",
        ];
        let mut line = String::from("permessage-deflate");
        for &(name, bits, quoted) in &params {
            line.push_str("; ");
            line.push_str(NAMES[name]);
            match (bits, quoted) {
                (0..=4, _) => {}
                (b, false) => line.push_str(&format!("={b}")),
                (b, true) => line.push_str(&format!("=\"{b}\"")),
            }
        }
        let cfg = DeflateConfig {
            server_no_context_takeover: cfg.0,
            client_no_context_takeover: cfg.1,
            server_max_window_bits: cfg.2,
            client_max_window_bits: cfg.3,
        };
        let offers = parse_extensions([&line]).unwrap();
        let offered = |n: &str| offers[0].params.iter().find(|p| p.name == n);
        let Some(neg) = cfg.negotiate(&offers) else { return Ok(()) };
        let p = neg.params;
        prop_assert!((9..=15).contains(&p.server_max_window_bits));
        prop_assert!((8..=15).contains(&p.client_max_window_bits));
        if let Some(v) = offered("server_max_window_bits").and_then(|p| p.value.as_deref()) {
            prop_assert!(p.server_max_window_bits <= v.parse::<u8>().unwrap());
        }
        if let Some(v) = offered("client_max_window_bits").and_then(|p| p.value.as_deref()) {
            prop_assert!(p.client_max_window_bits <= v.parse::<u8>().unwrap());
        }
        prop_assert!(p.server_no_context_takeover || offered("server_no_context_takeover").is_none());
        // The response is one offer naming only what it may (§7.1).
        let back = parse_extensions([&neg.response]).unwrap();
        prop_assert_eq!(back.len(), 1);
        prop_assert_eq!(back[0].name.as_str(), "permessage-deflate");
        let answered = |n: &str| back[0].params.iter().find(|p| p.name == n);
        prop_assert_eq!(
            answered("client_max_window_bits").is_some(),
            offered("client_max_window_bits").is_some()
        );
        prop_assert!(answered("client_max_window_bits").is_none_or(|a| a.value.is_some()));
        prop_assert_eq!(
            answered("server_no_context_takeover").is_some(),
            p.server_no_context_takeover
        );
        prop_assert_eq!(
            answered("client_no_context_takeover").is_some(),
            p.client_no_context_takeover
        );
        if offered("server_max_window_bits").is_some() {
            prop_assert!(answered("server_max_window_bits").is_some());
        }
        // Accepting an offer a second time gives the same answer.
        prop_assert_eq!(cfg.negotiate(&offers), Some(neg));
    }
}
