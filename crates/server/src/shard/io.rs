//! What the server logic needs from the reactor, and the mail between
//! shards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringcast_reactor::{Conn, TimerId};

use crate::api::Frame;
use crate::channel::ChannelMail;
use crate::id::ConnId;

/// Messages between shards (and from [`crate::ServerHandle`] and the
/// backplane thread).
#[derive(Debug)]
pub(crate) enum Mail {
    Push {
        to: ConnId,
        frame: Frame,
    },
    Close {
        to: ConnId,
        code: u16,
        reason: Box<str>,
    },
    Broadcast {
        frame: Frame,
    },
    Subscribe {
        conn: ConnId,
        topic: Box<str>,
        presence: Option<Bytes>,
    },
    Unsubscribe {
        conn: ConnId,
        topic: Box<str>,
    },
    /// For the app's `on_notice` of connection `to`.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))] // used by cluster mode
    Notice {
        to: ConnId,
        text: Box<str>,
    },
    Channel(ChannelMail),
}

/// What the server logic needs from the reactor (object-safe, so the public
/// [`Ctx`](crate::Ctx) needs no reactor lifetimes).
pub(crate) trait Io {
    fn now(&self) -> Instant;
    fn send(&mut self, c: Conn, b: Bytes) -> bool;
    fn queued(&self, c: Conn) -> usize;
    fn close(&mut self, c: Conn);
    fn abort(&mut self, c: Conn);
    fn shutdown_write(&mut self, c: Conn);
    fn mail(&mut self, shard: usize, m: Mail) -> Result<(), Mail>;
    fn draining(&self) -> bool;
    fn timer(&mut self, after: Duration, data: u64) -> TimerId;
    fn reset_timer(&mut self, id: TimerId, after: Duration) -> TimerId;
}

impl Io for ringcast_reactor::Ctx<'_, Mail> {
    fn now(&self) -> Instant {
        ringcast_reactor::Ctx::now(self)
    }
    fn send(&mut self, c: Conn, b: Bytes) -> bool {
        ringcast_reactor::Ctx::send(self, c, b)
    }
    fn queued(&self, c: Conn) -> usize {
        self.queued_bytes(c)
    }
    fn close(&mut self, c: Conn) {
        ringcast_reactor::Ctx::close(self, c)
    }
    fn abort(&mut self, c: Conn) {
        ringcast_reactor::Ctx::abort(self, c)
    }
    fn shutdown_write(&mut self, c: Conn) {
        ringcast_reactor::Ctx::shutdown_write(self, c)
    }
    fn mail(&mut self, shard: usize, m: Mail) -> Result<(), Mail> {
        ringcast_reactor::Ctx::mail(self, shard, m)
    }
    fn draining(&self) -> bool {
        self.is_draining()
    }
    fn timer(&mut self, after: Duration, data: u64) -> TimerId {
        ringcast_reactor::Ctx::timer(self, after, data)
    }
    fn reset_timer(&mut self, id: TimerId, after: Duration) -> TimerId {
        ringcast_reactor::Ctx::reset_timer(self, id, after)
    }
}

/// From a thread that is no shard (a user's, the backplane's): hands `m`
/// to `shard`, waiting while its mailbox is full, for at most `wait` or
/// until `give_up()`. There is no outbox there, so waiting a little is the
/// alternative to losing the message; false: it was not taken.
pub(crate) fn mail_waiting(
    reactor: &ringcast_reactor::Handle<Mail>,
    shard: usize,
    mut m: Mail,
    wait: Duration,
    pause: Duration,
    give_up: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match reactor.mail(shard, m) {
            Ok(()) => return true,
            Err(back) if !give_up() && Instant::now() < deadline => {
                m = back;
                std::thread::sleep(pause);
            }
            Err(_) => return false,
        }
    }
}

/// Mail the reactor could not take (its outbox was full), per target, so
/// FIFO order per target holds even then.
pub(crate) struct Outbox {
    from: usize,
    queues: Vec<VecDeque<Mail>>,
    len: usize,
}

impl Outbox {
    pub fn new(from: usize, shards: usize) -> Outbox {
        Outbox {
            from,
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            len: 0,
        }
    }

    /// Sends mail to another shard, keeping FIFO order per target even when
    /// the reactor's mailbox and outbox are full.
    pub fn mail(&mut self, io: &mut dyn Io, shard: usize, m: Mail) {
        let Some(q) = self.queues.get_mut(shard) else {
            return;
        };
        if !q.is_empty() {
            q.push_back(m);
            self.len += 1;
            return;
        }
        if let Err(m) = io.mail(shard, m) {
            if self.len == 0 {
                tracing::warn!(
                    from = self.from,
                    to = shard,
                    "shard mailbox and outbox full; queueing mail locally"
                );
            }
            self.queues[shard].push_back(m);
            self.len += 1;
        }
    }

    /// Hands on what waits, in order, as far as the mailboxes take it.
    pub fn retry(&mut self, io: &mut dyn Io) {
        if self.len == 0 {
            return;
        }
        for (shard, q) in self.queues.iter_mut().enumerate() {
            while let Some(m) = q.pop_front() {
                match io.mail(shard, m) {
                    Ok(()) => self.len -= 1,
                    Err(m) => {
                        q.push_front(m);
                        break;
                    }
                }
            }
        }
    }
}
