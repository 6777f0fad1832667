//! Close frames and the closing handshake (RFC 6455 §5.5.1, §7).

use std::time::Instant;

use bytes::Bytes;

use crate::frame::close_frame;
use crate::message::ProtocolError;

/// Status codes from RFC 6455 §7.4.1 and the IANA registry.
pub mod codes {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The endpoint cannot accept this kind of data.
    pub const UNSUPPORTED: u16 = 1003;
    /// No status code was present. Never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame. Never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    /// Data inconsistent with the message type (e.g. invalid UTF-8 text).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The message violates the endpoint's policy.
    pub const POLICY: u16 = 1008;
    /// The message is too big to process.
    pub const TOO_BIG: u16 = 1009;
    /// The client expected an extension the server did not negotiate.
    pub const MANDATORY_EXTENSION: u16 = 1010;
    /// The server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
    /// The service is restarting.
    pub const SERVICE_RESTART: u16 = 1012;
    /// Temporary overload: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// A gateway received an invalid upstream response.
    pub const BAD_GATEWAY: u16 = 1014;
    /// TLS handshake failure. Never sent on the wire.
    pub const TLS_HANDSHAKE: u16 = 1015;
}

/// A parsed close payload: status code and UTF-8 reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    /// Status code; always [valid on the wire](is_valid_wire_code).
    pub code: u16,
    /// Reason text, possibly empty.
    pub reason: &'a str,
}

/// Whether `code` may appear in a close frame on the wire: 1000–1003,
/// 1007–1014 (defined or registered) and 3000–4999 (libraries and
/// applications). Everything else (0–999, 1004–1006, 1015, other unassigned
/// codes in 1016–2999, 5000 and above) is invalid.
pub fn is_valid_wire_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Parses a close frame's payload (already unmasked).
///
/// Empty → `Ok(None)`. A 1-byte payload or an invalid code → 1002; a reason
/// that is not UTF-8 → 1007.
pub(crate) fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::new(
            codes::PROTOCOL_ERROR,
            "close payload of 1 byte",
        )),
        [hi, lo, rest @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_wire_code(code) {
                return Err(ProtocolError::new(
                    codes::PROTOCOL_ERROR,
                    "invalid close code",
                ));
            }
            let reason = simdutf8::basic::from_utf8(rest).map_err(|_| {
                ProtocolError::new(codes::INVALID_PAYLOAD, "close reason is not UTF-8")
            })?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// What to do after the peer's close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseAction {
    /// Close frame to send back, if we had not sent one yet.
    pub reply: Option<Bytes>,
    /// Both close frames are exchanged: the TCP connection should be closed
    /// now (by the server; RFC 6455 §7.1.1).
    pub close_tcp: bool,
}

/// The closing handshake of one connection (RFC 6455 §7.1).
///
/// The caller supplies the time: the codec reads no clock. Frames it returns
/// are server-role (unmasked).
#[derive(Debug, Clone, Default)]
pub struct CloseState {
    sent: bool,
    received: bool,
    deadline: Option<Instant>,
}

impl CloseState {
    /// An open connection: nothing sent or received.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer's close frame arrived (`None` for an empty one).
    ///
    /// If we had not sent a close yet, the reply echoes the peer's code
    /// (1000 for an empty close). `close_tcp` is true: both sides have now
    /// sent a close frame.
    pub fn on_peer_close(&mut self, frame: Option<CloseFrame<'_>>) -> CloseAction {
        self.received = true;
        let reply = if self.sent {
            None
        } else {
            self.sent = true;
            let code = frame.map_or(codes::NORMAL, |f| f.code);
            Some(close_frame(code, ""))
        };
        CloseAction {
            reply,
            close_tcp: true,
        }
    }

    /// We start closing. Returns the close frame to send, or `None` if one
    /// was already sent. Remembers `deadline`: see [`expired`](Self::expired).
    pub fn start(&mut self, code: u16, reason: &str, deadline: Instant) -> Option<Bytes> {
        if self.sent {
            return None;
        }
        self.sent = true;
        self.deadline = Some(deadline);
        Some(close_frame(code, reason))
    }

    /// True once either side has sent a close frame.
    pub fn is_closing(&self) -> bool {
        self.sent || self.received
    }

    /// True once we have sent a close frame.
    pub fn close_sent(&self) -> bool {
        self.sent
    }

    /// True once the peer's close frame arrived.
    pub fn close_received(&self) -> bool {
        self.received
    }

    /// True when we sent a close, the peer has not answered and `now` is at
    /// or past the deadline given to [`start`](Self::start): close TCP now.
    pub fn expired(&self, now: Instant) -> bool {
        self.sent && !self.received && self.deadline.is_some_and(|d| now >= d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn wire_codes() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_wire_code(c), "{c}");
        }
        for c in [3000, 3999, 4000, 4999] {
            assert!(is_valid_wire_code(c), "{c}");
        }
        for c in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_wire_code(c), "{c}");
        }
    }

    #[test]
    fn parse_payloads() {
        assert_eq!(parse_close_payload(b""), Ok(None));
        assert_eq!(parse_close_payload(b"\x03").unwrap_err().code, 1002);
        assert_eq!(
            parse_close_payload(b"\x03\xe8"),
            Ok(Some(CloseFrame {
                code: 1000,
                reason: ""
            }))
        );
        assert_eq!(
            parse_close_payload(b"\x0f\xa0bye \xe2\x9c\x93"),
            Ok(Some(CloseFrame {
                code: 4000,
                reason: "bye ✓"
            }))
        );
        // 1005 and 999 are not allowed on the wire.
        assert_eq!(parse_close_payload(b"\x03\xed").unwrap_err().code, 1002);
        assert_eq!(parse_close_payload(b"\x03\xe7").unwrap_err().code, 1002);
        // Reason must be UTF-8.
        assert_eq!(parse_close_payload(b"\x03\xe8\xff").unwrap_err().code, 1007);
    }

    #[test]
    fn peer_closes_first_we_echo() {
        let mut s = CloseState::new();
        assert!(!s.is_closing());
        let a = s.on_peer_close(Some(CloseFrame {
            code: 1001,
            reason: "bye",
        }));
        assert_eq!(a.reply.as_deref(), Some(&b"\x88\x02\x03\xe9"[..]));
        assert!(a.close_tcp);
        assert!(s.is_closing() && s.close_sent() && s.close_received());
        // Already sent: starting now sends nothing more.
        assert_eq!(s.start(1000, "", Instant::now()), None);
    }

    #[test]
    fn empty_peer_close_echoes_1000() {
        let mut s = CloseState::new();
        let a = s.on_peer_close(None);
        assert_eq!(a.reply.as_deref(), Some(&b"\x88\x02\x03\xe8"[..]));
        assert!(a.close_tcp);
    }

    #[test]
    fn we_close_first_then_peer_answers() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_secs(5);
        let mut s = CloseState::new();
        let f = s.start(1001, "shutdown", deadline).unwrap();
        assert_eq!(&f[..], b"\x88\x0a\x03\xe9shutdown");
        assert!(s.is_closing() && s.close_sent() && !s.close_received());
        assert_eq!(s.start(1000, "", deadline), None);
        assert!(!s.expired(t0));
        let a = s.on_peer_close(Some(CloseFrame {
            code: 1001,
            reason: "",
        }));
        assert_eq!(a.reply, None);
        assert!(a.close_tcp);
        // Answered: never expires.
        assert!(!s.expired(deadline + Duration::from_secs(1)));
    }

    #[test]
    fn deadline_expires_without_answer() {
        let t0 = Instant::now();
        let deadline = t0 + Duration::from_millis(100);
        let mut s = CloseState::new();
        assert!(!s.expired(deadline));
        s.start(1000, "", deadline).unwrap();
        assert!(!s.expired(t0));
        assert!(s.expired(deadline));
        assert!(s.expired(deadline + Duration::from_secs(1)));
    }
}
