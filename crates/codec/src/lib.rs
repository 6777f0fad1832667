//! Sans-IO codec for RFC 6455 WebSockets.
//!
//! The crate never reads a socket, spawns a thread or reads a clock: callers
//! hand it bytes (and, for the close deadline, an [`std::time::Instant`]) and
//! get back parsed values and bytes to write.
//!
//! One module per concern, named after the RFC's vocabulary:
//!
//! - [`handshake`]: the opening HTTP/1.1 upgrade (server and client roles).
//! - [`frame`]: frame headers, encoding, fragmentation, client masking keys.
//! - [`mask`]: in-place (un)masking with portable and SIMD variants.
//! - [`utf8`]: UTF-8 validation of text that arrives in pieces.
//! - [`message`]: the incremental frame parser and message assembly.
//! - [`close`]: close codes, close payload parsing, the close handshake.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;

pub use close::{codes, is_valid_wire_code, CloseAction, CloseFrame, CloseState};
pub use frame::{
    close_frame, encode_client_frame, encode_header, fragments, pong_frame, server_frame,
    server_frame_into, server_frame_len, server_header, FrameHeader, MaskGen, OpCode,
    MAX_HEADER_LEN,
};
pub use handshake::{
    accept_key, error_response, http_response, response_101, ClientHandshake, HandshakeError,
    Request, RequestParser, MAX_HEADER_BYTES_DEFAULT,
};
pub use mask::unmask;
pub use message::{
    BufferPool, Decoder, DecoderConfig, Lend, Message, NoLend, NoPool, ProtocolError,
};
pub use utf8::Utf8Stream;

/// Which end of the connection this codec speaks for.
///
/// It decides the masking rule (RFC 6455 §5.1): a client masks every frame
/// it sends, a server never does, and each rejects frames that break this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts connections: expects masked frames, sends unmasked ones.
    Server,
    /// Opens connections: expects unmasked frames, sends masked ones.
    Client,
}
