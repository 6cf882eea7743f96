//! The Lua scripts that make multi-step decisions atomic on the server (each touches keys
//! of one hash slot only, so they run on Redis Cluster too). Expiry decisions read the
//! server's own clock (`TIME`), so replicas with skewed clocks agree; a publication's
//! fetch time is the fetching replica's, so that its integrity tag can cover it.

use std::sync::LazyLock;

use redis::Script;

/// Every script, for loading them ahead of the first caller.
pub(super) fn all() -> [&'static Script; 5] {
    [&TURN, &PUBLISH, &PUBLISH_FAILURE, &RELEASE, &REVOKE]
}

/// Decides a replica's fetch turn of one key set.
///
/// KEYS: published hash, turn key. ARGV: replica, known generation, max age (ms; a
/// publication younger than this is taken instead of fetching, 0: never), cooldown (ms).
/// Returns `{'adopt', generation, jwks, metadata, replica, at_ms, tag}`, `{'fetch'}`
/// (the turn is this replica's until the cooldown ends), or `{'held', turn value}`.
pub(super) static TURN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = redis.call('HMGET', KEYS[1], 'generation', 'jwks', 'metadata', 'replica', 'at_ms', 'tag')
local gen = tonumber(p[1] or '0') or 0
local at = tonumber(p[5] or '0') or 0
local known = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
local function adopt()
  return {'adopt', tostring(gen), p[2] or '', p[3] or '', p[4] or '', tostring(at), p[6] or ''}
end
if gen > known and max_age > 0 and now - at < max_age then
  return adopt()
end
if redis.call('SET', KEYS[2], 'fetching ' .. ARGV[1], 'NX', 'PX', ARGV[4]) then
  return {'fetch'}
end
if gen > known then
  return adopt()
end
return {'held', redis.call('GET', KEYS[2]) or ''}
",
    )
});

/// Publishes a fetched key set and announces it.
///
/// KEYS: published hash, turn key. ARGV: jwks, metadata (JSON or empty), replica,
/// channel, key set name, retention (ms), fetch time (ms, the replica's clock), integrity
/// tag (or empty). Returns the new generation.
pub(super) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local gen = redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'jwks', ARGV[1], 'metadata', ARGV[2], 'replica', ARGV[3], 'at_ms', ARGV[7], 'tag', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], 'done ' .. gen .. ' ' .. ARGV[3], 'XX', 'KEEPTTL')
redis.call('PUBLISH', ARGV[4], 'jwks ' .. gen .. ' ' .. ARGV[5])
return gen
",
    )
});

/// Records that the turn holder's fetch failed (while its turn lasts) and announces it.
///
/// KEYS: turn key. ARGV: replica, message, channel, key set name.
pub(super) static PUBLISH_FAILURE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], 'failed ' .. ARGV[1] .. ' ' .. ARGV[2], 'XX', 'KEEPTTL')
redis.call('PUBLISH', ARGV[3], 'failed 0 ' .. ARGV[4])
return 1
",
    )
});

/// Gives up a claim only if it is still this replica's.
///
/// KEYS: claim key. ARGV: replica.
pub(super) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
",
    )
});

/// Adds a revocation rule (keeping the later expiry of an existing one), drops expired
/// rules, bumps the sequence number and announces the rule.
///
/// KEYS: rule set, sequence. ARGV: rule (JSON), expiry (ms), most rules, channel.
/// Returns the new sequence number, or -1 when the set is full.
pub(super) static REVOKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not old and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return -1
end
if not old or tonumber(old) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], 'revoke ' .. seq .. ' ' .. ARGV[2] .. ' ' .. ARGV[1])
return seq
",
    )
});
