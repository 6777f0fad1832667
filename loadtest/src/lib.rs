//! `ringcast-loadtest`: a WebSocket load generator built on the ringcast
//! codec's client role, meant to cost the machine less CPU than the server
//! it loads.
//!
//! One thread drives every connection of a process through a nonblocking
//! edge-triggered epoll loop ([`engine`]). Frames are encoded and masked once
//! per connection and then patched in place (a counter and a timestamp), so
//! the steady state allocates nothing per message. Scenarios: [`echo`],
//! [`broadcast`], [`connect`] and [`idle`]; [`report`] turns their JSON
//! results into markdown tables and SVG charts.

pub mod broadcast;
pub mod clock;
pub mod connect;
pub mod echo;
pub mod engine;
pub mod flame;
pub mod idle;
pub mod out;
pub mod payload;
pub mod report;
pub mod run;
pub mod stats;
pub mod sys;
pub mod target;
pub mod worker;
