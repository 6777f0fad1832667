//! `Sec-WebSocket-Extensions` (RFC 6455 §9.1) and the negotiation of
//! permessage-deflate (RFC 7692 §5, §7.1), server role.
//!
//! Pure logic: [`parse_extensions`] turns the header lines into
//! [`ExtensionOffer`]s, [`DeflateConfig::negotiate`] picks the first
//! permessage-deflate offer the server can accept and yields the
//! [`DeflateParams`] in force plus the response header value. Nothing is
//! compressed here.
//!
//! Names are compared exactly: RFC 6455 §9.1 makes extension and parameter
//! names plain tokens and RFC 7692 registers them in lower case, with no
//! rule that folds case. A differently cased name is simply not one we know,
//! so it is declined, never an error.

use std::fmt;

use crate::handshake::is_tchar;

/// The extension name of RFC 7692 (§7).
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// One extension offered in `Sec-WebSocket-Extensions`, with its
/// parameters in the order they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// The `;`-separated parameters, duplicates kept (judging them is the
    /// extension's business).
    pub params: Vec<ExtensionParam>,
}

/// One `name[=value]` parameter of an [`ExtensionOffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionParam {
    /// The parameter token.
    pub name: String,
    /// The value, unquoted and unescaped; `None` for a bare name.
    pub value: Option<String>,
}

/// A `Sec-WebSocket-Extensions` value that does not follow the §9.1 grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtensionError {
    /// Which header line (0-based, in the order given).
    pub line: usize,
    /// Byte offset in that line where parsing stopped.
    pub offset: usize,
    /// What was expected there.
    pub reason: &'static str,
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed Sec-WebSocket-Extensions (line {}, byte {}): {}",
            self.line, self.offset, self.reason
        )
    }
}

impl std::error::Error for ExtensionError {}

/// Parses every `Sec-WebSocket-Extensions` header value, in order, into
/// the offers they list.
///
/// Grammar (RFC 6455 §9.1 with the RFC 7230 list rule): offers separated
/// by commas, each a token followed by `;`-separated parameters `token` or
/// `token=value`, the value a token or a quoted string (with `\` escapes)
/// whose unescaped content is a token. Spaces and tabs may surround every
/// separator; empty list elements (`a, , b`) and empty lines are skipped.
/// Anything else, non-ASCII bytes included, is an [`ExtensionError`].
///
/// Also accepts the items of [`Request::extensions`](crate::Request::extensions),
/// since splitting on commas outside quotes does not change the result.
pub fn parse_extensions<I, S>(values: I) -> Result<Vec<ExtensionOffer>, ExtensionError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    let mut offers = Vec::new();
    for (line, value) in values.into_iter().enumerate() {
        let mut c = Cursor {
            s: value.as_ref(),
            i: 0,
            line,
        };
        c.list(&mut offers)?;
    }
    Ok(offers)
}

/// A position in one header line.
struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    line: usize,
}

impl Cursor<'_> {
    fn err(&self, reason: &'static str) -> ExtensionError {
        ExtensionError {
            line: self.line,
            offset: self.i,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += usize::from(hit);
        hit
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }

    /// The longest run of token bytes here; `None` if there is none.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| ascii(&self.s[start..self.i]))
    }

    /// `#extension`: the whole line.
    fn list(&mut self, out: &mut Vec<ExtensionOffer>) -> Result<(), ExtensionError> {
        loop {
            self.skip_ows();
            if self.peek().is_none() {
                return Ok(());
            }
            if self.eat(b',') {
                continue;
            }
            let name = self.token().ok_or(self.err("expected an extension name"))?;
            let mut params = Vec::new();
            loop {
                self.skip_ows();
                if self.peek().is_none() || self.eat(b',') {
                    break;
                }
                if !self.eat(b';') {
                    return Err(self.err("expected `;` or `,`"));
                }
                self.skip_ows();
                params.push(self.param()?);
            }
            out.push(ExtensionOffer { name, params });
        }
    }

    /// `extension-param = token [ "=" (token | quoted-string) ]`.
    fn param(&mut self) -> Result<ExtensionParam, ExtensionError> {
        let name = self.token().ok_or(self.err("expected a parameter name"))?;
        self.skip_ows();
        if !self.eat(b'=') {
            return Ok(ExtensionParam { name, value: None });
        }
        self.skip_ows();
        let value = if self.peek() == Some(b'"') {
            self.quoted()?
        } else {
            self.token().ok_or(self.err("expected a parameter value"))?
        };
        Ok(ExtensionParam {
            name,
            value: Some(value),
        })
    }

    /// A quoted string, unescaped; §9.1 requires the result to be a token.
    fn quoted(&mut self) -> Result<String, ExtensionError> {
        let start = self.i;
        self.i += 1; // the opening quote
        let mut v = Vec::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.err("unterminated quoted string"));
            };
            match b {
                b'"' => break,
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(e) if is_text(e) => v.push(e),
                        Some(_) => return Err(self.err("invalid escape in quoted string")),
                        None => return Err(self.err("unterminated quoted string")),
                    }
                }
                _ if is_text(b) => v.push(b),
                _ => return Err(self.err("invalid byte in quoted string")),
            }
            self.i += 1;
        }
        self.i += 1; // the closing quote
        if v.is_empty() || !v.iter().all(|&b| is_tchar(b)) {
            self.i = start;
            return Err(self.err("quoted value is not a token"));
        }
        Ok(ascii(&v))
    }
}

/// What a quoted string may hold: tab, space and visible ASCII. Not RFC
/// 7230's obs-text: the content must end up a token anyway.
fn is_text(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b)
}

/// Bytes already checked to be ASCII, as a `String`.
fn ascii(b: &[u8]) -> String {
    b.iter().copied().map(char::from).collect()
}

/// The server's permessage-deflate policy: the most it is willing to do.
///
/// Window sizes are base-2 logarithms (RFC 7692 §7.1.2). Out-of-range
/// values are clamped when negotiating: `server_max_window_bits` to 9..=15
/// (zlib cannot compress raw deflate with an 8-bit window), and
/// `client_max_window_bits` to 8..=15.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateConfig {
    /// Always answer `server_no_context_takeover`: the compressor is reset
    /// after every message, so one compressed frame can be shared by every
    /// connection (broadcast) and no compressor state is kept between
    /// messages. Also in force whenever a client asks for it.
    pub server_no_context_takeover: bool,
    /// Always answer `client_no_context_takeover`: clients reset their
    /// compressor per message, so the server keeps no inflate window
    /// between messages. Also answered whenever a client offers it.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window the server compresses with (9..=15).
    pub server_max_window_bits: u8,
    /// Largest window the server lets clients compress with (8..=15). Below
    /// 15 it is a hard cap: an offer without `client_max_window_bits`
    /// cannot be limited, so it is declined.
    pub client_max_window_bits: u8,
}

impl Default for DeflateConfig {
    /// Context takeover allowed both ways, 15-bit windows both ways.
    fn default() -> Self {
        DeflateConfig {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
        }
    }
}

/// The permessage-deflate parameters in force on a connection once the
/// response went out.
///
/// To inflate the client's messages use a window of
/// `client_max_window_bits.max(9)` bits: a larger window decodes any stream
/// made with a smaller one, and zlib does not take 8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The server resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message, so the server
    /// may reset its inflater too.
    pub client_no_context_takeover: bool,
    /// The window the server compresses with (9..=15).
    pub server_max_window_bits: u8,
    /// The largest window the client compresses with (8..=15).
    pub client_max_window_bits: u8,
}

/// An accepted permessage-deflate offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateNegotiation {
    /// What both ends now use.
    pub params: DeflateParams,
    /// The `Sec-WebSocket-Extensions` value to answer with, e.g.
    /// `permessage-deflate; server_no_context_takeover`.
    pub response: String,
    /// Index of the accepted offer in the list given to
    /// [`DeflateConfig::negotiate`].
    pub offer: usize,
}

impl DeflateConfig {
    /// Accepts the first permessage-deflate offer this policy can honour,
    /// following RFC 7692 §7.1. Other extensions are skipped; a
    /// permessage-deflate offer with an unknown or repeated parameter, a
    /// value where none belongs (or none where one must be), a window
    /// outside 8..=15 (or written with a leading zero), or
    /// `server_max_window_bits=8`, is declined and the next one tried.
    /// `None`: no extension; the handshake goes on without it.
    ///
    /// The response names only what §7.1 allows: `server_no_context_takeover`
    /// when offered or configured; `client_no_context_takeover` likewise;
    /// `server_max_window_bits` when offered (at most the offered value) or
    /// when the configured window is below 15; `client_max_window_bits`
    /// only when offered, with a value (at most the offered one).
    pub fn negotiate(&self, offers: &[ExtensionOffer]) -> Option<DeflateNegotiation> {
        offers.iter().enumerate().find_map(|(i, o)| {
            let mut n = self.accept(o).ok()?;
            n.offer = i;
            Some(n)
        })
    }

    /// Answers one offer, or says why it is declined.
    fn accept(&self, offer: &ExtensionOffer) -> Result<DeflateNegotiation, Decline> {
        if offer.name != PERMESSAGE_DEFLATE {
            return Err(Decline::OtherExtension);
        }
        let o = DeflateOffer::parse(&offer.params)?;
        let server_cap = self.server_max_window_bits.clamp(9, 15);
        let client_cap = self.client_max_window_bits.clamp(8, 15);
        // The answer may not exceed the offer (§7.1.2.1), and 9 is the
        // smallest window zlib's raw deflate produces.
        let server_bits = match o.server_max_window_bits {
            Some(8) => return Err(Decline::ServerWindow8),
            Some(b) => b.min(server_cap),
            None => server_cap,
        };
        let client_bits = match o.client_max_window_bits {
            ClientBits::NotOffered if client_cap < 15 => return Err(Decline::ClientUnlimited),
            ClientBits::NotOffered => None,
            ClientBits::Any => Some(client_cap),
            ClientBits::Max(b) => Some(b.min(client_cap)),
        };
        let params = DeflateParams {
            server_no_context_takeover: self.server_no_context_takeover
                || o.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover
                || o.client_no_context_takeover,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits.unwrap_or(15),
        };
        let mut response = String::from(PERMESSAGE_DEFLATE);
        if params.server_no_context_takeover {
            response.push_str("; server_no_context_takeover");
        }
        if params.client_no_context_takeover {
            response.push_str("; client_no_context_takeover");
        }
        // Accepting an offered server_max_window_bits means naming it.
        if o.server_max_window_bits.is_some() || server_bits < 15 {
            response.push_str(&format!("; server_max_window_bits={server_bits}"));
        }
        if let Some(b) = client_bits {
            response.push_str(&format!("; client_max_window_bits={b}"));
        }
        Ok(DeflateNegotiation {
            params,
            response,
            offer: 0,
        })
    }
}

/// Why one offer was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decline {
    OtherExtension,
    UnknownParam,
    DuplicateParam,
    UnexpectedValue,
    MissingValue,
    BadWindowBits,
    /// `server_max_window_bits=8`: the answer could not exceed 8.
    ServerWindow8,
    /// Our client window cap is below 15 but the offer cannot be limited.
    ClientUnlimited,
}

/// What the client may say about its own window (§7.1.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientBits {
    NotOffered,
    /// Bare `client_max_window_bits`: any limit we choose.
    Any,
    /// The client will use at most this.
    Max(u8),
}

/// A permessage-deflate offer whose parameters are each valid (§7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DeflateOffer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: ClientBits,
}

impl DeflateOffer {
    fn parse(params: &[ExtensionParam]) -> Result<DeflateOffer, Decline> {
        let mut o = DeflateOffer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: ClientBits::NotOffered,
        };
        for p in params {
            let value = p.value.as_deref();
            match p.name.as_str() {
                "server_no_context_takeover" => flag(&mut o.server_no_context_takeover, value)?,
                "client_no_context_takeover" => flag(&mut o.client_no_context_takeover, value)?,
                "server_max_window_bits" => {
                    if o.server_max_window_bits.is_some() {
                        return Err(Decline::DuplicateParam);
                    }
                    let v = value.ok_or(Decline::MissingValue)?;
                    o.server_max_window_bits = Some(window_bits(v)?);
                }
                "client_max_window_bits" => {
                    if o.client_max_window_bits != ClientBits::NotOffered {
                        return Err(Decline::DuplicateParam);
                    }
                    o.client_max_window_bits = match value {
                        None => ClientBits::Any,
                        Some(v) => ClientBits::Max(window_bits(v)?),
                    };
                }
                _ => return Err(Decline::UnknownParam),
            }
        }
        Ok(o)
    }
}

/// A valueless parameter, seen at most once.
fn flag(seen: &mut bool, value: Option<&str>) -> Result<(), Decline> {
    if *seen {
        return Err(Decline::DuplicateParam);
    }
    if value.is_some() {
        return Err(Decline::UnexpectedValue);
    }
    *seen = true;
    Ok(())
}

/// §7.1.2: a decimal integer 8..=15 without leading zeros.
fn window_bits(v: &str) -> Result<u8, Decline> {
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u8>() {
        Ok(n @ 8..=15) if digits && !v.starts_with('0') => Ok(n),
        _ => Err(Decline::BadWindowBits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&str]) -> Vec<ExtensionOffer> {
        parse_extensions(lines).expect("valid")
    }

    fn offer(name: &str, params: &[(&str, Option<&str>)]) -> ExtensionOffer {
        ExtensionOffer {
            name: name.into(),
            params: params
                .iter()
                .map(|&(n, v)| ExtensionParam {
                    name: n.into(),
                    value: v.map(Into::into),
                })
                .collect(),
        }
    }

    /// The response for one header line under `cfg`, or `None`.
    fn answer(cfg: &DeflateConfig, line: &str) -> Option<String> {
        cfg.negotiate(&parse(&[line])).map(|n| n.response)
    }

    /// Why the first offer of `line` is declined under the default policy.
    fn decline(line: &str) -> Decline {
        let offers = parse(&[line]);
        DeflateConfig::default()
            .accept(&offers[0])
            .expect_err("declined")
    }

    fn err_reason(line: &str) -> &'static str {
        parse_extensions([line]).expect_err("malformed").reason
    }

    // --- parsing ---

    #[test]
    fn parses_offers_and_params_in_order() {
        let got = parse(&["permessage-deflate; client_max_window_bits, permessage-deflate"]);
        assert_eq!(
            got,
            vec![
                offer(PERMESSAGE_DEFLATE, &[("client_max_window_bits", None)]),
                offer(PERMESSAGE_DEFLATE, &[]),
            ]
        );
    }

    #[test]
    fn parses_several_header_lines_in_order() {
        let got = parse(&["foo", "permessage-deflate;server_max_window_bits=10", "bar"]);
        let names: Vec<_> = got.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["foo", PERMESSAGE_DEFLATE, "bar"]);
        assert_eq!(got[1].params[0].value.as_deref(), Some("10"));
    }

    #[test]
    fn whitespace_around_every_separator() {
        let got =
            parse(&[" \tpermessage-deflate \t; \tserver_max_window_bits \t= \t\"12\" \t, x ; y "]);
        assert_eq!(
            got,
            vec![
                offer(
                    PERMESSAGE_DEFLATE,
                    &[("server_max_window_bits", Some("12"))]
                ),
                offer("x", &[("y", None)]),
            ]
        );
    }

    #[test]
    fn quoted_values_are_unquoted_and_unescaped() {
        let got = parse(&[r#"e; a="15"; b="1\5"; c=tok"#]);
        let values: Vec<_> = got[0].params.iter().map(|p| p.value.as_deref()).collect();
        assert_eq!(values, [Some("15"), Some("15"), Some("tok")]);
    }

    #[test]
    fn commas_inside_quotes_do_not_split() {
        // A comma cannot survive unescaping into a token, so this is an
        // error, not two offers.
        assert_eq!(err_reason(r#"e; a="x,y""#), "quoted value is not a token");
    }

    #[test]
    fn empty_elements_and_lines_are_skipped() {
        assert_eq!(parse(&["", " ", ",", " , a ,, b , "]).len(), 2);
        assert!(parse(&[]).is_empty());
    }

    #[test]
    fn accepts_request_extensions_items() {
        // `Request::extensions` splits lines on commas; the result is the same.
        let whole = parse(&["a; p=\"1\", b"]);
        assert_eq!(parse(&["a; p=\"1\"", "b"]), whole);
    }

    #[test]
    fn malformed_input_is_an_error_with_position() {
        let cases: &[(&str, &str, usize)] = &[
            (";", "expected an extension name", 0),
            ("a;", "expected a parameter name", 2),
            ("a; ;b", "expected a parameter name", 3),
            ("a b", "expected `;` or `,`", 2),
            ("a; p=", "expected a parameter value", 5),
            ("a; p==1", "expected a parameter value", 5),
            ("a; p=\"15", "unterminated quoted string", 8),
            ("a; p=\"1\\", "unterminated quoted string", 8),
            ("a; p=\"\"", "quoted value is not a token", 5),
            ("a; p=\"1 5\"", "quoted value is not a token", 5),
            ("a; p=\"1\x015\"", "invalid byte in quoted string", 7),
            ("a; p=\"1\\\x01\"", "invalid escape in quoted string", 8),
            ("a; p=\"1\"x", "expected `;` or `,`", 8),
            ("a; p=1 2", "expected `;` or `,`", 7),
            ("\"a\"", "expected an extension name", 0),
            ("permessage-deflate\r\n", "expected `;` or `,`", 18),
        ];
        for &(line, reason, offset) in cases {
            let e = parse_extensions(["ok", line]).expect_err(line);
            assert_eq!(
                (e.line, e.offset, e.reason),
                (1, offset, reason),
                "{line:?}"
            );
        }
    }

    #[test]
    fn non_ascii_is_an_error() {
        assert!(parse_extensions([&b"permessage-d\xc3\xa9flate"[..]]).is_err());
        assert!(parse_extensions([&b"a; p=\"\xff\""[..]]).is_err());
        assert!(parse_extensions(["a; p=\"é\""]).is_err());
    }

    #[test]
    fn error_display_names_line_and_offset() {
        let e = parse_extensions(["a", "b;"]).expect_err("malformed");
        assert_eq!(
            e.to_string(),
            "malformed Sec-WebSocket-Extensions (line 1, byte 2): expected a parameter name"
        );
    }

    // --- validation of one offer (§7.1) ---

    #[test]
    fn window_bits_values() {
        for ok in 8..=15u8 {
            assert_eq!(window_bits(&ok.to_string()), Ok(ok));
        }
        for bad in [
            "7", "16", "0", "08", "015", "+9", "-9", "9a", "", "255", "256",
        ] {
            assert_eq!(window_bits(bad), Err(Decline::BadWindowBits), "{bad:?}");
        }
    }

    #[test]
    fn duplicate_params_decline() {
        for line in [
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits; client_max_window_bits",
        ] {
            assert_eq!(decline(line), Decline::DuplicateParam, "{line}");
        }
    }

    #[test]
    fn bad_values_decline() {
        use Decline::*;
        let cases = [
            (
                "permessage-deflate; server_no_context_takeover=1",
                UnexpectedValue,
            ),
            (
                "permessage-deflate; client_no_context_takeover=\"x\"",
                UnexpectedValue,
            ),
            ("permessage-deflate; server_max_window_bits", MissingValue),
            (
                "permessage-deflate; server_max_window_bits=7",
                BadWindowBits,
            ),
            (
                "permessage-deflate; server_max_window_bits=16",
                BadWindowBits,
            ),
            (
                "permessage-deflate; client_max_window_bits=16",
                BadWindowBits,
            ),
            (
                "permessage-deflate; client_max_window_bits=0",
                BadWindowBits,
            ),
            (
                "permessage-deflate; client_max_window_bits=09",
                BadWindowBits,
            ),
            (
                "permessage-deflate; client_max_window_bits=abc",
                BadWindowBits,
            ),
            ("permessage-deflate; unknown", UnknownParam),
            ("permessage-deflate; x=1", UnknownParam),
            (
                "permessage-deflate; Server_No_Context_Takeover",
                UnknownParam,
            ),
            ("x-webkit-deflate-frame", OtherExtension),
            ("PerMessage-Deflate", OtherExtension),
        ];
        for (line, why) in cases {
            assert_eq!(decline(line), why, "{line}");
        }
    }

    // --- choosing and answering (§7.1.1, §7.1.2) ---

    /// Each `(line, bits)` is accepted and answered as
    /// `permessage-deflate; {param}={bits}`, with `bits` in force.
    fn assert_window(cfg: &DeflateConfig, param: &str, cases: &[(&str, u8)]) {
        for &(line, bits) in cases {
            let n = cfg.negotiate(&parse(&[line])).expect(line);
            let p = n.params;
            let in_force = match param {
                "server_max_window_bits" => p.server_max_window_bits,
                _ => p.client_max_window_bits,
            };
            assert_eq!(in_force, bits, "{line}");
            assert_eq!(n.response, format!("permessage-deflate; {param}={bits}"));
        }
    }

    #[test]
    fn plain_offer_plain_answer() {
        let n = DeflateConfig::default()
            .negotiate(&parse(&["permessage-deflate"]))
            .expect("accepted");
        assert_eq!(n.response, "permessage-deflate");
        assert_eq!(n.offer, 0);
        assert_eq!(
            n.params,
            DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            }
        );
    }

    #[test]
    fn browser_offer() {
        // What Chrome and Firefox send.
        let n = DeflateConfig::default()
            .negotiate(&parse(&["permessage-deflate; client_max_window_bits"]))
            .expect("accepted");
        assert_eq!(n.response, "permessage-deflate; client_max_window_bits=15");
        assert_eq!(n.params.client_max_window_bits, 15);
    }

    #[test]
    fn shared_mode_adds_server_no_context_takeover_unasked() {
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert_eq!(
            answer(&cfg, "permessage-deflate; client_max_window_bits").as_deref(),
            Some("permessage-deflate; server_no_context_takeover; client_max_window_bits=15")
        );
        assert_eq!(
            answer(&cfg, "permessage-deflate").as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
    }

    #[test]
    fn offered_no_context_takeover_is_honoured_and_named() {
        let line = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
        let n = DeflateConfig::default()
            .negotiate(&parse(&[line]))
            .expect("accepted");
        assert_eq!(n.response, line);
        assert!(n.params.server_no_context_takeover);
        assert!(n.params.client_no_context_takeover);
    }

    #[test]
    fn configured_client_no_context_takeover_is_named_unasked() {
        let cfg = DeflateConfig {
            client_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert_eq!(
            answer(&cfg, "permessage-deflate").as_deref(),
            Some("permessage-deflate; client_no_context_takeover")
        );
    }

    #[test]
    fn client_max_window_bits_never_answered_unless_offered() {
        let cfg = DeflateConfig {
            client_max_window_bits: 15,
            server_max_window_bits: 15,
            ..DeflateConfig::default()
        };
        let r = answer(&cfg, "permessage-deflate; server_max_window_bits=12").expect("accepted");
        assert!(!r.contains("client_max_window_bits"), "{r}");
    }

    #[test]
    fn client_window_limited_only_below_offer() {
        let cfg = DeflateConfig {
            client_max_window_bits: 10,
            ..DeflateConfig::default()
        };
        let cases = [
            ("permessage-deflate; client_max_window_bits", 10),
            ("permessage-deflate; client_max_window_bits=12", 10),
            ("permessage-deflate; client_max_window_bits=9", 9),
            ("permessage-deflate; client_max_window_bits=\"9\"", 9),
        ];
        assert_window(&cfg, "client_max_window_bits", &cases);
    }

    #[test]
    fn client_cap_below_15_declines_offer_that_cannot_be_limited() {
        let cfg = DeflateConfig {
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let offers = parse(&["permessage-deflate, permessage-deflate; client_max_window_bits"]);
        assert_eq!(cfg.accept(&offers[0]), Err(Decline::ClientUnlimited));
        let n = cfg.negotiate(&offers).expect("second accepted");
        assert_eq!(n.offer, 1);
        assert_eq!(n.response, "permessage-deflate; client_max_window_bits=12");
    }

    #[test]
    fn server_window_answer_never_exceeds_offer() {
        let cfg = DeflateConfig {
            server_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let cases = [
            ("permessage-deflate; server_max_window_bits=15", 12),
            ("permessage-deflate; server_max_window_bits=10", 10),
            ("permessage-deflate; server_max_window_bits=\"9\"", 9),
            // Not offered: the server may still limit its own window.
            ("permessage-deflate", 12),
        ];
        assert_window(&cfg, "server_max_window_bits", &cases);
    }

    #[test]
    fn offered_server_window_of_15_is_named_in_the_answer() {
        assert_eq!(
            answer(
                &DeflateConfig::default(),
                "permessage-deflate; server_max_window_bits=15"
            )
            .as_deref(),
            Some("permessage-deflate; server_max_window_bits=15")
        );
    }

    #[test]
    fn window_of_8() {
        let cfg = DeflateConfig::default();
        // Server side: the answer may not exceed 8, zlib cannot do 8.
        assert_eq!(
            decline("permessage-deflate; server_max_window_bits=8"),
            Decline::ServerWindow8
        );
        let n = cfg
            .negotiate(&parse(&[
                "permessage-deflate; server_max_window_bits=8, permessage-deflate; server_max_window_bits=9",
            ]))
            .expect("second accepted");
        assert_eq!((n.offer, n.params.server_max_window_bits), (1, 9));
        // Client side: 8 is fine, the server inflates with 9 or more.
        let n = cfg
            .negotiate(&parse(&["permessage-deflate; client_max_window_bits=8"]))
            .expect("accepted");
        assert_eq!(n.params.client_max_window_bits, 8);
        assert_eq!(n.response, "permessage-deflate; client_max_window_bits=8");
        // A configured server window of 8 is raised to 9.
        let cfg8 = DeflateConfig {
            server_max_window_bits: 8,
            client_max_window_bits: 8,
            ..cfg
        };
        let n = cfg8
            .negotiate(&parse(&["permessage-deflate; client_max_window_bits"]))
            .expect("accepted");
        assert_eq!(
            n.response,
            "permessage-deflate; server_max_window_bits=9; client_max_window_bits=8"
        );
    }

    #[test]
    fn out_of_range_config_is_clamped() {
        let cfg = DeflateConfig {
            server_max_window_bits: 200,
            client_max_window_bits: 0,
            ..DeflateConfig::default()
        };
        let n = cfg
            .negotiate(&parse(&["permessage-deflate; client_max_window_bits"]))
            .expect("accepted");
        assert_eq!(n.params.server_max_window_bits, 15);
        assert_eq!(n.params.client_max_window_bits, 8);
    }

    #[test]
    fn first_acceptable_offer_wins() {
        let offers = parse(&[
            "x-webkit-deflate-frame, permessage-deflate; bogus",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=11, permessage-deflate",
        ]);
        let n = DeflateConfig::default()
            .negotiate(&offers)
            .expect("accepted");
        assert_eq!(n.offer, 3);
        assert_eq!(n.response, "permessage-deflate; server_max_window_bits=11");
    }

    #[test]
    fn unknown_extension_before_a_good_one() {
        assert_eq!(
            answer(
                &DeflateConfig::default(),
                "foo; bar=\"baz\", permessage-deflate; client_max_window_bits"
            )
            .as_deref(),
            Some("permessage-deflate; client_max_window_bits=15")
        );
    }

    #[test]
    fn nothing_acceptable_means_no_extension() {
        let cfg = DeflateConfig::default();
        assert_eq!(cfg.negotiate(&[]), None);
        assert_eq!(answer(&cfg, "foo, bar; baz"), None);
        assert_eq!(
            answer(
                &cfg,
                "permessage-deflate; a, permessage-deflate; server_max_window_bits"
            ),
            None
        );
    }

    #[test]
    fn full_offer_full_answer() {
        let cfg = DeflateConfig {
            server_max_window_bits: 13,
            client_max_window_bits: 11,
            ..DeflateConfig::default()
        };
        let n = cfg
            .negotiate(&parse(&[
                "permessage-deflate;client_no_context_takeover;server_no_context_takeover;\
                 client_max_window_bits=\"12\";server_max_window_bits=14",
            ]))
            .expect("accepted");
        assert_eq!(
            n.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=13; client_max_window_bits=11"
        );
        assert_eq!(
            n.params,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 13,
                client_max_window_bits: 11,
            }
        );
    }

    #[test]
    fn response_parses_back_as_one_valid_offer() {
        let cfg = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 10,
        };
        let r = answer(&cfg, "permessage-deflate; client_max_window_bits").expect("accepted");
        let back = parse(&[&r]);
        assert_eq!(back.len(), 1);
        assert!(DeflateOffer::parse(&back[0].params).is_ok());
    }
}
