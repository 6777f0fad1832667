//! The values handlers receive and send: [`Message`], [`Frame`], [`Response`].

use std::borrow::Cow;

use bytes::Bytes;
use ringcast_codec::{FrameHeader, OpCode};

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
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    pub(crate) fn from_wire(b: Bytes) -> Option<Frame> {
        FrameHeader::read_server_message(&b).map(|_| Frame(b))
    }

    /// Payload size, as the frame's own header says.
    pub(crate) fn payload_len(&self) -> usize {
        FrameHeader::read(&self.0).map_or(0, |h| h.payload_len as usize)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_whole_unmasked_data_frame_comes_in_from_the_wire() {
        for f in [Frame::text("hi"), Frame::binary(&[7u8; 70_000])] {
            let len = f.payload_len();
            let back = Frame::from_wire(f.0.clone()).expect("a server frame");
            assert_eq!(back.payload_len(), len);
        }
        let ping = ringcast_codec::server_frame(OpCode::Ping, b"");
        let mut trailing = Frame::text("x").0.to_vec();
        trailing.push(0);
        let masked = Bytes::from_static(&[0x81, 0x81, 1, 2, 3, 4, b'x' ^ 1]);
        let not_final = Bytes::from_static(&[0x01, 0x01, b'x']);
        for bad in [ping, trailing.into(), masked, not_final, Bytes::new()] {
            assert!(Frame::from_wire(bad.clone()).is_none(), "{bad:?}");
        }
        assert_eq!(Frame::text("abc").payload_len(), 3);
    }
}
