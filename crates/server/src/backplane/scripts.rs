//! Lua scripts run with EVAL. Each runs atomically in Redis, which is what keeps a
//! member count and the position of its join/leave event in the room's message order in
//! agreement. Keys are built from the prefix inside the scripts (standalone Redis only; a
//! Redis Cluster would need every key passed in KEYS and one hash slot).
//!
//! Data model (`p` = prefix):
//! - `p:alive:<node>`   string, this instance's random token, PX = node ttl (liveness)
//! - `p:nodes`          set of node ids that registered member counts
//! - `p:rooms:<node>`   set of rooms where that node has a count
//! - `p:members:<room>` hash node id -> that node's local member count
//! - `p:seq:<room>`     the room's event counter (INCR per room event); deleted with
//!   the last member, like a single node forgets an empty room
//! - `p:node_seq`       counter for node id allocation
//! - channels `p:topic:<topic>` and `p:node:<node>`
//!
//! The cluster-wide count of a room = sum of `p:members:<room>` fields whose node has a
//! live `p:alive:<node>` key.

/// Shared helpers, prepended to the scripts that need them.
macro_rules! helpers {
    () => {
        r#"
local function fmt(n) return string.format('%d', n) end
local function alive_total(p, room)
  local t = 0
  local f = redis.call('HGETALL', p .. ':members:' .. room)
  for i = 1, #f, 2 do
    if redis.call('EXISTS', p .. ':alive:' .. f[i]) == 1 then
      t = t + tonumber(f[i + 1])
    end
  end
  return t
end
local function room_gone(p, room)
  if redis.call('EXISTS', p .. ':members:' .. room) == 0 then
    redis.call('DEL', p .. ':seq:' .. room)
    return true
  end
  return false
end
local function next_seq(p, room)
  return redis.call('INCR', p .. ':seq:' .. room)
end
local function publish_count(p, room)
  if room_gone(p, room) then return end
  local t = alive_total(p, room)
  local s = next_seq(p, room)
  redis.call('PUBLISH', p .. ':topic:' .. room, 'rc1 c ' .. fmt(t) .. ' ' .. fmt(s) .. '\n')
end
"#
    };
}

/// Publishes a room message with the room's next sequence number. Nothing is published
/// (returns -2) when no node has members in the room.
/// ARGV: prefix, room, origin field, payload. Returns the sequence number.
pub(crate) const ROOM_MESSAGE: &str = r#"
local p, room = ARGV[1], ARGV[2]
if redis.call('EXISTS', p .. ':members:' .. room) == 0 then return -2 end
local s = redis.call('INCR', p .. ':seq:' .. room)
redis.call('PUBLISH', p .. ':topic:' .. room,
  'rc1 m ' .. ARGV[3] .. ' ' .. string.format('%d', s) .. '\n' .. ARGV[4])
return s
"#;

/// Sets this node's absolute local count for a room and publishes the join/leave event
/// with the cluster-wide total and the room's next sequence number, in one atomic step.
/// ARGV: prefix, node, token, room, local count, header head, payload.
/// Returns the total (0 and nothing published when the room is now empty everywhere), or
/// -1 when our liveness key is not ours (expired/reaped): the caller must resync.
pub(crate) const MEMBER: &str = concat!(
    helpers!(),
    r#"
local p, node, room = ARGV[1], ARGV[2], ARGV[4]
if redis.call('GET', p .. ':alive:' .. node) ~= ARGV[3] then return -1 end
local n = tonumber(ARGV[5])
local mk, rk = p .. ':members:' .. room, p .. ':rooms:' .. node
if n > 0 then
  redis.call('HSET', mk, node, n)
  redis.call('SADD', rk, room)
else
  redis.call('HDEL', mk, node)
  redis.call('SREM', rk, room)
end
if room_gone(p, room) then return 0 end
local t = alive_total(p, room)
local s = next_seq(p, room)
redis.call('PUBLISH', p .. ':topic:' .. room, ARGV[6] .. fmt(t) .. ' ' .. fmt(s) .. '\n' .. ARGV[7])
return t
"#
);

/// Claims the node id for this instance and replaces all of the node's counts with the
/// given ones (start, reconnect, after our liveness lapsed), or removes them all (retire).
/// Publishes a count update to every room whose count may have changed.
/// ARGV: prefix, node, token, ttl ms, retire (0/1), then room, count pairs.
/// Returns -1 if a different live instance holds the node id, else the rooms touched.
pub(crate) const SYNC: &str = concat!(
    helpers!(),
    r#"
local p, node, token = ARGV[1], ARGV[2], ARGV[3]
local alive = p .. ':alive:' .. node
local cur = redis.call('GET', alive)
if cur and cur ~= token then return -1 end
local rk = p .. ':rooms:' .. node
local seen, order = {}, {}
local function touch(room)
  if not seen[room] then
    seen[room] = true
    order[#order + 1] = room
  end
end
for _, room in ipairs(redis.call('SMEMBERS', rk)) do
  redis.call('HDEL', p .. ':members:' .. room, node)
  touch(room)
end
redis.call('DEL', rk)
if ARGV[5] == '1' then
  redis.call('DEL', alive)
  redis.call('SREM', p .. ':nodes', node)
else
  redis.call('SET', alive, token, 'PX', ARGV[4])
  redis.call('SADD', p .. ':nodes', node)
  for i = 6, #ARGV - 1, 2 do
    local room, n = ARGV[i], tonumber(ARGV[i + 1])
    if n > 0 then
      redis.call('HSET', p .. ':members:' .. room, node, n)
      redis.call('SADD', rk, room)
    end
    touch(room)
  end
end
for _, room in ipairs(order) do publish_count(p, room) end
return #order
"#
);

/// Refreshes the liveness key. ARGV: prefix, node, token, ttl ms.
/// Returns 1 (refreshed), 0 (it had lapsed: resync needed), -1 (another instance has it).
pub(crate) const HEARTBEAT: &str = r#"
local alive = ARGV[1] .. ':alive:' .. ARGV[2]
local cur = redis.call('GET', alive)
if cur and cur ~= ARGV[3] then return -1 end
redis.call('SET', alive, ARGV[3], 'PX', ARGV[4])
if cur then return 1 end
return 0
"#;

/// Removes the counts of every registered node whose liveness key is gone and publishes
/// the new totals to the affected rooms. Any live node may run it; it is idempotent.
/// ARGV: prefix. Returns the number of nodes reaped.
pub(crate) const REAP: &str = concat!(
    helpers!(),
    r#"
local p = ARGV[1]
local reaped = 0
for _, node in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if redis.call('EXISTS', p .. ':alive:' .. node) == 0 then
    local rk = p .. ':rooms:' .. node
    for _, room in ipairs(redis.call('SMEMBERS', rk)) do
      redis.call('HDEL', p .. ':members:' .. room, node)
      publish_count(p, room)
    end
    redis.call('DEL', rk)
    redis.call('SREM', p .. ':nodes', node)
    reaped = reaped + 1
  end
end
return reaped
"#
);
