//! Decoder behaviour: RFC 6455 §5 examples, every protocol rule with its
//! close code, fragmentation, control interleaving, buffering and memory.

mod common;

use std::ops::ControlFlow;

use common::*;
use ringcast_codec::{Decoder, DecoderConfig, Message, OpCode, Role};

fn err_code(dec: &mut Decoder, bytes: &[u8]) -> u16 {
    let (_, r) = feed(dec, bytes);
    r.expect_err("expected a protocol error").code
}

// ---- RFC 6455 §5.7 examples ----------------------------------------------

#[test]
fn rfc_single_frame_unmasked_text() {
    let (m, r) = feed(&mut client(), &[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Text("Hello".into())]);
}

#[test]
fn rfc_single_frame_masked_text() {
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (m, r) = feed(&mut server(), &frame);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Text("Hello".into())]);
}

#[test]
fn rfc_fragmented_unmasked_text() {
    let bytes = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    let (m, r) = feed(&mut client(), &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Text("Hello".into())]);
    // And with each fragment in its own chunk.
    let (m, r) = feed_split(&mut client(), &bytes, &[5, 4]);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Text("Hello".into())]);
}

#[test]
fn rfc_ping_and_pong() {
    let (m, _) = feed(&mut client(), &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(m, vec![Owned::Ping(b"Hello".to_vec())]);
    let pong = [
        0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (m, _) = feed(&mut server(), &pong);
    assert_eq!(m, vec![Owned::Pong(b"Hello".to_vec())]);
}

#[test]
fn rfc_256_and_65536_byte_binary() {
    let mut f = vec![0x82, 0x7E, 0x01, 0x00];
    f.extend(std::iter::repeat_n(0xAB, 256));
    let (m, r) = feed(&mut client(), &f);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Binary(vec![0xAB; 256])]);

    let mut f = vec![0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];
    f.extend((0..65536u32).map(|i| i as u8));
    let (m, r) = feed(&mut client(), &f);
    assert_eq!(r, Ok(()));
    assert_eq!(
        m,
        vec![Owned::Binary((0..65536u32).map(|i| i as u8).collect())]
    );
}

// ---- incremental parsing ---------------------------------------------------

#[test]
fn frame_split_at_every_point() {
    let frame = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    for cut in 0..=frame.len() {
        let mut d = server();
        let (mut m, r) = feed(&mut d, &frame[..cut]);
        assert_eq!(r, Ok(()));
        let (m2, r) = feed(&mut d, &frame[cut..]);
        assert_eq!(r, Ok(()));
        m.extend(m2);
        assert_eq!(m, vec![Owned::Text("Hello".into())], "cut {cut}");
    }
}

#[test]
fn one_byte_at_a_time_all_length_forms() {
    for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut bytes = masked(0x82, &payload, KEY);
        bytes.extend(masked(0x89, b"p", KEY));
        let (m, r) = feed_split(&mut server(), &bytes, &[1]);
        assert_eq!(r, Ok(()));
        assert_eq!(
            m,
            vec![Owned::Binary(payload), Owned::Ping(b"p".to_vec())],
            "len {len}"
        );
    }
}

#[test]
fn many_frames_in_one_chunk() {
    let mut bytes = Vec::new();
    for i in 0..50u8 {
        bytes.extend(masked(0x82, &[i; 3], KEY));
    }
    let (m, r) = feed(&mut server(), &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(m.len(), 50);
    assert_eq!(m[49], Owned::Binary(vec![49; 3]));
}

#[test]
fn whole_frame_is_zero_copy_and_allocates_nothing() {
    let mut d = server();
    let mut chunk = masked(0x82, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], KEY);
    let range = chunk.as_ptr_range();
    let mut inside = false;
    d.decode(&mut chunk, |m| {
        if let Message::Binary(b) = m {
            inside = range.contains(&b.as_ptr());
            assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(inside, "payload must be a slice of the input chunk");
    assert_eq!(d.capacity(), 0);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn framing_pool_builds_the_server_frame_of_a_whole_message() {
    let (mut d, sealed) = framing_server(DecoderConfig::default(), 100);
    let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let mut wire = masked(0x82, &payload, KEY);
    wire.extend(masked(0x81, b"small", KEY));
    let (got, r) = feed(&mut d, &wire);
    assert_eq!(r, Ok(()));
    assert_eq!(
        got,
        [Owned::Binary(payload.clone()), Owned::Text("small".into())]
    );
    // Only the large one, and it is exactly the frame a server would send.
    let frames = sealed.borrow();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        frames[0],
        ringcast_codec::server_frame(OpCode::Binary, &payload)
    );
    assert_eq!((d.buffered(), d.capacity()), (0, 0));
}

#[test]
fn framing_pool_assembles_a_split_frame_only_when_half_is_here() {
    let text = "é".repeat(2000); // 4,000 bytes, cut inside a code point below
    let wire = masked(0x81, text.as_bytes(), KEY);
    // (Cut inside the header: the whole payload comes in the second read.)
    for (first, framed) in [
        (wire.len() - 1, true),
        (2009, true),
        (2007, false),
        (3, true),
    ] {
        let (mut d, sealed) = framing_server(DecoderConfig::default(), 100);
        let (a, r) = feed(&mut d, &wire[..first]);
        assert_eq!((a, r), (vec![], Ok(())));
        let (b, r) = feed(&mut d, &wire[first..]);
        assert_eq!(r, Ok(()));
        assert_eq!(b, [Owned::Text(text.clone())], "first read {first}");
        let frames = sealed.borrow();
        assert_eq!(frames.len(), usize::from(framed), "first read {first}");
        if framed {
            assert_eq!(
                frames[0],
                ringcast_codec::server_frame(OpCode::Text, text.as_bytes())
            );
        }
        assert_eq!((d.buffered(), d.capacity()), (0, 0));
    }
}

#[test]
fn framing_pool_still_rejects_invalid_text() {
    let mut bad = vec![b'a'; 300];
    bad[150] = 0xff;
    let wire = masked(0x81, &bad, KEY);
    for split in [wire.len(), 200] {
        let (mut d, _) = framing_server(DecoderConfig::default(), 100);
        let (m, r) = feed_split(&mut d, &wire, &[split]);
        assert!(m.is_empty());
        assert_eq!(r.unwrap_err().code, 1007, "split {split}");
    }
}

#[test]
fn lender_keeps_whole_large_messages_as_their_server_frame() {
    let big: Vec<u8> = (0..70_000u32).map(|i| (i * 13) as u8).collect();
    let text = "ü".repeat(3000);
    let mut wire = masked(0x82, &big[..5000], KEY);
    wire.extend(masked(0x81, text.as_bytes(), KEY));
    wire.extend(masked(0x82, &big, KEY)); // 64-bit length
    wire.extend(masked(0x89, b"ping", KEY)); // control: never lent
    wire.extend(masked(0x81, b"small", KEY)); // under `min`
    wire.extend(masked(0x02, &big[..300], KEY)); // fragmented: never lent
    wire.extend(masked(0x80, &big[..300], KEY));
    let mut lend = CopyLend {
        min: 100,
        ..CopyLend::default()
    };
    let mut d = server();
    let (got, r) = feed_lent(&mut d, &wire, &mut lend);
    assert_eq!(r, Ok(()));
    let mut two = big[..300].to_vec();
    two.extend_from_slice(&big[..300]);
    assert_eq!(
        got,
        [
            Owned::Binary(big[..5000].to_vec()),
            Owned::Text(text.clone()),
            Owned::Binary(big.clone()),
            Owned::Ping(b"ping".to_vec()),
            Owned::Text("small".into()),
            Owned::Binary(two),
        ]
    );
    let lent = lend.lent.borrow();
    let server_frame = ringcast_codec::server_frame;
    assert_eq!(
        *lent,
        [
            server_frame(OpCode::Binary, &big[..5000]),
            server_frame(OpCode::Text, text.as_bytes()),
            server_frame(OpCode::Binary, &big),
        ]
    );
    assert_eq!((d.buffered(), d.capacity()), (0, 0));
}

#[test]
fn lent_message_is_handed_out_of_the_kept_frame() {
    let payload = vec![7u8; 4000];
    let mut chunk = masked(0x82, &payload, KEY);
    let mut lend = CopyLend::default();
    let lent = lend.lent.clone();
    let mut inside = false;
    let r = server().decode_lent(&mut chunk, &mut lend, |m| {
        let Message::Binary(b) = m else {
            panic!("{m:?}")
        };
        let kept = &lent.borrow()[0];
        inside = std::ptr::eq(b.as_ptr(), kept[4..].as_ptr()) && b.len() == kept.len() - 4;
        ControlFlow::Continue(())
    });
    assert_eq!(r, Ok(()));
    assert!(inside, "the sink must see the lent frame's payload");
}

#[test]
fn lending_needs_the_header_in_the_chunk_and_a_willing_lender() {
    let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    let wire = masked(0x82, &payload, KEY);
    // Header cut after 5 of its 8 bytes: the payload arrives whole, but only
    // 3 header bytes are in this chunk, too few for the server's 4, so it is
    // not lent (it is assembled instead). Cut after 3: 5 are, so it is.
    for (first, decline, lent) in [(5, false, 0), (3, false, 1), (0, true, 0), (0, false, 1)] {
        let mut lend = CopyLend {
            decline,
            ..CopyLend::default()
        };
        let mut d = server();
        let (a, r) = feed_lent(&mut d, &wire[..first], &mut lend);
        assert_eq!((a, r), (vec![], Ok(())));
        let (b, r) = feed_lent(&mut d, &wire[first..], &mut lend);
        assert_eq!((b, r), (vec![Owned::Binary(payload.clone())], Ok(())));
        assert_eq!(
            lend.lent.borrow().len(),
            lent,
            "first {first} decline {decline}"
        );
    }
}

#[test]
fn lent_text_is_still_validated() {
    let mut bad = vec![b'a'; 300];
    bad[299] = 0xc3; // unfinished code point
    let wire = masked(0x81, &bad, KEY);
    for decline in [false, true] {
        let mut lend = CopyLend {
            decline,
            ..CopyLend::default()
        };
        let (m, r) = feed_lent(&mut server(), &wire, &mut lend);
        assert!(m.is_empty());
        assert_eq!(r.unwrap_err().code, 1007);
    }
}

// ---- protocol errors and their close codes --------------------------------

#[test]
fn top_bit_of_64_bit_length_is_1002() {
    let bytes = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(err_code(&mut server(), &bytes), 1002);
}

#[test]
fn rsv_bits_without_extension_are_1002() {
    for rsv in [0x40, 0x20, 0x10] {
        assert_eq!(
            err_code(&mut server(), &masked(0x81 | rsv, b"x", KEY)),
            1002
        );
    }
}

#[test]
fn rsv1_with_extension_only_on_first_data_frame() {
    let cfg = DecoderConfig {
        allow_rsv1: true,
        ..DecoderConfig::default()
    };
    let (m, r) = feed(&mut Decoder::new(cfg), &masked(0xC2, b"zz", KEY));
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Binary(b"zz".to_vec())]);
    // RSV2 is still refused, and RSV1 on control or continuation frames.
    assert_eq!(
        err_code(&mut Decoder::new(cfg), &masked(0xA2, b"", KEY)),
        1002
    );
    assert_eq!(
        err_code(&mut Decoder::new(cfg), &masked(0xC9, b"", KEY)),
        1002
    );
    let mut bytes = masked(0x42, b"a", KEY);
    bytes.extend(masked(0xC0, b"b", KEY));
    assert_eq!(err_code(&mut Decoder::new(cfg), &bytes), 1002);
}

#[test]
fn reserved_opcodes_are_1002() {
    for op in (3..=7).chain(0xB..=0xF) {
        assert_eq!(
            err_code(&mut server(), &masked(0x80 | op, b"", KEY)),
            1002,
            "{op}"
        );
    }
}

#[test]
fn oversized_or_fragmented_control_frames_are_1002() {
    assert_eq!(err_code(&mut server(), &masked(0x89, &[0; 126], KEY)), 1002);
    assert_eq!(err_code(&mut server(), &masked(0x08, &[3, 232], KEY)), 1002);
    assert_eq!(err_code(&mut server(), &masked(0x09, b"", KEY)), 1002);
    assert_eq!(err_code(&mut server(), &masked(0x0A, b"", KEY)), 1002);
    // Exactly 125 is fine.
    let (m, r) = feed(&mut server(), &masked(0x89, &[7; 125], KEY));
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Ping(vec![7; 125])]);
}

#[test]
fn masking_rules_by_role_are_1002() {
    assert_eq!(err_code(&mut server(), &unmasked(0x81, b"hi")), 1002);
    assert_eq!(err_code(&mut client(), &masked(0x81, b"hi", KEY)), 1002);
}

#[test]
fn continuation_without_message_is_1002() {
    assert_eq!(err_code(&mut server(), &masked(0x80, b"x", KEY)), 1002);
    assert_eq!(err_code(&mut server(), &masked(0x00, b"x", KEY)), 1002);
    // Also after a complete message.
    let mut bytes = masked(0x81, b"done", KEY);
    bytes.extend(masked(0x80, b"x", KEY));
    assert_eq!(err_code(&mut server(), &bytes), 1002);
}

#[test]
fn new_data_frame_inside_fragmented_message_is_1002() {
    for second in [0x81, 0x82, 0x01] {
        let mut bytes = masked(0x01, b"part", KEY);
        bytes.extend(masked(second, b"x", KEY));
        assert_eq!(err_code(&mut server(), &bytes), 1002);
    }
}

#[test]
fn invalid_utf8_text_is_1007() {
    assert_eq!(err_code(&mut server(), &masked(0x81, b"\xff", KEY)), 1007);
    assert_eq!(
        err_code(&mut server(), &masked(0x81, b"ab\xe2\x82", KEY)),
        1007
    );
    // Split frame: caught while streaming.
    let bytes = masked(0x81, b"abc\xc3\x28def", KEY);
    let (_, r) = feed_split(&mut server(), &bytes, &[3]);
    assert_eq!(r.unwrap_err().code, 1007);
}

#[test]
fn fragmented_text_fails_fast_before_fin() {
    let mut d = server();
    // First fragment already holds an impossible sequence: error now, not
    // when the final fragment arrives.
    assert_eq!(err_code(&mut d, &masked(0x01, b"ok\xf8", KEY)), 1007);
    let mut d = server();
    let (_, r) = feed(&mut d, &masked(0x01, b"ok\xed", KEY));
    assert_eq!(r, Ok(()));
    assert_eq!(err_code(&mut d, &masked(0x00, b"\xa0\x80", KEY)), 1007);
}

#[test]
fn code_point_split_across_fragments_is_accepted() {
    let text = "x€𝄞y".as_bytes();
    for cut in 0..=text.len() {
        let mut bytes = masked(0x01, &text[..cut], KEY);
        bytes.extend(masked(0x80, &text[cut..], KEY));
        let (m, r) = feed(&mut server(), &bytes);
        assert_eq!(r, Ok(()), "cut {cut}");
        assert_eq!(m, vec![Owned::Text("x€𝄞y".into())]);
    }
}

#[test]
fn text_ending_inside_code_point_is_1007() {
    let mut bytes = masked(0x01, b"a\xe2\x82", KEY);
    bytes.extend(masked(0x80, b"", KEY));
    assert_eq!(err_code(&mut server(), &bytes), 1007);
}

#[test]
fn message_over_maximum_is_1009_from_header_alone() {
    let cfg = DecoderConfig {
        max_message_size: 1000,
        ..DecoderConfig::default()
    };
    let mut d = Decoder::new(cfg);
    // 2^62 declared: refused from the 14 header bytes, nothing buffered.
    let mut h = vec![0x82, 0xFF, 0x40, 0, 0, 0, 0, 0, 0, 0];
    h.extend(KEY);
    assert_eq!(err_code(&mut d, &h), 1009);
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.capacity(), 0);
    // Exactly the maximum is fine; one more is not.
    let (m, r) = feed(&mut Decoder::new(cfg), &masked(0x82, &[0; 1000], KEY));
    assert_eq!((m.len(), r), (1, Ok(())));
    assert_eq!(
        err_code(&mut Decoder::new(cfg), &masked(0x82, &[0; 1001], KEY)),
        1009
    );
}

#[test]
fn fragmented_message_over_maximum_is_1009() {
    let cfg = DecoderConfig {
        max_message_size: 10,
        ..DecoderConfig::default()
    };
    let mut d = Decoder::new(cfg);
    let mut bytes = masked(0x02, &[1; 6], KEY);
    bytes.extend(masked(0x00, &[2; 4], KEY));
    bytes.extend(masked(0x80, &[3; 1], KEY));
    let (m, r) = feed(&mut d, &bytes);
    assert!(m.is_empty());
    assert_eq!(r.unwrap_err().code, 1009);
    assert!(d.capacity() <= 10);
}

#[test]
fn bad_close_payloads() {
    assert_eq!(err_code(&mut server(), &masked(0x88, &[3], KEY)), 1002);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
        let p = code.to_be_bytes();
        assert_eq!(
            err_code(&mut server(), &masked(0x88, &p, KEY)),
            1002,
            "{code}"
        );
    }
    assert_eq!(
        err_code(&mut server(), &masked(0x88, b"\x03\xe8\xc0\xaf", KEY)),
        1007
    );
}

#[test]
fn failed_decoder_stays_failed() {
    let mut d = server();
    assert_eq!(err_code(&mut d, &unmasked(0x81, b"x")), 1002);
    let (m, r) = feed(&mut d, &masked(0x81, b"fine", KEY));
    assert!(m.is_empty());
    assert_eq!(r.unwrap_err().code, 1002);
    assert!(d.is_finished());
}

#[test]
fn messages_before_an_error_are_delivered() {
    let mut bytes = masked(0x81, b"one", KEY);
    bytes.extend(masked(0x83, b"", KEY));
    let (m, r) = feed(&mut server(), &bytes);
    assert_eq!(m, vec![Owned::Text("one".into())]);
    assert_eq!(r.unwrap_err().code, 1002);
}

// ---- assembly, control frames, close ---------------------------------------

#[test]
fn control_frames_between_fragments() {
    let mut bytes = masked(0x01, b"Hel", KEY);
    bytes.extend(masked(0x89, b"ping", KEY));
    bytes.extend(masked(0x00, b"l", KEY));
    bytes.extend(masked(0x8A, b"", KEY));
    bytes.extend(masked(0x80, b"o", KEY));
    for sizes in [vec![bytes.len()], vec![1], vec![2, 7, 3]] {
        let (m, r) = feed_split(&mut server(), &bytes, &sizes);
        assert_eq!(r, Ok(()));
        assert_eq!(
            m,
            vec![
                Owned::Ping(b"ping".to_vec()),
                Owned::Pong(vec![]),
                Owned::Text("Hello".into())
            ]
        );
    }
}

#[test]
fn empty_messages_and_fragments() {
    let mut bytes = masked(0x81, b"", KEY);
    bytes.extend(masked(0x82, b"", KEY));
    bytes.extend(masked(0x02, b"", KEY));
    bytes.extend(masked(0x00, b"", KEY));
    bytes.extend(masked(0x80, b"", KEY));
    let (m, r) = feed(&mut server(), &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(
        m,
        vec![
            Owned::Text(String::new()),
            Owned::Binary(vec![]),
            Owned::Binary(vec![])
        ]
    );
}

#[test]
fn close_stops_decoding() {
    let mut bytes = masked(0x88, b"\x03\xe8bye", KEY);
    bytes.extend(masked(0x81, b"after", KEY));
    bytes.extend([0xFF, 0xFF]);
    let mut d = server();
    let (m, r) = feed(&mut d, &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Close(Some((1000, "bye".into())))]);
    assert!(d.is_finished());
    let (m, r) = feed(&mut d, &masked(0x81, b"later", KEY));
    assert_eq!((m, r), (vec![], Ok(())));
}

#[test]
fn empty_close() {
    let (m, r) = feed(&mut server(), &masked(0x88, b"", KEY));
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Close(None)]);
}

#[test]
fn sink_break_stops_and_drops_rest() {
    let mut bytes = masked(0x81, b"one", KEY);
    bytes.extend(masked(0x81, b"two", KEY));
    let mut d = server();
    let mut seen = 0;
    let r = d.decode(&mut bytes, |_| {
        seen += 1;
        ControlFlow::Break(())
    });
    assert_eq!((seen, r), (1, Ok(())));
    let (m, _) = feed(&mut d, &masked(0x81, b"three", KEY));
    assert!(m.is_empty());
}

// ---- buffering and memory --------------------------------------------------

#[test]
fn buffer_freed_after_split_message_and_accounted_meanwhile() {
    let payload = vec![9u8; 5000];
    let bytes = masked(0x82, &payload, KEY);
    let mut d = server();
    let (m, r) = feed(&mut d, &bytes[..3000]);
    assert_eq!((m.len(), r), (0, Ok(())));
    assert_eq!(d.buffered(), 3000 - 8);
    let (m, r) = feed(&mut d, &bytes[3000..]);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Binary(payload)]);
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.capacity(), 0);
}

#[test]
fn partial_header_is_buffered_in_place() {
    let bytes = masked(0x82, &[1; 70000], KEY);
    let mut d = server();
    let (_, r) = feed(&mut d, &bytes[..5]);
    assert_eq!(r, Ok(()));
    assert_eq!(d.buffered(), 5);
    assert_eq!(d.capacity(), 0);
}

#[test]
fn large_declared_length_reserves_only_what_arrived() {
    let payload = vec![5u8; 1 << 20];
    let bytes = masked(0x82, &payload, KEY);
    let mut d = server();
    let (_, r) = feed(&mut d, &bytes[..14 + 100]);
    assert_eq!(r, Ok(()));
    assert!(d.capacity() <= 256, "capacity {}", d.capacity());
    let (m, r) = feed_split(&mut d, &bytes[114..], &[4096]);
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Binary(payload)]);
    assert_eq!(d.capacity(), 0);
}

#[test]
fn fragmented_buffer_never_exceeds_maximum() {
    let cfg = DecoderConfig {
        max_message_size: 1000,
        ..DecoderConfig::default()
    };
    let mut d = Decoder::new(cfg);
    let mut bytes = Vec::new();
    bytes.extend(masked(0x02, &[1; 10], KEY));
    for _ in 0..98 {
        bytes.extend(masked(0x00, &[1; 10], KEY));
    }
    let (_, r) = feed(&mut d, &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(d.buffered(), 990);
    assert!(d.capacity() <= 1000);
    let (m, r) = feed(&mut d, &masked(0x80, &[1; 10], KEY));
    assert_eq!(r, Ok(()));
    assert_eq!(m, vec![Owned::Binary(vec![1; 1000])]);
}

#[test]
fn shrink_releases_idle_memory() {
    let mut d = server();
    let bytes = masked(0x02, &[1; 3000], KEY);
    feed(&mut d, &bytes).1.unwrap();
    assert!(d.capacity() >= 3000);
    d.shrink();
    assert_eq!(d.capacity(), 3000);
    feed(&mut d, &masked(0x80, b"", KEY)).1.unwrap();
    d.shrink();
    assert_eq!(d.capacity(), 0);
}

#[test]
fn client_role_decodes_server_frames() {
    let mut bytes = ringcast_codec::server_frame(ringcast_codec::OpCode::Text, b"hi").to_vec();
    bytes.extend_from_slice(&ringcast_codec::close_frame(1001, "away"));
    let cfg = DecoderConfig {
        role: Role::Client,
        ..DecoderConfig::default()
    };
    let (m, r) = feed(&mut Decoder::new(cfg), &bytes);
    assert_eq!(r, Ok(()));
    assert_eq!(
        m,
        vec![
            Owned::Text("hi".into()),
            Owned::Close(Some((1001, "away".into())))
        ]
    );
}

// ---- regressions found by fuzzing ------------------------------------------

/// fuzz/artifacts/frame_parser/crash-0831e293…: a text frame ending inside a
/// code point gave a different error reason whole (fast path) than split
/// (streaming path). The outcome must not depend on chunking.
#[test]
fn fuzz_regression_truncated_text_same_error_whole_or_split() {
    let bytes = [0x81, 0x05, b'H', b'e', 0x01, 0x00, 0xee];
    let (m1, r1) = feed(&mut client(), &bytes);
    let (m2, r2) = feed_split(&mut client(), &bytes, &[2]);
    assert_eq!(m1, m2);
    assert_eq!(r1, r2);
    assert_eq!(r1.unwrap_err().code, 1007);
}
