//! One connection's WebSocket state, as a pure state machine: time and
//! decoded frames go in, frames to send and decisions come out. No socket,
//! no clock, no table: the shard does the I/O, and the unit tests below
//! drive every transition without sockets.
//!
//! ```text
//! Handshake --101--> Open --close sent/received--> (closing) --> Closed
//!     |                \--protocol error--> Failed ------------> Closed
//!     \--HTTP answered or refused--> Done -------------------------> Closed
//! ```
//!
//! `Failed` and `Done` wait for the client's EOF (a lingering close: closing
//! at once with unread input would reset the connection and could destroy
//! the last bytes we sent) until their deadline.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_codec::{codes, pong_frame, CloseState, Message as Wire};
use ringcast_reactor::CloseReason;

use crate::metrics::CloseKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP request head.
    Handshake,
    /// A WebSocket.
    Open,
    /// A protocol error was answered with a close frame; waiting for EOF.
    Failed,
    /// HTTP answered (or refused); the reactor flushes and closes.
    Done,
    /// `on_close` is running.
    Closed,
}

/// What one decoded frame means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Incoming<'a> {
    /// A data message for the app.
    Data(crate::api::Message<'a>),
    /// Send this (a pong).
    Reply(Bytes),
    /// Nothing to do (a pong, or data that arrived after our close frame).
    Ignore,
    /// The peer's close frame: send `reply` if any, close the TCP
    /// connection if `close_tcp`, and decode nothing more.
    Closed {
        reply: Option<Bytes>,
        close_tcp: bool,
    },
    /// Not open: decode nothing more.
    Stop,
}

/// What a timer check found due.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Due {
    Nothing,
    /// Send a ping (the next one is scheduled).
    Ping,
    /// Idle too long: start the closing handshake with 1001.
    Idle,
    /// The request head did not arrive in time: answer 408.
    HandshakeTimeout,
    /// A deadline passed while closing: drop the socket.
    Abort,
}

/// Timeouts, from the settings (zero turns one off).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub idle: Duration,
    pub ping: Duration,
}

/// The WebSocket side of one connection.
#[derive(Debug)]
pub(crate) struct WsState {
    phase: Phase,
    /// Any request bytes arrived (a silent socket is closed at once on drain).
    got_bytes: bool,
    close: CloseState,
    /// The close code and reason we sent / the peer sent.
    sent_close: Option<(u16, Box<str>)>,
    peer_close: Option<(u16, Box<str>)>,
    /// Why this connection ended, when we decided it (for metrics).
    kind: Option<CloseKind>,
    /// Handshake deadline, or the deadline of a `Failed`/`Done` connection.
    deadline: Option<Instant>,
    last_seen: Instant,
    next_ping: Instant,
}

impl WsState {
    /// A new TCP connection, reading its request head until
    /// `handshake_timeout` (zero: no limit).
    pub fn new(now: Instant, handshake_timeout: Duration) -> WsState {
        WsState {
            phase: Phase::Handshake,
            got_bytes: false,
            close: CloseState::new(),
            sent_close: None,
            peer_close: None,
            kind: None,
            deadline: (!handshake_timeout.is_zero()).then(|| now + handshake_timeout),
            last_seen: now,
            next_ping: now,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Accepts data frames: open and no close frame sent.
    pub fn takes_data(&self) -> bool {
        self.phase == Phase::Open && !self.close.close_sent()
    }

    /// Request bytes arrived.
    pub fn saw_bytes(&mut self) {
        self.got_bytes = true;
    }

    /// Frames arrived: the connection is not idle.
    pub fn seen(&mut self, now: Instant) {
        self.last_seen = now;
    }

    /// The 101 went out.
    pub fn opened(&mut self, now: Instant, ping: Duration) {
        self.phase = Phase::Open;
        self.deadline = None;
        self.last_seen = now;
        self.next_ping = now + ping;
    }

    /// The one HTTP response went out; wait for EOF until `now + wait`.
    pub fn answered(&mut self, now: Instant, wait: Duration, kind: CloseKind) {
        self.phase = Phase::Done;
        self.deadline = Some(now + wait);
        self.kind.get_or_insert(kind);
    }

    /// Sets why the connection ends, overriding what was recorded.
    pub fn set_kind(&mut self, kind: CloseKind) {
        self.kind = Some(kind);
    }

    /// Our close frame (once, and only while open); the client's answer
    /// completes the close, or the socket is dropped at `now + wait`.
    pub fn start_close(
        &mut self,
        code: u16,
        reason: &str,
        kind: CloseKind,
        now: Instant,
        wait: Duration,
    ) -> Option<Bytes> {
        if self.phase != Phase::Open {
            return None;
        }
        self.kind.get_or_insert(kind);
        let frame = self.close.start(code, reason, now + wait)?;
        self.sent_close = Some((code, reason.into()));
        Some(frame)
    }

    /// The client broke the protocol: our close frame (if not sent yet),
    /// then `Failed` until `now + wait`. The caller shuts its write side.
    pub fn fail(&mut self, code: u16, reason: &str, now: Instant, wait: Duration) -> Option<Bytes> {
        self.kind.get_or_insert(kind_of_code(code));
        let frame = self.close.start(code, reason, now + wait);
        if frame.is_some() {
            self.sent_close = Some((code, reason.into()));
        }
        self.phase = Phase::Failed;
        self.deadline = Some(now + wait);
        frame
    }

    /// One decoded frame; `frame`: the server frame the decoder built for
    /// a data message, if it did.
    pub fn on_frame<'a>(&mut self, msg: Wire<'a>, frame: Option<&'a Bytes>) -> Incoming<'a> {
        use crate::api::{Data, Message};
        if self.phase != Phase::Open {
            return Incoming::Stop;
        }
        let data = match msg {
            Wire::Text(s) => Message::framed(Data::Text(s), frame),
            Wire::Binary(b) => Message::framed(Data::Binary(b), frame),
            Wire::Ping(p) if !self.close.close_sent() => return Incoming::Reply(pong_frame(p)),
            Wire::Ping(_) | Wire::Pong(_) => return Incoming::Ignore,
            Wire::Close(f) => {
                self.peer_close =
                    Some(f.map_or((codes::NO_STATUS, "".into()), |f| (f.code, f.reason.into())));
                if self.kind.is_none() {
                    self.kind = Some(f.map_or(CloseKind::Normal, |f| kind_of_code(f.code)));
                }
                let action = self.close.on_peer_close(f);
                if action.reply.is_some() {
                    if let Some((code, _)) = self.peer_close {
                        let echoed = if code == codes::NO_STATUS {
                            codes::NORMAL
                        } else {
                            code
                        };
                        self.sent_close = Some((echoed, "".into()));
                    }
                }
                return Incoming::Closed {
                    reply: action.reply,
                    close_tcp: action.close_tcp,
                };
            }
        };
        if self.close.close_sent() {
            // We are closing: the client's late data is ignored.
            return Incoming::Ignore;
        }
        Incoming::Data(data)
    }

    /// What is due at `now`.
    pub fn poll(&mut self, now: Instant, t: Timeouts) -> Due {
        let past_deadline = self.deadline.is_some_and(|d| now >= d);
        match self.phase {
            Phase::Handshake if past_deadline => Due::HandshakeTimeout,
            Phase::Open if self.close.is_closing() => {
                if self.close.expired(now) {
                    Due::Abort
                } else {
                    Due::Nothing
                }
            }
            Phase::Open
                if !t.idle.is_zero() && now.saturating_duration_since(self.last_seen) >= t.idle =>
            {
                Due::Idle
            }
            Phase::Open if !t.ping.is_zero() && now >= self.next_ping => {
                self.next_ping = now + t.ping;
                Due::Ping
            }
            Phase::Failed | Phase::Done if past_deadline => Due::Abort,
            _ => Due::Nothing,
        }
    }

    /// The peer sent EOF: unless a closing handshake is under way, the
    /// connection was cut.
    pub fn eof(&mut self) {
        if self.phase == Phase::Open && !self.close.is_closing() {
            self.kind.get_or_insert(CloseKind::Reset);
        }
    }

    /// On drain: should this connection be closed at once (a socket that
    /// sent nothing yet)?
    pub fn silent(&self) -> bool {
        self.phase == Phase::Handshake && !self.got_bytes
    }

    /// The reactor closed the socket: `Closed`, and why (for metrics).
    pub fn closed(&mut self, why: CloseReason) -> CloseKind {
        let kind = self.kind.unwrap_or(match why {
            CloseReason::Shutdown => CloseKind::Shutdown,
            // Gone before finishing its request.
            _ if self.phase == Phase::Handshake => CloseKind::Reset,
            CloseReason::Local => CloseKind::Normal,
            CloseReason::PeerEof | CloseReason::Reset => CloseKind::Reset,
            CloseReason::Error(_) => CloseKind::Error,
        });
        self.phase = Phase::Closed;
        kind
    }

    /// The code and reason `on_close` reports: the peer's, else ours, else
    /// 1006 (the TCP connection died without a closing handshake).
    pub fn close_report(&self) -> (u16, Box<str>) {
        self.peer_close
            .clone()
            .or_else(|| self.sent_close.clone())
            .unwrap_or((codes::ABNORMAL, "".into()))
    }
}

/// The metrics label for a close code.
pub(crate) fn kind_of_code(code: u16) -> CloseKind {
    match code {
        codes::GOING_AWAY => CloseKind::GoingAway,
        codes::PROTOCOL_ERROR => CloseKind::ProtocolError,
        codes::INVALID_PAYLOAD => CloseKind::InvalidPayload,
        codes::POLICY => CloseKind::Policy,
        codes::TOO_BIG => CloseKind::TooBig,
        codes::INTERNAL => CloseKind::Error,
        _ => CloseKind::Normal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Message;
    use ringcast_codec::CloseFrame;

    const SEC: Duration = Duration::from_secs(1);
    const T: Timeouts = Timeouts {
        idle: Duration::from_secs(60),
        ping: Duration::from_secs(20),
    };

    fn open(now: Instant) -> WsState {
        let mut ws = WsState::new(now, 5 * SEC);
        ws.opened(now, T.ping);
        ws
    }

    #[test]
    fn handshake_times_out_and_a_silent_socket_is_closed_on_drain() {
        let t0 = Instant::now();
        let mut ws = WsState::new(t0, 5 * SEC);
        assert!(ws.silent());
        assert_eq!(ws.poll(t0 + 4 * SEC, T), Due::Nothing);
        assert_eq!(ws.poll(t0 + 5 * SEC, T), Due::HandshakeTimeout);
        ws.saw_bytes();
        assert!(!ws.silent());
        // No limit when the timeout is zero.
        let mut forever = WsState::new(t0, Duration::ZERO);
        assert_eq!(forever.poll(t0 + 3600 * SEC, T), Due::Nothing);
    }

    #[test]
    fn open_pings_on_schedule_then_closes_when_idle() {
        let t0 = Instant::now();
        let mut ws = open(t0);
        assert!(ws.takes_data());
        assert_eq!(ws.poll(t0 + 19 * SEC, T), Due::Nothing);
        assert_eq!(ws.poll(t0 + 20 * SEC, T), Due::Ping);
        assert_eq!(
            ws.poll(t0 + 21 * SEC, T),
            Due::Nothing,
            "next ping rescheduled"
        );
        assert_eq!(ws.poll(t0 + 40 * SEC, T), Due::Ping);
        ws.seen(t0 + 50 * SEC);
        assert_eq!(ws.poll(t0 + 100 * SEC, T), Due::Ping);
        assert_eq!(ws.poll(t0 + 110 * SEC, T), Due::Idle);
        let frame = ws.start_close(
            codes::GOING_AWAY,
            "idle timeout",
            CloseKind::IdleTimeout,
            t0 + 110 * SEC,
            10 * SEC,
        );
        assert!(frame.is_some());
        assert!(!ws.takes_data());
        // Closing: no pings, no second close frame, then the deadline.
        assert_eq!(ws.poll(t0 + 115 * SEC, T), Due::Nothing);
        assert!(ws
            .start_close(1000, "", CloseKind::Normal, t0 + 115 * SEC, SEC)
            .is_none());
        assert_eq!(ws.poll(t0 + 121 * SEC, T), Due::Abort);
        assert_eq!(ws.closed(CloseReason::Local), CloseKind::IdleTimeout);
        assert_eq!(
            ws.close_report(),
            (codes::GOING_AWAY, "idle timeout".into())
        );
    }

    #[test]
    fn pings_are_answered_and_data_after_our_close_is_ignored() {
        let t0 = Instant::now();
        let mut ws = open(t0);
        assert_eq!(
            ws.on_frame(Wire::Text("hi"), None),
            Incoming::Data(Message::text("hi"))
        );
        assert_eq!(
            ws.on_frame(Wire::Ping(b"p"), None),
            Incoming::Reply(pong_frame(b"p"))
        );
        assert_eq!(ws.on_frame(Wire::Pong(b""), None), Incoming::Ignore);
        ws.start_close(1000, "bye", CloseKind::Normal, t0, SEC);
        assert_eq!(ws.on_frame(Wire::Binary(b"late"), None), Incoming::Ignore);
        assert_eq!(ws.on_frame(Wire::Ping(b"p"), None), Incoming::Ignore);
    }

    #[test]
    fn the_peers_close_is_echoed_and_reported() {
        let t0 = Instant::now();
        let mut ws = open(t0);
        let f = CloseFrame {
            code: 4001,
            reason: "done",
        };
        match ws.on_frame(Wire::Close(Some(f)), None) {
            Incoming::Closed { reply, close_tcp } => {
                assert!(reply.is_some(), "we answer a close we did not start");
                assert!(close_tcp);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(ws.close_report(), (4001, "done".into()));
        assert_eq!(ws.closed(CloseReason::Local), CloseKind::Normal);
        assert_eq!(ws.on_frame(Wire::Text("x"), None), Incoming::Stop);
    }

    #[test]
    fn a_close_without_status_is_reported_as_1005_and_answered_1000() {
        let mut ws = open(Instant::now());
        assert!(matches!(
            ws.on_frame(Wire::Close(None), None),
            Incoming::Closed { reply: Some(_), .. }
        ));
        assert_eq!(ws.close_report().0, codes::NO_STATUS);
        assert_eq!(ws.sent_close.as_ref().map(|c| c.0), Some(codes::NORMAL));
    }

    #[test]
    fn a_protocol_error_fails_then_waits_for_eof_until_the_deadline() {
        let t0 = Instant::now();
        let mut ws = open(t0);
        let frame = ws.fail(codes::PROTOCOL_ERROR, "bad frame", t0, 10 * SEC);
        assert!(frame.is_some());
        assert_eq!(ws.phase(), Phase::Failed);
        assert_eq!(ws.on_frame(Wire::Text("x"), None), Incoming::Stop);
        assert_eq!(ws.poll(t0 + 9 * SEC, T), Due::Nothing);
        assert_eq!(ws.poll(t0 + 10 * SEC, T), Due::Abort);
        assert_eq!(ws.closed(CloseReason::PeerEof), CloseKind::ProtocolError);
        assert_eq!(
            ws.close_report(),
            (codes::PROTOCOL_ERROR, "bad frame".into())
        );
    }

    #[test]
    fn an_answered_request_lingers_then_aborts() {
        let t0 = Instant::now();
        let mut ws = WsState::new(t0, 5 * SEC);
        ws.answered(t0, 10 * SEC, CloseKind::HandshakeFailed);
        assert_eq!(
            ws.poll(t0 + 5 * SEC, T),
            Due::Nothing,
            "no handshake timeout now"
        );
        assert_eq!(ws.poll(t0 + 10 * SEC, T), Due::Abort);
        assert!(ws
            .start_close(1000, "", CloseKind::Normal, t0, SEC)
            .is_none());
        assert_eq!(ws.closed(CloseReason::Local), CloseKind::HandshakeFailed);
    }

    #[test]
    fn close_kinds_without_a_decision() {
        let t0 = Instant::now();
        let mut cut = open(t0);
        cut.eof();
        assert_eq!(cut.closed(CloseReason::PeerEof), CloseKind::Reset);
        assert_eq!(cut.close_report().0, codes::ABNORMAL);
        let mut early = WsState::new(t0, SEC);
        assert_eq!(early.closed(CloseReason::Local), CloseKind::Reset);
        let mut drained = open(t0);
        assert_eq!(drained.closed(CloseReason::Shutdown), CloseKind::Shutdown);
        assert_eq!(kind_of_code(codes::TOO_BIG), CloseKind::TooBig);
        assert_eq!(kind_of_code(4000), CloseKind::Normal);
    }
}
