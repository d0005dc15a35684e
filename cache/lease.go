package cache

import (
	"context"
	mrand "math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// The lease scripts. Each does one job; all of one identity's keys share a
// hash slot, so they run on Redis Cluster too.
var (
	// acquireScript returns {1, value, mark} when the value exists, {2,
	// mark} when this caller took the fill lease, and {0, ms} when another
	// holds it for ms more: then it marks that someone waits (KEYS[3]) for at
	// least that long plus ARGV[3] ms, so that the store wakes them. mark is
	// the identity's delete mark (KEYS[4]), "0" for none.
	acquireScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local mark = redis.call('GET', KEYS[4]) or '0'
if v then return {1, v, mark} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, mark} end
local held = math.max(redis.call('PTTL', KEYS[2]), 0)
redis.call('SET', KEYS[3], '1', 'PX', math.max(tonumber(ARGV[2]), held + tonumber(ARGV[3])))
return {0, held}`)

	// leaseOverScript takes the fill lease over a value the caller could not
	// use (ARGV[4]), unless the value has changed since: then it returns
	// {1, value} as acquireScript does.
	leaseOverScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local mark = redis.call('GET', KEYS[4]) or '0'
if v and v ~= ARGV[4] then return {1, v, mark} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, mark} end
local held = math.max(redis.call('PTTL', KEYS[2]), 0)
redis.call('SET', KEYS[3], '1', 'PX', math.max(tonumber(ARGV[2]), held + tonumber(ARGV[3])))
return {0, held}`)

	// refreshLeaseScript takes the lease for a refresh unless the fleet is
	// backing off (the backoff key lives longer than ARGV[3] ms) or another
	// instance holds it. It returns {1, value, failures, mark} or {0}.
	refreshLeaseScript = redis.NewScript(`
if redis.call('PTTL', KEYS[3]) > tonumber(ARGV[3]) then return {0} end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
return {1, redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[3]) or '0', redis.call('GET', KEYS[4]) or '0'}`)

	// storeScript stores a value if ARGV[3] still holds the lease, and
	// returns 0 otherwise: a Delete since the fetch began took the lease
	// away, or the lease lapsed and another instance may be fetching. It
	// ends any backoff, releases the lease and wakes the waiters, if any,
	// with message ARGV[5] on channel ARGV[4]: an uncontended fill tells no
	// one.
	storeScript = redis.NewScript(`
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('DEL', KEYS[4]) == 1 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1`)

	// releaseScript releases the lease if ARGV[1] holds it, and wakes the
	// waiters, if any, so that one of them fetches at once.
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('DEL', KEYS[2]) == 1 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return 1`)

	// deleteScript drops an identity's value, backoff and lease, moves its
	// delete mark (KEYS[4]) on to Redis's time in ms (past the last mark),
	// kept for ARGV[3] ms, and tells every instance (message ARGV[2] on
	// channel ARGV[1]), in one step: a DELETE that answers has done it all.
	deleteScript = redis.NewScript(`
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local t = redis.call('TIME')
local mark = math.max(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), tonumber(redis.call('GET', KEYS[4]) or '0') + 1)
redis.call('SET', KEYS[4], string.format('%d', mark), 'PX', ARGV[3])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1`)

	// extendScript renews the lease for ARGV[2] ms if ARGV[1] holds it.
	extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])`)

	// backoffScript records a failed refresh: ARGV[2] failures in a row, kept
	// for ARGV[3] ms. It releases the lease if ARGV[1] holds it, and wakes
	// the waiters, if any: a fill may wait on a refresh's lease.
	backoffScript = redis.NewScript(`
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
if redis.call('DEL', KEYS[3]) == 1 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1`)
)

// acquireState is what an acquire script found.
type acquireState int

const (
	acquireBusy acquireState = iota
	acquireFound
	acquireTaken
	acquireRejected // k's channel is rejected: the entry is that rejection
)

// acquire returns the stored value of keys if there is one that can be
// trusted, or else tries the fill lease; when another holds it, held is how
// long its lease has left. A value that cannot be trusted counts as absent,
// and is overwritten by the fetch.
func (c *Cache) acquire(ctx context.Context, keys redisKeys, owner string) (state acquireState, e entry, held time.Duration, err error) {
	return c.acquireFrom(ctx, keys, owner, acquireScript.Run(ctx, c.rdb, keys.leaseKeys(), c.acquireArgs(owner)...))
}

// acquireArgs are the lease scripts' arguments: the owner, the lease's
// length, and how much longer than the holder's lease a waiter's mark lasts,
// which covers the jitter of its next check (see leaseCheckAfter).
func (c *Cache) acquireArgs(owner string) []any {
	return []any{owner, c.leaseFor().Milliseconds(), 2 * c.opts.PollInterval.Milliseconds()}
}

// acquireUnlessRejected is acquire, with the remembered rejection of k's
// channel read in the same round trip: a rejected channel gives
// acquireRejected, and no lease.
func (c *Cache) acquireUnlessRejected(ctx context.Context, k Key, keys redisKeys, owner string) (acquireState, entry, time.Duration, error) {
	rejKey := c.channelRejectionKey(k)
	gen := c.localGen(rejKey)
	pipe := c.rdb.Pipeline()
	rej := pipe.Get(ctx, rejKey)
	acq := acquireScript.EvalSha(ctx, pipe, keys.leaseKeys(), c.acquireArgs(owner)...)
	_, _ = pipe.Exec(ctx) // each command's error is read below
	if raw, err := rej.Bytes(); err == nil {
		if e, ok := c.decodeLive(rejKey, raw); ok && e.Rejected != nil {
			c.localSetIf(rejKey, e, gen)
			if state, _ := acq.Slice(); len(state) > 0 && state[0] == int64(acquireTaken) {
				c.releaseLease(ctx, keys, owner)
			}
			return acquireRejected, e, 0, nil
		}
	}
	if err := acq.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		return c.acquire(ctx, keys, owner) // Redis lost its scripts: Run loads them
	}
	return c.acquireFrom(ctx, keys, owner, acq)
}

// acquireFrom reads the reply of an acquire script, taking the lease over a
// value that cannot be trusted.
func (c *Cache) acquireFrom(ctx context.Context, keys redisKeys, owner string, cmd *redis.Cmd) (acquireState, entry, time.Duration, error) {
	for {
		res, err := cmd.Slice()
		if err != nil {
			return 0, entry{}, 0, err
		}
		state, _ := res[0].(int64)
		switch acquireState(state) {
		case acquireBusy:
			ms, _ := res[1].(int64)
			return acquireBusy, entry{}, time.Duration(ms) * time.Millisecond, nil
		case acquireTaken:
			return acquireTaken, entry{Mark: markIn(res, 1)}, 0, nil
		}
		raw, _ := res[1].(string)
		if e, ok := c.decodeCurrent(keys.value, []byte(raw), markIn(res, 2)); ok {
			return acquireFound, e, 0, nil
		}
		if c.afterUntrustedRead != nil {
			c.afterUntrustedRead()
		}
		// Take the lease over this value, unless another instance has
		// stored a new one meanwhile.
		cmd = leaseOverScript.Run(ctx, c.rdb, keys.leaseKeys(), append(c.acquireArgs(owner), raw)...)
	}
}

// leaseCheckAfter is how long a waiter sleeps before it checks again on a
// lease held for held more: until the lease would lapse, but at least
// PollInterval/2 and at most LeaseTTL, with up to PollInterval of jitter to
// spread the fleet's checks. Checking sooner would find nothing: the
// holder's store wakes its waiters (they marked that they wait), and a new
// pub/sub subscription, or the Redis circuit opening, wakes every waiter.
func (c *Cache) leaseCheckAfter(held time.Duration) time.Duration {
	return min(max(held, c.opts.PollInterval/2), c.opts.LeaseTTL) + mrand.N(c.opts.PollInterval)
}

// takeRefreshLease runs refreshLeaseScript. It reports whether this caller
// took the lease, the stored entry (if one can be trusted) and the failed
// refreshes in a row so far.
// The new value must carry mark, the identity's delete mark.
func (c *Cache) takeRefreshLease(ctx context.Context, keys redisKeys, owner string) (took bool, stored entry, failures int, mark int64, err error) {
	res, err := refreshLeaseScript.Run(ctx, c.rdb, []string{keys.value, keys.lease(), keys.backoff(), keys.mark()},
		owner, c.opts.LeaseTTL.Milliseconds(), backoffMemory.Milliseconds()).Slice()
	if err != nil {
		return false, entry{}, 0, 0, err
	}
	if n, _ := res[0].(int64); n != 1 || len(res) != 4 {
		return false, entry{}, 0, 0, nil
	}
	mark = markIn(res, 3)
	raw, _ := res[1].(string)
	if e, ok := c.decodeCurrent(keys.value, []byte(raw), mark); ok {
		stored = e
	}
	count, _ := res[2].(string)
	failures, _ = strconv.Atoi(count)
	return true, stored, failures, mark, nil
}

// markIn reads a delete mark from a script's reply at i; none is 0.
func markIn(res []any, i int) int64 {
	if i >= len(res) {
		return 0
	}
	s, _ := res[i].(string)
	mark, _ := strconv.ParseInt(s, 10, 64)
	return mark
}

// store writes e to Redis while owner holds the lease, releases the lease
// and wakes the fleet's waiters; the caller has put e in the local cache. A
// Redis failure here loses nothing the caller needs: the token is still
// returned.
func (c *Cache) store(ctx context.Context, keys redisKeys, owner string, e entry) {
	ttl := e.Until.Sub(c.opts.Now())
	if ttl < time.Millisecond {
		c.releaseLease(ctx, keys, owner)
		return
	}
	c.runAndWake(ctx, keys.value, storeScript, []string{keys.value, keys.lease(), keys.backoff(), keys.waiters()},
		c.encode(keys.value, e), ttl.Milliseconds(), owner)
}

// releaseLease releases the lease if owner holds it, and wakes the fleet's
// waiters, so that one of them fetches at once.
func (c *Cache) releaseLease(ctx context.Context, keys redisKeys, owner string) {
	c.runAndWake(ctx, keys.value, releaseScript, []string{keys.lease(), keys.waiters()}, owner)
}

// runAndWake runs a script that wakes the waiters of key elsewhere in the
// fleet, and wakes those in this process. The pub/sub channel and message
// follow args as the script's last two arguments. It runs even when ctx has
// ended, within the client's timeouts: it finishes a fetch already paid for.
func (c *Cache) runAndWake(ctx context.Context, key string, script *redis.Script, keys []string, args ...any) {
	args = append(args, c.events.channel, c.events.message(key))
	_ = script.Run(context.WithoutCancel(ctx), c.rdb, keys, args...).Err() // failures are tolerated, see store
	c.events.notify(key)
}

// backOff tells the fleet to leave keys alone for wait, after failures
// failed refreshes in a row, and releases the lease.
func (c *Cache) backOff(ctx context.Context, keys redisKeys, owner string, failures int, wait time.Duration) {
	c.runAndWake(ctx, keys.value, backoffScript, []string{keys.lease(), keys.backoff(), keys.waiters()},
		owner, failures, (wait + backoffMemory).Milliseconds())
}

// leaseFor is how long a fill lease lasts without renewal: LeaseTTL, plus
// the time this instance's rate-limit queue needs to drain.
func (c *Cache) leaseFor() time.Duration { return c.opts.LeaseTTL + c.sched.Drain() }

// renewLease extends the lease while its holder works, so that only a dead
// holder's lease lapses. Each extension covers LeaseTTL plus the time this
// instance's rate-limit queue needs to drain, and the next comes when half
// of it has passed: a holder queued behind many fetches renews a few
// times, not once per LeaseTTL/3, and a dead holder blocks the others no
// longer than they would wait for a slot anyway. The first comes after
// LeaseTTL/2: the lease taken may be shorter than the queue now needs.
func (c *Cache) renewLease(ctx context.Context, keys redisKeys, owner string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		next := c.opts.LeaseTTL / 2
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(next):
			}
			ext := c.leaseFor()
			_ = extendScript.Run(ctx, c.rdb, []string{keys.lease()}, owner, ext.Milliseconds()).Err()
			next = ext / 2
		}
	}()
	return func() { cancel(); <-done }
}
