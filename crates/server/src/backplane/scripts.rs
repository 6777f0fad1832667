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
//! - `p:presence:<node>:<room>` hash conn -> payload of its join, for that node's
//!   members of the room (exists exactly while the node has a count in the room; the
//!   node id has no `:`, so the name is unambiguous whatever the room name)
//! - `p:seq:<room>`     the room's event counter (INCR per room event); deleted with
//!   the last member, like a single node forgets an empty room
//! - `p:node_seq`       counter for node id allocation
//! - channels `p:topic:<topic>` and `p:node:<node>`
//!
//! The cluster-wide count of a room = sum of `p:members:<room>` fields whose node has a
//! live `p:alive:<node>` key; its members = the `p:presence:<node>:<room>` hashes of
//! those nodes.
//!
//! Order: every script that changes a room's counts or presence also takes the room's
//! next `seq` for the event it publishes (MEMBER, and SYNC/REAP via `publish_count`), in
//! the same atomic step. The query scripts read counts, presence and the current `seq`
//! in one atomic step too, so an answer is the room's state right after event `seq`:
//! it contains every join/leave numbered up to `seq` and none after. A node whose
//! liveness key lapsed is left out of answers at once, as it is left out of the count
//! of every event after the lapse; its own `Count` event follows when it is reaped.

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
local function presence_key(p, node, room)
  return p .. ':presence:' .. node .. ':' .. room
end
local function seq_of(p, room)
  return tonumber(redis.call('GET', p .. ':seq:' .. room) or '0')
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

/// Sets this node's absolute local count for a room, updates the member's presence
/// entry and publishes the join/leave event with the cluster-wide total and the room's
/// next sequence number, in one atomic step.
/// ARGV: prefix, node, token, room, local count, header head, payload, presence op
/// (`s` store the payload for conn, `d` delete conn, `-` neither), conn.
/// Returns the total (0 and nothing published when the room is now empty everywhere), or
/// -1 when our liveness key is not ours (expired/reaped): the caller must resync.
pub(crate) const MEMBER: &str = concat!(
    helpers!(),
    r#"
local p, node, room = ARGV[1], ARGV[2], ARGV[4]
if redis.call('GET', p .. ':alive:' .. node) ~= ARGV[3] then return -1 end
local n = tonumber(ARGV[5])
local mk, rk = p .. ':members:' .. room, p .. ':rooms:' .. node
local pk = presence_key(p, node, room)
if n > 0 then
  redis.call('HSET', mk, node, n)
  redis.call('SADD', rk, room)
  if ARGV[8] == 's' then
    redis.call('HSET', pk, ARGV[9], ARGV[7])
  elseif ARGV[8] == 'd' then
    redis.call('HDEL', pk, ARGV[9])
  end
else
  redis.call('HDEL', mk, node)
  redis.call('SREM', rk, room)
  redis.call('DEL', pk)
end
if room_gone(p, room) then return 0 end
local t = alive_total(p, room)
local s = next_seq(p, room)
redis.call('PUBLISH', p .. ':topic:' .. room, ARGV[6] .. fmt(t) .. ' ' .. fmt(s) .. '\n' .. ARGV[7])
return t
"#
);

/// Claims the node id for this instance and replaces all of the node's counts and
/// presence entries with the given ones (start, reconnect, after our liveness lapsed),
/// or removes them all (retire). Publishes a count update to every room whose count may
/// have changed.
/// ARGV: prefix, node, token, ttl ms, retire (0/1), then per room: room, count, k, and
/// k (conn, payload) pairs.
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
  redis.call('DEL', presence_key(p, node, room))
  touch(room)
end
redis.call('DEL', rk)
if ARGV[5] == '1' then
  redis.call('DEL', alive)
  redis.call('SREM', p .. ':nodes', node)
else
  redis.call('SET', alive, token, 'PX', ARGV[4])
  redis.call('SADD', p .. ':nodes', node)
  local i = 6
  while i + 2 <= #ARGV do
    local room, n, k = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if n > 0 then
      redis.call('HSET', p .. ':members:' .. room, node, n)
      redis.call('SADD', rk, room)
      local pk = presence_key(p, node, room)
      for j = i + 3, i + 1 + 2 * k, 2 do
        redis.call('HSET', pk, ARGV[j], ARGV[j + 1])
      end
    end
    touch(room)
    i = i + 3 + 2 * k
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

/// Removes the counts and presence entries of every registered node whose liveness key
/// is gone and publishes the new totals to the affected rooms. Any live node may run it;
/// it is idempotent.
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
      redis.call('DEL', presence_key(p, node, room))
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

/// The members of a room on live nodes with their payloads, and the room's current seq.
/// ARGV: prefix, room. Returns seq, then node, conn, payload per member.
pub(crate) const QUERY_MEMBERS: &str = concat!(
    helpers!(),
    r#"
local p, room = ARGV[1], ARGV[2]
local out = {seq_of(p, room)}
local f = redis.call('HGETALL', p .. ':members:' .. room)
for i = 1, #f, 2 do
  local node = f[i]
  if redis.call('EXISTS', p .. ':alive:' .. node) == 1 then
    local m = redis.call('HGETALL', presence_key(p, node, room))
    for j = 1, #m, 2 do
      out[#out + 1] = node
      out[#out + 1] = m[j]
      out[#out + 1] = m[j + 1]
    end
  end
end
return out
"#
);

/// The cluster-wide count of a room and its current seq. ARGV: prefix, room.
/// Returns count, seq.
pub(crate) const QUERY_COUNT: &str = concat!(
    helpers!(),
    r#"
return {alive_total(ARGV[1], ARGV[2]), seq_of(ARGV[1], ARGV[2])}
"#
);

/// Rooms with members on live nodes whose name starts with a prefix, found through the
/// live nodes' `p:rooms:<node>` sets (no key scan): O(rooms of live nodes).
/// ARGV: prefix, room name prefix. Returns room, count, seq per room (unordered).
pub(crate) const QUERY_ROOMS: &str = concat!(
    helpers!(),
    r#"
local p, pre = ARGV[1], ARGV[2]
local seen, out = {}, {}
for _, node in ipairs(redis.call('SMEMBERS', p .. ':nodes')) do
  if redis.call('EXISTS', p .. ':alive:' .. node) == 1 then
    for _, room in ipairs(redis.call('SMEMBERS', p .. ':rooms:' .. node)) do
      if not seen[room] and string.sub(room, 1, #pre) == pre then
        seen[room] = true
        out[#out + 1] = room
        out[#out + 1] = alive_total(p, room)
        out[#out + 1] = seq_of(p, room)
      end
    end
  end
end
return out
"#
);
