-- Decides one or more rate-limit descriptors in one atomic call (crate ratelimit, redis.rs).
-- KEYS[i]  the state of descriptor i, then the owners' key indexes; in Cluster mode all
--          keys share one hash tag.
-- ARGV[1]  a call id, unique across servers, that makes sorted-set members unique.
-- ARGV[2]  the most live keys one owner's index may list.
-- ARGV[3 + 6 * (i - 1) ...]  algorithm code (l c b g f), limit, window in us, burst, cost,
--          and the position in KEYS of the index of the descriptor's owner (0: no index).
-- Returns {all_allowed, then per descriptor: allowed, remaining, reset_after_us, retry_after_us},
-- or {2, i} when descriptor i needs a new key and its owner's index is full.
-- Nothing is written unless every descriptor is allowed and every new key has room.
-- An index is a sorted set of its owner's state keys scored by their expiry in ms.
-- Times come from the Redis clock.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = math.floor
local function cdiv(a, b) return floor((a + b - 1) / b) end
local function num(x) return string.format('%.0f', x) end
local function ms(us) return cdiv(us, 1000) + 1 end
local now_ms = floor(now / 1000)

local states = {}
local order = {}

local function load(key, alg, w, limit)
  local s = { alg = alg, w = w, limit = limit, dirty = false }
  if alg == 'l' then
    -- Trim before counting: an entry at ts covers [ts, ts + w).
    redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now - w))
    s.n = redis.call('ZCARD', key)
    s.add = 0
    -- Redis deletes a sorted set whose last member goes.
    s.new = s.n == 0
  elseif alg == 'b' or alg == 'g' then
    local v = redis.call('HMGET', key, 't', 'd', 'w')
    s.new = not v[1]
    s.t = tonumber(v[1]) or now
    s.d = tonumber(v[2]) or 0
    local ow = tonumber(v[3]) or w
    if ow ~= w then s.d = cdiv(s.d, ow) * w end
  else
    local v = redis.call('HMGET', key, 'i', 'c', 'p', 'w')
    s.new = not v[1]
    s.i = tonumber(v[1]) or 0
    s.c = tonumber(v[2]) or 0
    s.p = tonumber(v[3]) or 0
    if (tonumber(v[4]) or w) ~= w then s.i, s.c, s.p = 0, 0, 0 end
  end
  return s
end

local function log_newest(key, s)
  if s.add > 0 then return now end
  local r = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if r[2] then return tonumber(r[2]) end
  return nil
end

local function decide_log(key, s, limit, w, cost)
  local used = s.n + s.add
  if used + cost <= limit then
    if cost > 0 then s.add = s.add + cost; s.dirty = true end
    local newest = log_newest(key, s)
    local reset = 0
    if newest then reset = math.max(newest + w - now, 0) end
    return 1, limit - used - cost, reset, 0
  end
  local newest = log_newest(key, s)
  local reset = 0
  if newest then reset = math.max(newest + w - now, 0) end
  local need = used + cost - limit
  local retry = w
  if need <= s.n then
    local r = redis.call('ZRANGE', key, need - 1, need - 1, 'WITHSCORES')
    retry = math.max(tonumber(r[2]) + w - now, 0)
  end
  return 0, math.max(limit - used, 0), reset, retry
end

local function decide_bucket(s, limit, w, burst, cost)
  local full = (limit + burst) * w
  local elapsed = now - s.t
  if elapsed < 0 then elapsed = 0 end
  if elapsed >= cdiv(s.d, limit) then s.d = 0 else s.d = s.d - elapsed * limit end
  if s.d > full then s.d = full end
  if now > s.t then s.t = now end
  local allowed, retry = 0, 0
  if s.d + cost * w <= full then
    allowed = 1
    if cost > 0 then s.d = s.d + cost * w; s.dirty = true end
  else
    retry = cdiv(s.d + cost * w - full, limit)
  end
  return allowed, floor((full - s.d) / w), cdiv(s.d, limit), retry
end

local function roll(s, w)
  local idx = floor(now / w)
  if idx == s.i + 1 then s.p = s.c; s.c = 0; s.i = idx
  elseif idx > s.i then s.p = 0; s.c = 0; s.i = idx end
  return idx
end

local function decide_fixed(s, limit, w, cost)
  local idx = roll(s, w)
  local finish = (idx + 1) * w - now
  if s.c + cost <= limit then
    if cost > 0 then s.c = s.c + cost; s.dirty = true end
    local reset = 0
    if s.c > 0 then reset = finish end
    return 1, limit - s.c, reset, 0
  end
  return 0, math.max(limit - s.c, 0), finish, finish
end

local function decide_counter(s, limit, w, cost)
  local idx = roll(s, w)
  local elapsed = now - idx * w
  local cap = limit * w
  local est = s.p * (w - elapsed) + s.c * w
  local allowed = 0
  if est + cost * w <= cap then
    allowed = 1
    if cost > 0 then s.c = s.c + cost; s.dirty = true end
  end
  est = s.p * (w - elapsed) + s.c * w
  local remaining = floor(math.max(cap - est, 0) / w)
  local reset = 0
  if s.c > 0 then reset = (idx + 2) * w - now elseif s.p > 0 then reset = (idx + 1) * w - now end
  if allowed == 1 then return 1, remaining, reset, 0 end
  local to_next = w - elapsed
  local retry
  if s.c + cost <= limit then
    retry = math.max(to_next - floor((limit - s.c - cost) * w / math.max(s.p, 1)), 0)
  else
    retry = to_next + math.max(w - floor(math.max(limit - cost, 0) * w / math.max(s.c, 1)), 0)
  end
  return 0, remaining, reset, retry
end

local out = { 1 }
for i = 1, (#ARGV - 2) / 6 do
  local key = KEYS[i]
  local b = 3 + 6 * (i - 1)
  local alg = ARGV[b]
  local limit = tonumber(ARGV[b + 1])
  local w = tonumber(ARGV[b + 2])
  local burst = tonumber(ARGV[b + 3])
  local cost = tonumber(ARGV[b + 4])
  local s = states[key]
  if not s then
    s = load(key, alg, w, limit)
    s.at = i
    s.index = tonumber(ARGV[b + 5])
    states[key] = s
    order[#order + 1] = key
  end
  local a, rem, reset, retry
  if alg == 'l' then a, rem, reset, retry = decide_log(key, s, limit, w, cost)
  elseif alg == 'b' or alg == 'g' then a, rem, reset, retry = decide_bucket(s, limit, w, burst, cost)
  elseif alg == 'f' then a, rem, reset, retry = decide_fixed(s, limit, w, cost)
  else a, rem, reset, retry = decide_counter(s, limit, w, cost) end
  if a == 0 then out[1] = 0 end
  out[#out + 1] = a
  out[#out + 1] = rem
  out[#out + 1] = reset
  out[#out + 1] = retry
end

if out[1] == 1 then
  -- Room for every new key first, so that a refusal writes nothing. Only new keys count
  -- the index: an owner's existing keys are decided whatever its index holds.
  local quota = tonumber(ARGV[2])
  local held = {}
  for k = 1, #order do
    local key = order[k]
    local s = states[key]
    if s.dirty and s.new and s.index > 0 then
      local index = KEYS[s.index]
      if not held[index] then
        redis.call('ZREMRANGEBYSCORE', index, '-inf', num(now_ms))
        held[index] = redis.call('ZCARD', index)
      end
      -- A state that expired a moment before its listing needs no more room.
      if not redis.call('ZSCORE', index, key) then
        if held[index] >= quota then return { 2, s.at } end
        held[index] = held[index] + 1
      end
    end
  end
end

-- Lists a written key in its owner's index until its state expires, and keeps the index
-- itself until its last listing passes.
local function list(s, key, ttl)
  if s.index == 0 then return end
  local index = KEYS[s.index]
  local at = now_ms + ttl
  redis.call('ZADD', index, num(at), key)
  -- PTTL is -1 for a set that ZADD just created. Compared here rather than with
  -- PEXPIREAT's NX and GT, which older Redis versions refuse.
  local left = redis.call('PTTL', index)
  if left < 0 or now_ms + left < at then
    redis.call('PEXPIREAT', index, num(at))
  end
end

if out[1] == 1 then
  local id = ARGV[1]
  for k = 1, #order do
    local key = order[k]
    local s = states[key]
    if s.dirty then
      local ttl
      if s.alg == 'l' then
        -- One member per unit of cost; the call id keeps members unique across calls.
        local args = {}
        for j = 1, s.add do
          args[#args + 1] = num(now)
          args[#args + 1] = id .. ':' .. k .. ':' .. j
          if #args >= 1000 then redis.call('ZADD', key, unpack(args)); args = {} end
        end
        if #args > 0 then redis.call('ZADD', key, unpack(args)) end
        ttl = ms(s.w)
      elseif s.alg == 'b' or s.alg == 'g' then
        redis.call('HSET', key, 't', num(s.t), 'd', num(s.d), 'w', num(s.w))
        ttl = ms(math.max(cdiv(s.d, s.limit), 1))
      else
        redis.call('HSET', key, 'i', num(s.i), 'c', num(s.c), 'p', num(s.p), 'w', num(s.w))
        local span = 1
        if s.alg == 'c' then span = 2 end
        ttl = ms((s.i + span) * s.w - now)
      end
      redis.call('PEXPIRE', key, ttl)
      list(s, key, ttl)
    end
  end
end
return out
