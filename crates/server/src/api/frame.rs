//! The values handlers receive and send: [`Message`], [`Frame`], [`Response`].

use std::borrow::Cow;

use bytes::Bytes;
use ringcast_codec::OpCode;

/// A complete data message from a client.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl Message<'_> {
    /// The payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Message::Text(s) => s.as_bytes(),
            Message::Binary(b) => b,
        }
    }
}

/// An encoded server frame. Encoding happens once; cloning shares the same
/// buffer, so one `Frame` can go to any number of clients on any shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(pub(crate) Bytes);

impl Frame {
    /// A text frame.
    pub fn text(s: &str) -> Frame {
        Frame(crate::bufpool::frame(OpCode::Text, s.as_bytes()))
    }

    /// A binary frame.
    pub fn binary(b: &[u8]) -> Frame {
        Frame(crate::bufpool::frame(OpCode::Binary, b))
    }

    /// Encoded size in bytes (header and payload).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a frame has at least a header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// An encoded frame received from another node (a push or topic message
    /// on the backplane): accepted only if it is exactly one unmasked, final
    /// text or binary frame, so nothing else can reach a client.
    pub(crate) fn from_wire(b: Bytes) -> Option<Frame> {
        let (&b0, &b1) = (b.first()?, b.get(1)?);
        if !matches!(b0, 0x81 | 0x82) || b1 & 0x80 != 0 {
            return None;
        }
        let (header, len) = match b1 & 0x7f {
            126 => (
                4,
                u64::from(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?)),
            ),
            127 => (10, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
            n => (2, u64::from(n)),
        };
        (b.len() as u64 == header + len).then_some(Frame(b))
    }

    /// Payload size (the header's length field tells how long the header is).
    pub(crate) fn payload_len(&self) -> usize {
        let header = match self.0.get(1).map(|b| b & 0x7f) {
            None => return 0,
            Some(126) => 4,
            Some(127) => 10,
            Some(_) => 2,
        };
        self.0.len().saturating_sub(header)
    }
}

impl From<&str> for Frame {
    fn from(s: &str) -> Frame {
        Frame::text(s)
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame::text(&s)
    }
}

impl From<&String> for Frame {
    fn from(s: &String) -> Frame {
        Frame::text(s)
    }
}

impl From<&[u8]> for Frame {
    fn from(b: &[u8]) -> Frame {
        Frame::binary(b)
    }
}

impl From<Vec<u8>> for Frame {
    fn from(b: Vec<u8>) -> Frame {
        Frame::binary(&b)
    }
}

/// Same opcode as the message: text stays text, binary stays binary.
impl From<Message<'_>> for Frame {
    fn from(m: Message<'_>) -> Frame {
        match m {
            Message::Text(s) => Frame::text(s),
            Message::Binary(b) => Frame::binary(b),
        }
    }
}

impl From<&Frame> for Frame {
    fn from(f: &Frame) -> Frame {
        f.clone()
    }
}

/// A plain HTTP response (for `on_request` and refused upgrades). Sent with
/// `Content-Length` and `Connection: close`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    status: u16,
    content_type: Cow<'static, str>,
    body: Cow<'static, [u8]>,
}

impl Response {
    /// Any status, content type and body.
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Cow<'static, [u8]>>,
    ) -> Response {
        Response {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// `text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<Cow<'static, str>>) -> Response {
        let body = match body.into() {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        };
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    /// 200 with `text/html; charset=utf-8`.
    pub fn html(body: impl Into<Cow<'static, str>>) -> Response {
        let mut r = Response::text(200, body);
        r.content_type = Cow::Borrowed("text/html; charset=utf-8");
        r
    }

    /// 404 Not Found.
    pub fn not_found() -> Response {
        Response::text(404, "not found\n")
    }

    /// 426 Upgrade Required (with `Sec-WebSocket-Version: 13`), for a plain
    /// GET of a WebSocket path.
    pub fn upgrade_required() -> Response {
        Response::text(
            426,
            "this is a WebSocket endpoint: connect with a WebSocket client\n",
        )
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The bytes on the wire; `head_only` for HEAD requests.
    pub(crate) fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = if self.status == 426 {
            ringcast_codec::error_response(426, &String::from_utf8_lossy(&self.body))
        } else {
            ringcast_codec::http_response(self.status, &self.content_type, &self.body)
        };
        if head_only {
            if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
                out.truncate(end + 4);
            }
        }
        out
    }
}
