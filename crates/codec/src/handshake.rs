//! The opening handshake (RFC 6455 §4).
//!
//! Server role: [`RequestParser`] collects the HTTP/1.1 request head as it
//! arrives, [`Request`] exposes what the server routes on (path, query,
//! Origin, offered subprotocols and extensions), [`Request::validate_upgrade`]
//! applies §4.2.1, and [`response_101`] / [`error_response`] build the reply.
//!
//! Client role: [`ClientHandshake`] builds the request and checks the
//! server's 101 (§4.1), for tests and the load tester.

use std::fmt;
use std::ops::Range;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::extension::{parse_extensions, ExtensionError, ExtensionOffer};

/// Default cap on the request head (request line, headers, blank line).
pub const MAX_HEADER_BYTES_DEFAULT: usize = 8192;

/// Most header lines accepted in one head; more → 431.
pub(crate) const MAX_HEADERS: usize = 64;

/// The GUID appended to the key before hashing (§1.3).
pub(crate) const WEBSOCKET_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A failed handshake, with the HTTP status to answer with.
///
/// Server role: 400 (malformed or not a valid upgrade), 426 (unsupported
/// `Sec-WebSocket-Version`) or 431 (head too large). Client role: the
/// server's status when it did not answer 101, else 502 for an invalid
/// response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeError {
    /// HTTP status code.
    pub status: u16,
    /// Short cause, suitable as a response body.
    pub reason: &'static str,
}

impl HandshakeError {
    const fn new(status: u16, reason: &'static str) -> Self {
        HandshakeError { status, reason }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handshake failed ({}): {}", self.status, self.reason)
    }
}

impl std::error::Error for HandshakeError {}

/// Finds the empty line that ends an HTTP head, resuming where the previous
/// piece stopped so each byte is looked at once. Accepts CRLF and bare LF.
#[derive(Debug, Clone, Copy, Default)]
struct HeadEnd {
    /// The last byte other than CR was LF: the current line is empty so far.
    after_lf: bool,
}

impl HeadEnd {
    /// Index just past the end of the head in `piece`, if it ends there.
    fn scan(&mut self, piece: &[u8]) -> Option<usize> {
        let mut i = 0;
        loop {
            if self.after_lf {
                // At the start of a line: it ends the head if it is empty.
                while piece.get(i) == Some(&b'\r') {
                    i += 1;
                }
                match piece.get(i) {
                    None => return None,
                    Some(b'\n') => return Some(i + 1),
                    Some(_) => self.after_lf = false,
                }
            }
            i += find_lf(&piece[i..])? + 1;
            self.after_lf = true;
        }
    }
}

/// Position of the first `\n`, eight bytes per step.
fn find_lf(s: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let x = u64::from_ne_bytes(w) ^ (LO * u64::from(b'\n'));
        // Non-zero exactly when some byte of x is zero, i.e. was '\n'.
        if x.wrapping_sub(LO) & !x & HI != 0 {
            return c.iter().position(|&b| b == b'\n').map(|j| base + j);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|j| base + j)
}

/// Collects a head that may arrive in pieces, up to a byte limit.
#[derive(Debug, Clone)]
struct HeadBuffer {
    max: usize,
    buf: Vec<u8>,
    end: HeadEnd,
}

impl HeadBuffer {
    fn new(max: usize) -> Self {
        HeadBuffer {
            max,
            buf: Vec::new(),
            end: HeadEnd::default(),
        }
    }

    /// Feeds a piece. `Ok(None)`: need more. `Ok(Some(n))`: the head ends
    /// after `chunk[..n]`; it is in `self.buf` unless that is empty, in
    /// which case it is `chunk[..n]` itself (not copied). `Err(())`: over
    /// the limit.
    fn push(&mut self, chunk: &[u8]) -> Result<Option<usize>, ()> {
        match self.end.scan(chunk) {
            Some(n) => {
                if self.buf.len() + n > self.max {
                    return Err(());
                }
                if !self.buf.is_empty() {
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Ok(Some(n))
            }
            None => {
                if self.buf.len() + chunk.len() > self.max {
                    return Err(());
                }
                self.buf.extend_from_slice(chunk);
                Ok(None)
            }
        }
    }
}

/// Incremental HTTP request head parser (server role). Buffers up to the
/// limit; bytes may arrive one at a time.
#[derive(Debug, Clone)]
pub struct RequestParser {
    head: HeadBuffer,
    remaining: Vec<u8>,
    state: ParseState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseState {
    Head,
    Done,
    Failed(HandshakeError),
}

impl RequestParser {
    /// A parser that answers 431 once the head exceeds `max_header_bytes`.
    pub fn new(max_header_bytes: usize) -> Self {
        RequestParser {
            head: HeadBuffer::new(max_header_bytes),
            remaining: Vec::new(),
            state: ParseState::Head,
        }
    }

    /// Feeds the next bytes. `Ok(None)`: need more. `Ok(Some(req))`: the
    /// head is complete (call once; later bytes go to
    /// [`take_remaining`](Self::take_remaining)). `Err`: 400 (malformed) or
    /// 431 (too big or too many headers); later calls repeat it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Request>, HandshakeError> {
        match self.state {
            ParseState::Head => {}
            ParseState::Done => {
                self.remaining.extend_from_slice(chunk);
                return Ok(None);
            }
            ParseState::Failed(e) => return Err(e),
        }
        let r = match self.head.push(chunk) {
            Ok(None) => return Ok(None),
            Err(()) => Err(HandshakeError::new(431, "request head too large")),
            Ok(Some(n)) => {
                self.remaining.extend_from_slice(&chunk[n..]);
                let buf = std::mem::take(&mut self.head.buf);
                let head = if buf.is_empty() {
                    &chunk[..n]
                } else {
                    &buf[..]
                };
                Request::parse(head)
            }
        };
        self.state = match r {
            Ok(_) => ParseState::Done,
            Err(e) => ParseState::Failed(e),
        };
        self.head.buf = Vec::new();
        r.map(Some)
    }

    /// Bytes received after the end of the head (e.g. a frame pipelined
    /// right behind the upgrade request). Empties the internal buffer.
    pub fn take_remaining(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.remaining)
    }
}

impl Default for RequestParser {
    fn default() -> Self {
        RequestParser::new(MAX_HEADER_BYTES_DEFAULT)
    }
}

/// A parsed request head. Owns its text; accessors borrow from it.
#[derive(Debug, Clone)]
pub struct Request {
    text: String,
    method: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    minor_version: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
}

fn push_str(text: &mut String, s: &str) -> Range<usize> {
    let start = text.len();
    text.push_str(s);
    start..text.len()
}

/// Splits a header value into comma-separated elements, trimmed, skipping
/// empty ones and commas inside quoted strings.
fn list_items(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || loop {
        let s = rest?;
        let mut quoted = false;
        let mut escaped = false;
        let mut cut = None;
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    cut = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let item = match cut {
            Some(i) => {
                rest = Some(&s[i + 1..]);
                &s[..i]
            }
            None => {
                rest = None;
                s
            }
        };
        let item = item.trim_matches([' ', '\t']);
        if !item.is_empty() {
            return Some(item);
        }
    })
}

impl Request {
    fn parse(head: &[u8]) -> Result<Request, HandshakeError> {
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::new(400, "malformed request head"))
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::new(431, "too many header lines"))
            }
            Err(_) => return Err(HandshakeError::new(400, "malformed request head")),
        }
        let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
        else {
            return Err(HandshakeError::new(400, "malformed request line"));
        };
        // Usually the head is UTF-8: keep one copy and point into it.
        if let Ok(text) = simdutf8::basic::from_utf8(head) {
            if let Some(r) = Self::from_spans(text, method, target, minor_version, req.headers) {
                return Ok(r);
            }
        }
        // Otherwise copy each piece, replacing invalid bytes (obs-text).
        let mut text = String::with_capacity(head.len());
        let method = push_str(&mut text, method);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (push_str(&mut text, p), Some(push_str(&mut text, q))),
            None => (push_str(&mut text, target), None),
        };
        let mut headers = Vec::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let name = push_str(&mut text, h.name);
            let value = push_str(&mut text, &String::from_utf8_lossy(h.value));
            headers.push((name, value));
        }
        Ok(Request {
            text,
            method,
            path,
            query,
            minor_version,
            headers,
        })
    }

    /// Builds a request whose fields are ranges of `head`, from the slices
    /// httparse returned into it. `None` if a slice is not inside `head`.
    fn from_spans(
        head: &str,
        method: &str,
        target: &str,
        minor_version: u8,
        hs: &[httparse::Header<'_>],
    ) -> Option<Request> {
        let span = |part: &[u8]| {
            let start = (part.as_ptr() as usize).checked_sub(head.as_ptr() as usize)?;
            let end = start.checked_add(part.len())?;
            let ok =
                end <= head.len() && head.is_char_boundary(start) && head.is_char_boundary(end);
            ok.then_some(start..end)
        };
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (span(p.as_bytes())?, Some(span(q.as_bytes())?)),
            None => (span(target.as_bytes())?, None),
        };
        let mut headers = Vec::with_capacity(hs.len());
        for h in hs {
            headers.push((span(h.name.as_bytes())?, span(h.value)?));
        }
        Some(Request {
            text: head.to_owned(),
            method: span(method.as_bytes())?,
            path,
            query,
            minor_version,
            headers,
        })
    }

    /// Request method, e.g. `GET`.
    pub fn method(&self) -> &str {
        &self.text[self.method.clone()]
    }

    /// Request target up to (not including) `?`.
    pub fn path(&self) -> &str {
        &self.text[self.path.clone()]
    }

    /// Request target after `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.query.clone().map(|r| &self.text[r])
    }

    /// HTTP minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub fn minor_version(&self) -> u8 {
        self.minor_version
    }

    /// Value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| self.text[n.clone()].eq_ignore_ascii_case(name))
            .map(|(_, v)| &self.text[v.clone()])
    }

    /// All header lines in order, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .map(|(n, v)| (&self.text[n.clone()], &self.text[v.clone()]))
    }

    /// Values of every header line called `name` (case-insensitive).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Whether the comma-separated lists of header `name` contain `token`
    /// (case-insensitive).
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(list_items)
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The `Host` header.
    pub fn host(&self) -> Option<&str> {
        self.header("host")
    }

    /// The `Origin` header (sent by browsers).
    pub fn origin(&self) -> Option<&str> {
        self.header("origin")
    }

    /// Subprotocols offered in `Sec-WebSocket-Protocol`, over all its
    /// header lines, in order.
    pub fn protocols(&self) -> Vec<&str> {
        self.headers_named("sec-websocket-protocol")
            .flat_map(list_items)
            .collect()
    }

    /// Extension offers in `Sec-WebSocket-Extensions`, each with its
    /// parameters (e.g. `permessage-deflate; client_max_window_bits`).
    pub fn extensions(&self) -> Vec<&str> {
        self.headers_named("sec-websocket-extensions")
            .flat_map(list_items)
            .collect()
    }

    /// The offers of every `Sec-WebSocket-Extensions` line, parsed
    /// (RFC 6455 §9.1); hand them to [`DeflateConfig::negotiate`].
    ///
    /// [`DeflateConfig::negotiate`]: crate::DeflateConfig::negotiate
    pub fn extension_offers(&self) -> Result<Vec<ExtensionOffer>, ExtensionError> {
        parse_extensions(self.headers_named("sec-websocket-extensions"))
    }

    /// True when the request asks for a WebSocket upgrade at all
    /// (`Upgrade` lists `websocket`).
    pub fn wants_upgrade(&self) -> bool {
        self.has_token("upgrade", "websocket")
    }

    /// Full §4.2.1 validation. Returns the `Sec-WebSocket-Key` to answer
    /// with, or 400, or 426 when only the version is wrong.
    pub fn validate_upgrade(&self) -> Result<&str, HandshakeError> {
        let bad = |reason| Err(HandshakeError::new(400, reason));
        if self.method() != "GET" {
            return bad("method must be GET");
        }
        if self.minor_version != 1 {
            return bad("HTTP/1.1 required");
        }
        if self.headers_named("host").count() != 1 {
            return bad("exactly one Host header required");
        }
        if !self.wants_upgrade() {
            return bad("Upgrade header must list websocket");
        }
        if !self.has_token("connection", "upgrade") {
            return bad("Connection header must list upgrade");
        }
        let mut versions = self.headers_named("sec-websocket-version");
        match (versions.next().map(str::trim), versions.next()) {
            (None, _) => return bad("missing Sec-WebSocket-Version"),
            (Some("13"), None) => {}
            _ => {
                return Err(HandshakeError::new(
                    426,
                    "unsupported Sec-WebSocket-Version (13 required)",
                ))
            }
        }
        let mut keys = self.headers_named("sec-websocket-key");
        let (Some(key), None) = (keys.next(), keys.next()) else {
            return bad("exactly one Sec-WebSocket-Key header required");
        };
        let key = key.trim();
        match BASE64.decode(key) {
            Ok(raw) if raw.len() == 16 => Ok(key),
            _ => bad("Sec-WebSocket-Key must be base64 of 16 bytes"),
        }
    }
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)) (§4.2.2).
pub fn accept_key(client_key: &str) -> String {
    let mut h = Sha1::new();
    h.update(client_key.as_bytes());
    h.update(WEBSOCKET_GUID.as_bytes());
    BASE64.encode(h.finalize())
}

/// True for an RFC 7230 `tchar`, a byte a token may contain.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// True for an RFC 7230 token (what a subprotocol name must be).
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// The complete 101 response accepting the upgrade, with the chosen
/// subprotocol if any. A `protocol` that is not a valid token is left out
/// rather than risk a malformed header.
pub fn response_101(client_key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut r = Vec::with_capacity(160);
    r.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    r.extend_from_slice(accept_key(client_key).as_bytes());
    r.extend_from_slice(b"\r\n");
    if let Some(p) = protocol.filter(|p| is_token(p)) {
        r.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        r.extend_from_slice(p.as_bytes());
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"\r\n");
    r
}

/// Reason phrase for the statuses this server uses.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    // A status outside 100–999 cannot be written as three digits.
    let status = if (100..1000).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).as_bytes());
}

/// An error response (400, 403, 404, 426, 431, 503, ...) with a short text
/// body, `Content-Length` and `Connection: close`. A 426 also carries
/// `Sec-WebSocket-Version: 13` (§4.4).
pub fn error_response(status: u16, body: &str) -> Vec<u8> {
    let mut r = Vec::with_capacity(160 + body.len());
    status_line(&mut r, status);
    if status == 426 {
        r.extend_from_slice(b"Sec-WebSocket-Version: 13\r\n");
    }
    r.extend_from_slice(
        format!(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.extend_from_slice(body.as_bytes());
    r
}

/// A plain HTTP response for non-WebSocket routes: status, `Content-Type`,
/// `Content-Length`, `Connection: close`, then `body`. A content type
/// containing control characters is replaced by
/// `application/octet-stream` so it cannot inject header lines.
pub fn http_response(status: u16, content_type: &str, body: &[u8]) -> Vec<u8> {
    let content_type = if content_type.bytes().any(|b| b.is_ascii_control()) {
        "application/octet-stream"
    } else {
        content_type
    };
    let mut r = Vec::with_capacity(128 + body.len());
    status_line(&mut r, status);
    r.extend_from_slice(
        format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    r.extend_from_slice(body);
    r
}

/// Client role: builds the upgrade request and checks the server's answer.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: Vec<u8>,
    accept: String,
    offered_protocols: Vec<String>,
    offered_extensions: bool,
    head: HeadBuffer,
    protocol: Option<String>,
    state: ParseState,
}

impl ClientHandshake {
    /// Builds the request for `path` (with any query) on `host`; spaces and
    /// control characters in either are dropped. `key_bytes` are 16 random
    /// bytes chosen by the caller (the codec does no I/O). `extra_headers`
    /// are added as given (e.g. `Origin`, `Sec-WebSocket-Protocol`); a pair
    /// containing CR or LF is skipped so it cannot inject header lines.
    pub fn new(
        host: &str,
        path: &str,
        key_bytes: [u8; 16],
        extra_headers: &[(&str, &str)],
    ) -> Self {
        let key = BASE64.encode(key_bytes);
        let clean = |s: &str| !s.bytes().any(|b| b == b'\r' || b == b'\n');
        // Whitespace or control characters would break the request line.
        let strip = |s: &str| s.replace(|c: char| c.is_ascii_control() || c == ' ', "");
        let (host, path) = (strip(host), strip(path));
        let path = if path.is_empty() { "/" } else { &path };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        let mut offered_protocols = Vec::new();
        let mut offered_extensions = false;
        for (name, value) in extra_headers {
            if !(clean(name) && clean(value)) {
                continue;
            }
            if name.eq_ignore_ascii_case("sec-websocket-protocol") {
                offered_protocols.extend(list_items(value).map(str::to_owned));
            }
            if name.eq_ignore_ascii_case("sec-websocket-extensions") {
                offered_extensions = true;
            }
            req.push_str(name);
            req.push_str(": ");
            req.push_str(value);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        ClientHandshake {
            request: req.into_bytes(),
            accept: accept_key(&key),
            offered_protocols,
            offered_extensions,
            head: HeadBuffer::new(MAX_HEADER_BYTES_DEFAULT),
            protocol: None,
            state: ParseState::Head,
        }
    }

    /// The request bytes to send.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// The subprotocol the server chose, once its 101 was accepted.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Feeds the server's response. `Ok(None)`: need more.
    /// `Ok(Some(n))`: a valid 101 ended after `chunk[..n]`; `chunk[n..]`
    /// are frame bytes (later calls return `Ok(Some(0))`). `Err`: the
    /// server refused (its status) or answered invalidly (502).
    pub fn push_response(&mut self, chunk: &[u8]) -> Result<Option<usize>, HandshakeError> {
        match self.state {
            ParseState::Head => {}
            ParseState::Done => return Ok(Some(0)),
            ParseState::Failed(e) => return Err(e),
        }
        let r = match self.head.push(chunk) {
            Ok(None) => return Ok(None),
            Err(()) => Err(HandshakeError::new(502, "response head too large")),
            Ok(Some(n)) => {
                let buf = std::mem::take(&mut self.head.buf);
                let head = if buf.is_empty() {
                    &chunk[..n]
                } else {
                    &buf[..]
                };
                self.check_response(head).map(|()| n)
            }
        };
        self.state = match r {
            Ok(_) => ParseState::Done,
            Err(e) => ParseState::Failed(e),
        };
        r.map(Some)
    }

    fn check_response(&mut self, head: &[u8]) -> Result<(), HandshakeError> {
        let invalid = |reason| Err(HandshakeError::new(502, reason));
        let mut hs = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return invalid("malformed response head"),
        }
        match resp.code {
            Some(101) => {}
            Some(code) if (100..600).contains(&code) => {
                return Err(HandshakeError::new(code, "server refused the upgrade"))
            }
            _ => return invalid("malformed status line"),
        }
        let values = |name: &'static str| {
            resp.headers
                .iter()
                .filter(move |h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap_or(""))
        };
        let has = |name, token: &str| {
            values(name)
                .flat_map(list_items)
                .any(|t| t.eq_ignore_ascii_case(token))
        };
        if !has("upgrade", "websocket") {
            return invalid("101 without Upgrade: websocket");
        }
        if !has("connection", "upgrade") {
            return invalid("101 without Connection: upgrade");
        }
        let mut accept = values("sec-websocket-accept");
        if accept.next().map(str::trim) != Some(self.accept.as_str()) || accept.next().is_some() {
            return invalid("wrong Sec-WebSocket-Accept");
        }
        let mut protos = values("sec-websocket-protocol").flat_map(list_items);
        if let Some(p) = protos.next() {
            if protos.next().is_some() || !self.offered_protocols.iter().any(|o| o == p) {
                return invalid("server chose a subprotocol that was not offered");
            }
            self.protocol = Some(p.to_owned());
        }
        if !self.offered_extensions
            && values("sec-websocket-extensions")
                .flat_map(list_items)
                .next()
                .is_some()
        {
            return invalid("server chose an extension that was not offered");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the head ends, feeding `input` in pieces of `step` bytes.
    fn end_at(input: &[u8], step: usize) -> Option<usize> {
        let mut h = HeadEnd::default();
        let mut base = 0;
        for piece in input.chunks(step) {
            if let Some(n) = h.scan(piece) {
                return Some(base + n);
            }
            base += piece.len();
        }
        None
    }

    #[test]
    fn head_end_any_piece_size() {
        let cases: [(&[u8], Option<usize>); 7] = [
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", Some(27)),
            (b"GET / HTTP/1.1\nHost: a\n\nrest", Some(24)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\r\nx", Some(28)),
            (b"GET / HTTP/1.1\r\nHost: a\r\n", None),
            (b"a\rb\r\nc\r\r\nd", None),
            (b"\r\n\r\n", Some(4)),
            (b"", None),
        ];
        for (input, want) in cases {
            for step in 1..=input.len().max(1) {
                assert_eq!(end_at(input, step), want, "{input:?} step {step}");
            }
        }
    }

    #[test]
    fn find_lf_every_position() {
        for len in 0..40 {
            for at in 0..=len {
                let mut v = vec![b'x'; len];
                if at < len {
                    v[at] = b'\n';
                }
                let want = (at < len).then_some(at);
                assert_eq!(find_lf(&v), want);
            }
        }
    }
}
