//! The values handlers receive and send: [`Message`], [`Frame`], [`Response`].

use std::borrow::Cow;

use bytes::Bytes;
use ringcast_codec::{FrameHeader, OpCode};

/// A complete data message from a client: its [`Data`], and the server
/// frame the decoder built for it when it did (large messages: see
/// `From<Message> for Frame`).
#[derive(Copy, Clone, Debug)]
pub struct Message<'a> {
    data: Data<'a>,
    frame: Option<&'a Bytes>,
}

/// What a [`Message`] holds.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Data<'a> {
    /// A text message (valid UTF-8).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

impl<'a> Message<'a> {
    /// A text message (for tests and for handlers called by hand).
    pub fn text(s: &'a str) -> Message<'a> {
        Message {
            data: Data::Text(s),
            frame: None,
        }
    }

    /// A binary message.
    pub fn binary(b: &'a [u8]) -> Message<'a> {
        Message {
            data: Data::Binary(b),
            frame: None,
        }
    }

    /// A message whose payload is exactly `frame`'s payload (the decoder
    /// guarantees it).
    pub(crate) fn framed(data: Data<'a>, frame: Option<&'a Bytes>) -> Message<'a> {
        Message { data, frame }
    }

    /// Text or binary, with the payload.
    pub fn data(&self) -> Data<'a> {
        self.data
    }

    /// The text, if it is a text message.
    pub fn as_text(&self) -> Option<&'a str> {
        match self.data {
            Data::Text(s) => Some(s),
            Data::Binary(_) => None,
        }
    }

    /// The payload bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        match self.data {
            Data::Text(s) => s.as_bytes(),
            Data::Binary(b) => b,
        }
    }
}

/// Messages are equal when their data are (however they arrived).
impl PartialEq for Message<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.data == other.data
    }
}

impl Eq for Message<'_> {}

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

/// Same opcode as the message: text stays text, binary stays binary. A
/// large message (4 KiB or more) already is its frame, built by the decoder
/// while unmasking (often right in the receive buffer): sending it on as it
/// is shares that frame, with no copy.
impl From<Message<'_>> for Frame {
    fn from(m: Message<'_>) -> Frame {
        if let Some(f) = m.frame {
            return Frame(f.clone());
        }
        match m.data {
            Data::Text(s) => Frame::text(s),
            Data::Binary(b) => Frame::binary(b),
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

    #[test]
    fn a_message_sent_on_as_it_is_shares_the_frame_it_came_in() {
        let payload = vec![5u8; 6000];
        let built = Bytes::from(ringcast_codec::server_frame(OpCode::Binary, &payload).to_vec());
        let msg = Message::framed(Data::Binary(&built[4..]), Some(&built));
        assert_eq!(msg, Message::binary(&payload), "equal by data");
        let f = Frame::from(msg);
        assert_eq!(f.0.as_ptr(), built.as_ptr(), "shared, not copied");
        // Without a frame (a small message): encoded anew, same bytes.
        let g = Frame::from(Message::binary(&payload));
        assert_ne!(g.0.as_ptr(), built.as_ptr());
        assert_eq!(g, f);
        assert_eq!(Message::text("hi").as_text(), Some("hi"));
        assert_eq!(Message::binary(b"hi").as_text(), None);
    }
}
