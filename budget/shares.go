package budget

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// shareEvery is how often an instance with viewers waiting tells the fleet
// which keys wait here, adds the slots it granted to the fleet's count, and
// reads each waiting key's use.
const shareEvery = 100 * time.Millisecond

// activeFor is how long a key counts as waiting after an instance last said
// so.
const activeFor = time.Second

// shares tracks, fleet-wide, which API keys have fetches waiting and how
// many slots each used in the last second, so that a key over its share
// (the rate over the keys waiting) can be served after the others,
// wherever its fetches queue.
type shares struct {
	rdb    Redis
	prefix string
	rate   int

	mu      sync.Mutex
	pending map[string]int64   // slots granted here, not yet counted in Redis
	overs   map[string]float64 // keys over their share at the latest look: their cap, per second
	next    time.Time          // no look before this
}

func newShares(rdb Redis, prefix string, rate int) *shares {
	return &shares{rdb: rdb, prefix: prefix, rate: rate, pending: map[string]int64{}, overs: map[string]float64{}}
}

// member is a key's name in Redis; the service's own fetches have none.
func member(key string) string {
	if key == "" {
		return "-"
	}
	return key
}

// used counts one slot granted to key.
func (sh *shares) used(key string) {
	sh.mu.Lock()
	sh.pending[member(key)]++
	sh.mu.Unlock()
}

// over reports whether key was over its share at the latest look, and if
// so its cap: its share, or what the other keys left of the rate if more.
func (sh *shares) over(key string) (perSecond float64, over bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	perSecond, over = sh.overs[member(key)]
	return perSecond, over
}

// sharesScript, in one round trip: adds the slots granted here (ARGV[3]
// pairs of key and count, from ARGV[4]) to each key's use (KEYS[2]), a
// count that decays with time constant ARGV[2] ms, so that it measures the
// key's recent rate without a window's edges; marks the keys that follow as
// waiting now (KEYS[1]), for ARGV[1] ms; and returns how many keys wait
// fleet-wide, the use of them all, then each key's use, in thousandths of
// a slot.
var sharesScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local activeFor, tau, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function use(m, add)
  local v = tonumber(redis.call('HGET', KEYS[2], m .. ':v') or '0')
  local at = tonumber(redis.call('HGET', KEYS[2], m .. ':t') or now)
  v = v * math.exp(-math.max(now - at, 0) / tau) + add
  if add > 0 then redis.call('HSET', KEYS[2], m .. ':v', tostring(v), m .. ':t', now) end
  return v
end
for i = 1, n do use(ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])) end
redis.call('PEXPIRE', KEYS[2], 20 * tau)
local first = 4 + 2 * n
for i = first, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - activeFor)
redis.call('PEXPIRE', KEYS[1], 10 * activeFor)
local total = 0
for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do total = total + use(m, 0) end
local out = {redis.call('ZCARD', KEYS[1]), math.floor(total * 1000)}
for i = first, #ARGV do out[#out + 1] = math.floor(use(ARGV[i], 0) * 1000) end
return out`)

// useDecay is the time constant of a key's use: it weighs the last half
// second most.
const useDecay = 500 * time.Millisecond

// refresh tells the fleet that keys wait here, counts the slots granted
// since, and reads each key's recent use, in one round trip, at most every
// shareEvery. On a Redis failure the keys keep their last state.
func (sh *shares) refresh(ctx context.Context, keys []string) {
	sh.mu.Lock()
	now := time.Now()
	if now.Before(sh.next) {
		sh.mu.Unlock()
		return
	}
	sh.next = now.Add(shareEvery)
	pending := sh.pending
	sh.pending = map[string]int64{}
	sh.mu.Unlock()

	args := []any{activeFor.Milliseconds(), useDecay.Milliseconds(), len(pending)}
	for m, n := range pending {
		args = append(args, m, n)
	}
	for _, k := range keys {
		args = append(args, member(k))
	}
	tag := sh.prefix + ":{shares}"
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	res, err := sharesScript.Run(ctx, sh.rdb, []string{tag + ":waiting", tag + ":use"}, args...).Int64Slice()
	if err != nil || len(res) != 2+len(keys) {
		return
	}
	perSecond := func(milli int64) float64 { return float64(milli) / 1000 / useDecay.Seconds() }
	overs := map[string]float64{}
	if n := res[0]; n > 1 {
		share, total := float64(sh.rate)/float64(n), perSecond(res[1])
		for i, k := range keys {
			if mine := perSecond(res[2+i]); mine >= share {
				// Over its share, a key may still use what the others leave.
				overs[member(k)] = max(share, float64(sh.rate)-(total-mine))
			}
		}
	}
	sh.mu.Lock()
	sh.overs = overs
	sh.mu.Unlock()
}
