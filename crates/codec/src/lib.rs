//! ringcast-codec
