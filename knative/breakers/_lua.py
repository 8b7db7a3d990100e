"""Lua sources of the breaker's Redis scripts.

Every change of a breaker's state happens inside one of these scripts, so it is atomic with
the read that decided it: twenty processes reporting failures at once produce exactly one
transition, and a result stamped with an older generation is dropped in the same step that
checks it. The clock is Redis ``TIME`` (plus a test offset passed in ``ARGV``), never the
caller's clock. Each script touches only the two keys of one breaker, which share a hash tag,
so the scripts run unchanged on Redis Cluster.

Calling convention, shared by all scripts::

    KEYS[1]  state hash   <prefix>:{<key>}
    KEYS[2]  window hash  <prefix>:{<key>}:w
    ARGV[1]  clock offset in milliseconds (0 outside tests)
    ARGV[2]  pub/sub channel for transitions
    ARGV[3]  the breaker key (for messages)
    ARGV[4]  policy, "|"-separated: kind, size, min_calls, fail_thr, slow_thr, wait_ms,
             backoff, max_wait_ms, permitted, hp_max_ms, ttl_ms
    ARGV[5..] per script

A transition returns ``{'T', old, new, gen, at_ms, until_ms, reason, opens}``; no transition
returns ``{'N', state, gen, until_ms, now_ms}``. ``record`` returns ``{'A', n}`` (applied) or
``{'D', n}`` (dropped) when nothing moved; ``acquire`` prefixes ``{'P', gen}`` when it granted a
half-open permit.
"""

from __future__ import annotations

PRELUDE = r"""
if redis.replicate_commands then redis.replicate_commands() end
local K = KEYS[1]
local W = KEYS[2]
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000) + tonumber(ARGV[1])
local CH = ARGV[2]
local BKEY = ARGV[3]
local S = {}
do
  local f = {}
  for v in string.gmatch(ARGV[4], '[^|]+') do f[#f + 1] = v end
  S.kind = f[1]
  S.size = tonumber(f[2])
  S.min_calls = tonumber(f[3])
  S.fail_thr = tonumber(f[4])
  S.slow_thr = tonumber(f[5])
  S.wait = tonumber(f[6])
  S.backoff = tonumber(f[7])
  S.max_wait = tonumber(f[8])
  S.permitted = tonumber(f[9])
  S.hp_max = tonumber(f[10])
  S.ttl = tonumber(f[11])
end

local function fmt(n) return string.format('%d', n) end

local function load()
  local r = redis.call('HMGET', K, 'state', 'gen', 'since', 'until', 'opens',
                       'hp_acq', 'hp_n', 'hp_f', 'hp_s', 'reason')
  return {
    state = r[1] or 'closed', gen = tonumber(r[2] or '0'), since = tonumber(r[3] or '0'),
    untl = tonumber(r[4] or '0'), opens = tonumber(r[5] or '0'), hp_acq = tonumber(r[6] or '0'),
    hp_n = tonumber(r[7] or '0'), hp_f = tonumber(r[8] or '0'), hp_s = tonumber(r[9] or '0'),
    reason = r[10] or ''
  }
end

local function keep(state)
  -- A closed breaker with nothing to say may expire; any other state persists.
  if state == 'closed' and S.ttl > 0 then
    redis.call('PEXPIRE', K, S.ttl)
    redis.call('PEXPIRE', W, S.ttl)
  else
    redis.call('PERSIST', K)
  end
end

local function move(h, new, reason)
  local old = h.state
  local gen = h.gen + 1
  local opens = h.opens
  local untl = 0
  if new == 'open' then
    opens = opens + 1
    local w = S.wait * (S.backoff ^ (opens - 1))
    if w > S.max_wait then w = S.max_wait end
    untl = now + math.floor(w)
  elseif new == 'closed' then
    opens = 0
  end
  redis.call('HSET', K, 'state', new, 'gen', fmt(gen), 'since', fmt(now), 'until', fmt(untl),
             'opens', fmt(opens), 'hp_acq', '0', 'hp_n', '0', 'hp_f', '0', 'hp_s', '0',
             'reason', reason)
  redis.call('DEL', W)
  keep(new)
  redis.call('PUBLISH', CH, cjson.encode({
    key = BKEY, old = old, new = new, gen = fmt(gen), at = fmt(now), ['until'] = fmt(untl),
    reason = reason, opens = fmt(opens)
  }))
  return {'T', old, new, fmt(gen), fmt(now), fmt(untl), reason, fmt(opens)}
end

local function nothing(h)
  return {'N', h.state, fmt(h.gen), fmt(h.untl), fmt(now)}
end

local function is_fail(c) return c == 'f' or c == 'F' end
local function is_slow(c) return c == 'S' or c == 'F' end

-- Count-based window: a ring of the last S.size outcomes with running counters.
local function add_count(out)
  local r = redis.call('HMGET', W, 'i', 'n', 'f', 's')
  local i = tonumber(r[1] or '0')
  local n = tonumber(r[2] or '0')
  local f = tonumber(r[3] or '0')
  local s = tonumber(r[4] or '0')
  for j = 1, #out do
    local c = string.sub(out, j, j)
    local slot = fmt(i % S.size)
    if n >= S.size then
      local old = redis.call('HGET', W, slot)
      if is_fail(old) then f = f - 1 end
      if is_slow(old) then s = s - 1 end
    else
      n = n + 1
    end
    redis.call('HSET', W, slot, c)
    if is_fail(c) then f = f + 1 end
    if is_slow(c) then s = s + 1 end
    i = i + 1
  end
  redis.call('HSET', W, 'i', fmt(i), 'n', fmt(n), 'f', fmt(f), 's', fmt(s))
  return n, f, s
end

-- Time-based window: one bucket per second of Redis time, S.size buckets in a ring.
local function add_time(out)
  local sec = math.floor(now / 1000)
  local slot = fmt(sec % S.size)
  local r = redis.call('HMGET', W, 'e' .. slot, 'c' .. slot, 'f' .. slot, 's' .. slot)
  local c, f, s = 0, 0, 0
  if tonumber(r[1] or '-1') == sec then
    c = tonumber(r[2]); f = tonumber(r[3]); s = tonumber(r[4])
  end
  for j = 1, #out do
    local o = string.sub(out, j, j)
    c = c + 1
    if is_fail(o) then f = f + 1 end
    if is_slow(o) then s = s + 1 end
  end
  redis.call('HSET', W, 'e' .. slot, fmt(sec), 'c' .. slot, fmt(c), 'f' .. slot, fmt(f),
             's' .. slot, fmt(s))
  local all = redis.call('HGETALL', W)
  local t = {}
  for j = 1, #all, 2 do t[all[j]] = tonumber(all[j + 1]) end
  local n, nf, ns = 0, 0, 0
  for b = 0, S.size - 1 do
    local e = t['e' .. b]
    if e and e > sec - S.size then
      n = n + t['c' .. b]; nf = nf + t['f' .. b]; ns = ns + t['s' .. b]
    end
  end
  return n, nf, ns
end

local function pct(x) return string.format('%.0f%%', x * 100) end
"""

RECORD = r"""
-- ARGV[5] generation the calls were permitted under; ARGV[6] outcomes, one char each:
-- s ok, f failed, S ok but slow, F failed and slow.
local h = load()
local out = ARGV[6]
if h.gen ~= tonumber(ARGV[5]) then return {'D', fmt(#out)} end
if h.state == 'closed' then
  local n, f, s
  if S.kind == 'time' then n, f, s = add_time(out) else n, f, s = add_count(out) end
  keep('closed')
  if n >= S.min_calls and n > 0 then
    if f / n >= S.fail_thr then
      return move(h, 'open', 'failure rate ' .. pct(f / n) .. ' >= ' .. pct(S.fail_thr) ..
                  ' over ' .. fmt(n) .. ' calls')
    end
    if s / n >= S.slow_thr then
      return move(h, 'open', 'slow call rate ' .. pct(s / n) .. ' >= ' .. pct(S.slow_thr) ..
                  ' over ' .. fmt(n) .. ' calls')
    end
  end
  return {'A', fmt(#out)}
elseif h.state == 'half_open' then
  local n, f, s = h.hp_n, h.hp_f, h.hp_s
  for j = 1, #out do
    local c = string.sub(out, j, j)
    n = n + 1
    if is_fail(c) then f = f + 1 end
    if is_slow(c) then s = s + 1 end
  end
  redis.call('HSET', K, 'hp_n', fmt(n), 'hp_f', fmt(f), 'hp_s', fmt(s))
  -- Enough failed (or slow) probes to re-open whatever the rest report: do not wait for them.
  if f / S.permitted >= S.fail_thr then
    return move(h, 'open', 'half-open probes failed: ' .. fmt(f) .. ' of ' .. fmt(n))
  end
  if s / S.permitted >= S.slow_thr then
    return move(h, 'open', 'half-open probes slow: ' .. fmt(s) .. ' of ' .. fmt(n))
  end
  if n >= S.permitted then
    if f / n >= S.fail_thr then
      return move(h, 'open', 'half-open probes failed: ' .. fmt(f) .. ' of ' .. fmt(n))
    end
    if s / n >= S.slow_thr then
      return move(h, 'open', 'half-open probes slow: ' .. fmt(s) .. ' of ' .. fmt(n))
    end
    return move(h, 'closed', 'half-open probes succeeded: ' .. fmt(n - f) .. ' of ' .. fmt(n))
  end
  return {'A', fmt(#out)}
end
return {'D', fmt(#out)}
"""

ACQUIRE = r"""
-- A half-open permit. An open breaker whose wait has elapsed moves to half-open first.
local h = load()
local t = nil
if h.state == 'open' and now >= h.untl then
  t = move(h, 'half_open', 'wait in open elapsed')
  h = load()
end
local res
if h.state == 'half_open' and h.hp_acq < S.permitted then
  redis.call('HINCRBY', K, 'hp_acq', 1)
  res = {'P', fmt(h.gen)}
else
  res = {'X', fmt(h.gen)}
end
if t then
  for j = 1, #t do res[#res + 1] = t[j] end
else
  local n = nothing(h)
  for j = 1, #n do res[#res + 1] = n[j] end
end
return res
"""

TICK = r"""
-- Time-driven moves: open -> half-open when the wait elapsed; a half-open whose probes did
-- not all report within hp_max -> open again.
local h = load()
if h.state == 'open' and now >= h.untl then
  return move(h, 'half_open', 'wait in open elapsed')
end
if h.state == 'half_open' and S.hp_max > 0 and now - h.since >= S.hp_max then
  return move(h, 'open', 'half-open probes did not report within ' .. fmt(S.hp_max) .. ' ms')
end
return nothing(h)
"""

SET = r"""
-- ARGV[5] action, ARGV[6] reason; ARGV[7] expected generation or '' (act only if it matches).
local h = load()
local a = ARGV[5]
local reason = ARGV[6]
if ARGV[7] ~= '' and tonumber(ARGV[7]) ~= h.gen then return nothing(h) end
local st = h.state
if a == 'open' then
  if st == 'closed' or st == 'half_open' then return move(h, 'open', reason) end
elseif a == 'half_open' then
  if st == 'open' then return move(h, 'half_open', reason) end
elseif a == 'close' then
  if st == 'open' or st == 'half_open' then return move(h, 'closed', reason) end
elseif a == 'force_open' then
  if st ~= 'forced_open' then return move(h, 'forced_open', reason) end
elseif a == 'force_closed' then
  if st ~= 'forced_closed' then return move(h, 'forced_closed', reason) end
elseif a == 'disable' then
  if st ~= 'disabled' then return move(h, 'disabled', reason) end
elseif a == 'reset' then
  if st ~= 'closed' then return move(h, 'closed', reason) end
  redis.call('DEL', W)
  redis.call('HSET', K, 'opens', '0')
  keep('closed')
else
  return redis.error_reply('unknown breaker action ' .. a)
end
return nothing(h)
"""

SCRIPTS = {
    "record": PRELUDE + RECORD,
    "acquire": PRELUDE + ACQUIRE,
    "tick": PRELUDE + TICK,
    "set": PRELUDE + SET,
}
