//! Sans-IO codec for RFC 6455 WebSockets.
//!
//! The crate never reads a socket, spawns a thread or reads a clock: callers
//! hand it bytes (and, for the close deadline, an [`std::time::Instant`]) and
//! get back parsed values and bytes to write.
//!
//! Everything public is re-exported here, in one list, grouped by concern:
//!
//! - **Handshake** (§4): [`RequestParser`] → [`Request`] →
//!   [`Request::validate_upgrade`] → [`response_101`] or [`error_response`];
//!   [`ClientHandshake`] for the client role.
//! - **Extensions** (§9.1, RFC 7692 §7): [`parse_extensions`] (or
//!   [`Request::extension_offers`]) → [`ExtensionOffer`]s →
//!   [`DeflateConfig::negotiate`] → [`DeflateNegotiation`]: the
//!   permessage-deflate [`DeflateParams`] in force and the response value.
//! - **Receiving** (§5.4–§5.6): [`Decoder`] turns bytes into [`Message`]s or a
//!   [`ProtocolError`] carrying the close code.
//! - **Sending** (§5.2): unmasked server frames as `Bytes`
//!   ([`server_frame`], [`server_header`], [`fragments`], …), masked client
//!   frames ([`encode_client_frame`] with keys from [`MaskGen`]).
//! - **Frame headers**: [`FrameHeader`] reads the header of an encoded
//!   frame, so no caller has to pick bits apart itself.
//! - **Closing** (§5.5.1, §7): [`codes`], [`CloseState`].
//! - **Buffer hooks**: [`BufferPool`] and [`Lend`] let a server recycle or
//!   lend the buffers the decoder works in; the defaults allocate.
//!
//! The modules behind the list are private, so the list is the API.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod close;
mod extension;
mod frame;
mod handshake;
mod mask;
mod message;
mod utf8;

// Errors, each with the close code or HTTP status to answer with.
pub use extension::ExtensionError;
pub use handshake::HandshakeError;
pub use message::ProtocolError;

// Opening handshake, server role.
pub use handshake::{
    accept_key, error_response, http_response, response_101, Request, RequestParser,
    MAX_HEADER_BYTES_DEFAULT,
};
// Opening handshake, client role.
pub use handshake::ClientHandshake;

// Extensions: parsing offers, negotiating permessage-deflate (no
// compression yet).
pub use extension::{
    parse_extensions, DeflateConfig, DeflateNegotiation, DeflateParams, ExtensionOffer,
    ExtensionParam, PERMESSAGE_DEFLATE,
};

// Receiving: the incremental decoder and what it hands out.
pub use message::{Decoder, DecoderConfig, Message, MAX_MESSAGE_SIZE_DEFAULT};

// Frame headers and opcodes.
pub use frame::{encode_header, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};

// Sending, server role: unmasked frames as shareable `Bytes`.
pub use frame::{
    close_frame, fragments, pong_frame, server_frame, server_frame_into, server_frame_len,
    server_header,
};
// Sending, client role: masked frames.
pub use frame::{close_payload, encode_client_frame, MaskGen};

// Closing.
pub use close::{codes, is_valid_wire_code, CloseAction, CloseFrame, CloseState};

// Buffer hooks: where the decoder's buffers come from and where whole
// frames may be lent out of the input.
pub use message::{BufferPool, Lend, NoLend, NoPool};

/// Building blocks exposed only for the benches (`benches/`), the fuzz
/// targets (`fuzz/`) and this crate's integration tests. Not a stable API.
///
/// Hidden from the docs rather than put behind a cargo feature: with the
/// workspace's feature unification, a feature the benches enable would be
/// on in every workspace build anyway, so it would fence nothing off and
/// only add a second configuration to build and test.
#[doc(hidden)]
pub mod internals {
    pub use crate::mask::{best_variant, unmask, variants};
    pub use crate::utf8::Utf8Stream;
}

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
