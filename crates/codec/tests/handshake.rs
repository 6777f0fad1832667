//! Opening handshake: RFC 6455 §1.3/§4 examples, §4.2.1 validation with its
//! status codes, incremental parsing, limits, responses and the client role.

use ringcast_codec::{
    accept_key, error_response, http_response, response_101, ClientHandshake, DeflateConfig,
    HandshakeError, Request, RequestParser, MAX_HEADER_BYTES_DEFAULT,
};

const RFC_REQUEST: &str = "GET /chat HTTP/1.1\r\n\
Host: server.example.com\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\n\
Sec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

fn parse(head: &str) -> Result<Request, HandshakeError> {
    let mut p = RequestParser::new(MAX_HEADER_BYTES_DEFAULT);
    match p.push(head.as_bytes()) {
        Ok(Some(r)) => Ok(r),
        Ok(None) => panic!("head incomplete"),
        Err(e) => Err(e),
    }
}

/// A valid request with one header line replaced (or removed when `value`
/// is empty) or added.
fn with_header(name: &str, value: &str) -> String {
    let mut out = String::new();
    let mut replaced = false;
    for line in RFC_REQUEST.split("\r\n").filter(|l| !l.is_empty()) {
        if let Some((n, _)) = line.split_once(": ") {
            if n.eq_ignore_ascii_case(name) {
                replaced = true;
                if !value.is_empty() {
                    out.push_str(&format!("{n}: {value}\r\n"));
                }
                continue;
            }
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !replaced && !value.is_empty() {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out
}

fn status_of(head: &str) -> u16 {
    match parse(head) {
        Err(e) => e.status,
        Ok(r) => match r.validate_upgrade() {
            Ok(_) => 101,
            Err(e) => e.status,
        },
    }
}

#[test]
fn rfc_accept_key() {
    assert_eq!(
        accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

#[test]
fn rfc_request_parses_and_validates() {
    let r = parse(RFC_REQUEST).unwrap();
    assert_eq!(r.method(), "GET");
    assert_eq!(r.path(), "/chat");
    assert_eq!(r.query(), None);
    assert_eq!(r.host(), Some("server.example.com"));
    assert_eq!(r.origin(), Some("http://example.com"));
    assert_eq!(r.protocols(), vec!["chat", "superchat"]);
    assert!(r.extensions().is_empty());
    assert!(r.wants_upgrade());
    assert_eq!(r.header("SEC-WEBSOCKET-VERSION"), Some("13"));
    assert_eq!(r.headers().count(), 7);
    assert_eq!(r.validate_upgrade(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
}

#[test]
fn rfc_101_response() {
    let resp = response_101("dGhlIHNhbXBsZSBub25jZQ==", Some("chat"));
    assert_eq!(
        String::from_utf8(resp).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\
Sec-WebSocket-Protocol: chat\r\n\
\r\n"
    );
    let plain = String::from_utf8(response_101("dGhlIHNhbXBsZSBub25jZQ==", None)).unwrap();
    assert!(!plain.contains("Sec-WebSocket-Protocol"));
    // A protocol that is not a token is left out, never injected.
    let bad = String::from_utf8(response_101("k", Some("x\r\nSet-Cookie: a"))).unwrap();
    assert!(!bad.contains("Set-Cookie"));
}

#[test]
fn byte_at_a_time_with_pipelined_frame() {
    let mut p = RequestParser::new(MAX_HEADER_BYTES_DEFAULT);
    let mut input = RFC_REQUEST.as_bytes().to_vec();
    input.extend_from_slice(b"\x81\x80abcd");
    let mut req = None;
    for (i, b) in input.iter().enumerate() {
        match p.push(std::slice::from_ref(b)).unwrap() {
            Some(r) => {
                assert_eq!(i + 1, RFC_REQUEST.len());
                req = Some(r);
            }
            None => assert!(i + 1 != RFC_REQUEST.len()),
        }
    }
    assert_eq!(req.unwrap().path(), "/chat");
    assert_eq!(p.take_remaining(), b"\x81\x80abcd");
    assert!(p.take_remaining().is_empty());
}

#[test]
fn head_split_anywhere() {
    let bytes = RFC_REQUEST.as_bytes();
    for cut in 1..bytes.len() {
        let mut p = RequestParser::new(MAX_HEADER_BYTES_DEFAULT);
        assert!(p.push(&bytes[..cut]).unwrap().is_none(), "cut {cut}");
        let r = p.push(&bytes[cut..]).unwrap().expect("complete");
        assert_eq!(r.validate_upgrade(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
    }
}

#[test]
fn bare_lf_head_is_accepted() {
    let head = RFC_REQUEST.replace("\r\n", "\n");
    let r = parse(&head).unwrap();
    assert_eq!(r.validate_upgrade(), Ok("dGhlIHNhbXBsZSBub25jZQ=="));
}

#[test]
fn head_over_limit_is_431() {
    let big = with_header("X-Filler", &"a".repeat(MAX_HEADER_BYTES_DEFAULT));
    // Terminator beyond the limit, in one push.
    assert_eq!(parse(&big).unwrap_err().status, 431);
    // No terminator yet but already over the limit, fed in pieces.
    let mut p = RequestParser::new(100);
    let mut res = Ok(None);
    for chunk in big.as_bytes().chunks(7) {
        res = p.push(chunk);
        if res.is_err() {
            break;
        }
    }
    assert_eq!(res.unwrap_err().status, 431);
    // Later pushes repeat the error.
    assert_eq!(p.push(b"\r\n\r\n").unwrap_err().status, 431);
    // Exactly at the limit is fine.
    let mut p = RequestParser::new(RFC_REQUEST.len());
    assert!(p.push(RFC_REQUEST.as_bytes()).unwrap().is_some());
    let mut p = RequestParser::new(RFC_REQUEST.len() - 1);
    assert_eq!(p.push(RFC_REQUEST.as_bytes()).unwrap_err().status, 431);
}

#[test]
fn too_many_header_lines_is_431() {
    let mut head = String::from("GET / HTTP/1.1\r\n");
    for i in 0..100 {
        head.push_str(&format!("X-{i}: v\r\n"));
    }
    head.push_str("\r\n");
    assert_eq!(parse(&head).unwrap_err().status, 431);
}

#[test]
fn malformed_heads_are_400() {
    for head in [
        "GET\r\n\r\n",
        "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "\x00\x01\x02\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\x7f: x\r\n\r\n",
    ] {
        assert_eq!(parse(head).unwrap_err().status, 400, "{head:?}");
    }
}

#[test]
fn validation_rules_and_statuses() {
    assert_eq!(status_of(RFC_REQUEST), 101);
    assert_eq!(status_of(&RFC_REQUEST.replacen("GET", "POST", 1)), 400);
    assert_eq!(
        status_of(&RFC_REQUEST.replacen("HTTP/1.1", "HTTP/1.0", 1)),
        400
    );
    assert_eq!(status_of(&with_header("Host", "")), 400);
    assert_eq!(
        status_of(&with_header("X", "y").replacen("X: y", "Host: other", 1)),
        400
    );
    assert_eq!(status_of(&with_header("Upgrade", "")), 400);
    assert_eq!(status_of(&with_header("Upgrade", "h2c")), 400);
    assert_eq!(status_of(&with_header("Connection", "")), 400);
    assert_eq!(status_of(&with_header("Connection", "keep-alive")), 400);
    assert_eq!(status_of(&with_header("Connection", "upgraded")), 400);
    // Token lists, case-insensitive.
    assert_eq!(
        status_of(&with_header("Connection", "keep-alive, Upgrade")),
        101
    );
    assert_eq!(status_of(&with_header("Connection", "UPGRADE")), 101);
    assert_eq!(status_of(&with_header("Upgrade", "WebSocket")), 101);
    assert_eq!(status_of(&with_header("Upgrade", "foo/2, websocket")), 101);
    // Version: anything but exactly 13 is 426.
    assert_eq!(status_of(&with_header("Sec-WebSocket-Version", "8")), 426);
    assert_eq!(status_of(&with_header("Sec-WebSocket-Version", "12")), 426);
    // Missing entirely: the request is malformed rather than another version.
    assert_eq!(status_of(&with_header("Sec-WebSocket-Version", "")), 400);
    assert_eq!(
        status_of(&with_header("Sec-WebSocket-Version", "13, 8")),
        426
    );
    // Key must decode to exactly 16 bytes.
    assert_eq!(status_of(&with_header("Sec-WebSocket-Key", "")), 400);
    assert_eq!(
        status_of(&with_header("Sec-WebSocket-Key", "not base64!!")),
        400
    );
    assert_eq!(
        status_of(&with_header(
            "Sec-WebSocket-Key",
            "AAAAAAAAAAAAAAAAAAAAAAA="
        )),
        400
    );
    assert_eq!(
        status_of(&with_header(
            "Sec-WebSocket-Key",
            "AAAAAAAAAAAAAAAAAAAAAAAA"
        )),
        400
    );
    assert_eq!(
        status_of(&with_header(
            "Sec-WebSocket-Key",
            "AAAAAAAAAAAAAAAAAAAAAA=="
        )),
        101
    );
    let dup = RFC_REQUEST.replacen(
        "Origin",
        "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nOrigin",
        1,
    );
    assert_eq!(status_of(&dup), 400);
}

#[test]
fn plain_http_request_does_not_want_upgrade() {
    let r = parse("GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert!(!r.wants_upgrade());
    assert_eq!(r.validate_upgrade().unwrap_err().status, 400);
}

#[test]
fn path_query_and_offers() {
    let head = with_header(
        "Sec-WebSocket-Extensions",
        "permessage-deflate; client_max_window_bits, x-ext; a=\"1,2\"",
    )
    .replacen("/chat", "/ws/room?id=7&x=%20", 1)
    .replacen("Origin", "Sec-WebSocket-Protocol: third\r\nOrigin", 1);
    let r = parse(&head).unwrap();
    assert_eq!(r.path(), "/ws/room");
    assert_eq!(r.query(), Some("id=7&x=%20"));
    assert_eq!(r.protocols(), vec!["third", "chat", "superchat"]);
    assert_eq!(
        r.extensions(),
        vec![
            "permessage-deflate; client_max_window_bits",
            "x-ext; a=\"1,2\""
        ]
    );
}

#[test]
fn extension_offers_over_all_lines_then_negotiate() {
    let head = with_header("Sec-WebSocket-Extensions", "x-ext; a=\"1\"").replacen(
        "Origin",
        "sec-websocket-extensions: permessage-deflate; server_max_window_bits=8, \
         permessage-deflate; client_max_window_bits\r\nOrigin",
        1,
    );
    let r = parse(&head).unwrap();
    let offers = r.extension_offers().unwrap();
    let names: Vec<_> = offers.iter().map(|o| o.name.as_str()).collect();
    // `with_header` adds its line last, after the one put before Origin.
    assert_eq!(names, ["permessage-deflate", "permessage-deflate", "x-ext"]);
    let n = DeflateConfig::default().negotiate(&offers).unwrap();
    assert_eq!(n.offer, 1);
    assert_eq!(n.response, "permessage-deflate; client_max_window_bits=15");

    let bad = with_header("Sec-WebSocket-Extensions", "permessage-deflate; a=\"");
    let e = parse(&bad).unwrap().extension_offers().unwrap_err();
    assert_eq!(e.reason, "unterminated quoted string");
    // The upgrade itself stays valid: what to do with the error is the
    // server's choice.
    assert!(parse(&bad).unwrap().validate_upgrade().is_ok());
}

fn split_response(resp: &[u8]) -> (String, String) {
    let s = String::from_utf8(resp.to_vec()).unwrap();
    let (head, body) = s.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn error_responses() {
    for (status, line) in [
        (400, "HTTP/1.1 400 Bad Request"),
        (403, "HTTP/1.1 403 Forbidden"),
        (404, "HTTP/1.1 404 Not Found"),
        (426, "HTTP/1.1 426 Upgrade Required"),
        (431, "HTTP/1.1 431 Request Header Fields Too Large"),
        (503, "HTTP/1.1 503 Service Unavailable"),
    ] {
        let (head, body) = split_response(&error_response(status, "nope\n"));
        assert!(head.starts_with(line), "{head}");
        assert!(head.contains("\r\nContent-Length: 5"));
        assert!(head.contains("\r\nConnection: close"));
        assert_eq!(head.contains("Sec-WebSocket-Version: 13"), status == 426);
        assert_eq!(body, "nope\n");
    }
}

#[test]
fn plain_http_response() {
    let resp = http_response(200, "application/json", b"{\"ok\":true}");
    let (head, body) = split_response(&resp);
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: close"
    );
    assert_eq!(body, "{\"ok\":true}");
    let (head, _) = split_response(&http_response(200, "text/plain\r\nX-Evil: 1", b""));
    assert!(!head.contains("X-Evil"));
}

// ---- client role ------------------------------------------------------------

#[test]
fn client_request_is_valid_for_the_server() {
    let c = ClientHandshake::new(
        "example.com:8080",
        "/ws?a=1",
        [7; 16],
        &[
            ("Origin", "http://example.com"),
            ("Sec-WebSocket-Protocol", "chat"),
        ],
    );
    let mut p = RequestParser::default();
    let r = p.push(c.request()).unwrap().unwrap();
    assert_eq!(r.path(), "/ws");
    assert_eq!(r.query(), Some("a=1"));
    assert_eq!(r.host(), Some("example.com:8080"));
    assert_eq!(r.origin(), Some("http://example.com"));
    assert_eq!(r.protocols(), vec!["chat"]);
    assert_eq!(r.validate_upgrade(), Ok("BwcHBwcHBwcHBwcHBwcHBw=="));
}

#[test]
fn client_accepts_server_101_byte_by_byte() {
    let mut c = ClientHandshake::new("h", "/", [1; 16], &[("Sec-WebSocket-Protocol", "a, b")]);
    let req = RequestParser::default().push(c.request()).unwrap().unwrap();
    let key = req.validate_upgrade().unwrap();
    let mut resp = response_101(key, Some("b"));
    let head_len = resp.len();
    resp.extend_from_slice(b"\x81\x02hi");
    for (i, b) in resp.iter().enumerate() {
        let r = c.push_response(std::slice::from_ref(b)).unwrap();
        if i + 1 == head_len {
            assert_eq!(r, Some(1));
            break;
        }
        assert_eq!(r, None);
    }
    assert_eq!(c.protocol(), Some("b"));
    // Whole response in one chunk: consumed length excludes frame bytes.
    let mut c = ClientHandshake::new("h", "/", [1; 16], &[]);
    let mut resp = response_101(&accept_src(&c), None);
    let head_len = resp.len();
    resp.extend_from_slice(b"\x81\x02hi");
    assert_eq!(c.push_response(&resp), Ok(Some(head_len)));
    assert_eq!(c.protocol(), None);
}

/// The key the client sent, read back from its request.
fn accept_src(c: &ClientHandshake) -> String {
    let r = RequestParser::default().push(c.request()).unwrap().unwrap();
    r.validate_upgrade().unwrap().to_owned()
}

#[test]
fn client_rejects_bad_responses() {
    let c0 = ClientHandshake::new("h", "/", [2; 16], &[]);
    let key = accept_src(&c0);

    let mut c = c0.clone();
    let e = c.push_response(&error_response(503, "busy")).unwrap_err();
    assert_eq!(e.status, 503);
    // Failure is sticky.
    assert_eq!(c.push_response(b"x").unwrap_err().status, 503);

    let mut c = c0.clone();
    let e = c
        .push_response(&response_101("dGhlIHNhbXBsZSBub25jZQ==", None))
        .unwrap_err();
    assert_eq!((e.status, e.reason), (502, "wrong Sec-WebSocket-Accept"));

    let mut c = c0.clone();
    let e = c
        .push_response(&response_101(&key, Some("chat")))
        .unwrap_err();
    assert_eq!(e.status, 502);

    let mut c = c0.clone();
    let no_upgrade = String::from_utf8(response_101(&key, None))
        .unwrap()
        .replace("Upgrade: websocket\r\n", "");
    assert_eq!(
        c.push_response(no_upgrade.as_bytes()).unwrap_err().status,
        502
    );

    let mut c = c0.clone();
    let ext = String::from_utf8(response_101(&key, None))
        .unwrap()
        .replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        );
    assert_eq!(c.push_response(ext.as_bytes()).unwrap_err().status, 502);

    let mut c = c0.clone();
    assert_eq!(c.push_response(b"garbage\r\n\r\n").unwrap_err().status, 502);

    let mut c = c0;
    let huge = vec![b'a'; MAX_HEADER_BYTES_DEFAULT + 1];
    assert_eq!(c.push_response(&huge).unwrap_err().status, 502);
}

#[test]
fn client_host_and_path_cannot_break_request_line() {
    let c = ClientHandshake::new("h\r\nX-B: 1", "/a b\r\n", [0; 16], &[]);
    let r = RequestParser::default().push(c.request()).unwrap().unwrap();
    assert_eq!(r.path(), "/ab");
    assert_eq!(r.host(), Some("hX-B:1"));
    assert!(r.header("x-b").is_none());
}

#[test]
fn client_extra_headers_cannot_inject() {
    let c = ClientHandshake::new("h", "/", [0; 16], &[("X-A", "1\r\nX-B: 2")]);
    let s = String::from_utf8(c.request().to_vec()).unwrap();
    assert!(!s.contains("X-B"));
    assert!(!s.contains("X-A"));
}

#[test]
fn handshake_error_displays_status() {
    let e = parse(&with_header("Sec-WebSocket-Version", "8"))
        .unwrap()
        .validate_upgrade()
        .unwrap_err();
    assert_eq!(e.status, 426);
    assert!(e.to_string().contains("426"));
}
