//! ringcast-reactor
