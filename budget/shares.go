package budget

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// shareEvery is how often an instance with viewers waiting tells the fleet
// which keys wait here, adds the slots it granted to the fleet's count, and
// reads each waiting key's use.
const shareEvery = 250 * time.Millisecond

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
	pending map[string]int64 // slots granted here, not yet counted in Redis
	overs   map[string]bool  // keys over their share at the latest look
	next    time.Time        // no look before this
}

func newShares(rdb Redis, prefix string, rate int) *shares {
	return &shares{rdb: rdb, prefix: prefix, rate: rate, pending: map[string]int64{}, overs: map[string]bool{}}
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

// over reports whether key was over its share at the latest look.
func (sh *shares) over(key string) bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	return sh.overs[member(key)]
}

// sharesScript, in one round trip, adds slots granted (ARGV[3] pairs of
// key and count, from ARGV[4]) to this second's use (KEYS[2]), marks the
// keys that follow as waiting now (KEYS[1], scored by ARGV[1] ms, kept
// ARGV[2] ms), and returns how many keys wait fleet-wide, then each key's
// use in this second and in the last (KEYS[3]).
var sharesScript = redis.NewScript(`
local now, n = tonumber(ARGV[1]), tonumber(ARGV[3])
for i = 1, n do redis.call('HINCRBY', KEYS[2], ARGV[2 + 2 * i], ARGV[3 + 2 * i]) end
redis.call('PEXPIRE', KEYS[2], 3000)
local first = 4 + 2 * n
for i = first, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 10 * tonumber(ARGV[2]))
local out = {redis.call('ZCARD', KEYS[1])}
for i = first, #ARGV do
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0')
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[3], ARGV[i]) or '0')
end
return out`)

// refresh tells the fleet that keys wait here, counts the slots granted
// since, and reads each key's use in the last second, in one round trip, at
// most every shareEvery. On a Redis failure the keys keep their last state.
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

	args := []any{now.UnixMilli(), activeFor.Milliseconds(), len(pending)}
	for m, n := range pending {
		args = append(args, m, n)
	}
	for _, k := range keys {
		args = append(args, member(k))
	}
	sec := now.Unix()
	tag := sh.prefix + ":{shares}"
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	res, err := sharesScript.Run(ctx, sh.rdb, []string{tag + ":waiting", tag + ":used:" + strconv.FormatInt(sec, 10), tag + ":used:" + strconv.FormatInt(sec-1, 10)}, args...).Int64Slice()
	if err != nil || len(res) != 1+2*len(keys) {
		return
	}
	overs := map[string]bool{}
	if n := res[0]; n > 1 {
		share := float64(sh.rate) / float64(n)
		elapsed := float64(now.UnixMilli()%1000) / 1000
		for i, k := range keys {
			use := float64(res[1+2*i]) + float64(res[2+2*i])*(1-elapsed)
			overs[member(k)] = use >= share
		}
	}
	sh.mu.Lock()
	sh.overs = overs
	sh.mu.Unlock()
}
