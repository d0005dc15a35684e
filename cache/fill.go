package cache

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/polyv"
)

// acquireScript returns {1, value} when the value exists (and ARGV[3] is
// "1"), {2, ""} when this caller took the lease, and {0, ""} when another
// holds it: one round trip for the check-again and the lease.
var acquireScript = redis.NewScript(`
if ARGV[3] == '1' then
  local v = redis.call('GET', KEYS[1])
  if v then return {1, v} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {0, ''}`)

// storeScript stores the value and releases the lease if this caller holds it.
var storeScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1`)

// leaseScript acts on a lease only if ARGV[1] holds it: "extend" renews it
// for ARGV[3] ms, "release" deletes it, "backoff" keeps it, as a marker that
// blocks others, for ARGV[3] ms.
var leaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'release' then return redis.call('DEL', KEYS[1]) end
if ARGV[2] == 'extend' then return redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
redis.call('SET', KEYS[1], 'backoff', 'PX', ARGV[3])
return 1`)

const (
	acquireBusy = iota
	acquireFound
	acquireTaken
)

// fillResult is what a shared fetch hands to each caller waiting on it.
type fillResult struct {
	entry  entry
	result Result
}

// fillShared merges this process's concurrent misses of k into one fill that
// runs detached from any caller; each caller waits only as long as its ctx.
func (c *Cache) fillShared(ctx context.Context, k Key, keys redisKeys) (Token, Result, error) {
	leader := false
	deadline, _ := ctx.Deadline()
	detached := context.WithoutCancel(ctx)
	ch := c.group.DoChan(keys.value, func() (v any, err error) {
		leader = true
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("cache: fill panicked: %v", p)
			}
		}()
		fctx, cancel := context.WithTimeout(detached, c.opts.FillTimeout)
		defer cancel()
		return c.fill(fctx, k, keys, deadline)
	})
	select {
	case <-ctx.Done():
		return Token{}, ResultError, ctx.Err()
	case r := <-ch:
		if r.Err != nil {
			return Token{}, ResultError, r.Err
		}
		f := r.Val.(fillResult)
		if f.entry.Rejected != nil {
			res := ResultNegative
			if leader && f.result == ResultMiss {
				res = ResultError
			}
			return Token{}, res, f.entry.Rejected.err()
		}
		res := f.result
		if !leader {
			res = ResultCoalesced
		}
		return *f.entry.Token, res, nil
	}
}

// fill gets k's token for the fleet: it checks Redis again, then either takes
// the lease and calls Polyv, or waits for the holder's value, taking over if
// the holder's lease lapses. Without Redis it fetches on its own.
func (c *Cache) fill(ctx context.Context, k Key, keys redisKeys, deadline time.Time) (fillResult, error) {
	// A flight that just ended may have filled the local cache after this
	// caller looked: singleflight only merges calls that overlap.
	if e, ok := c.localGet(keys.value); ok {
		return fillResult{entry: e, result: ResultCoalesced}, nil
	}
	if !c.redisUsable() {
		return c.fillLocal(ctx, k, keys, deadline)
	}
	owner := randomID()
	wake, unregister := c.events.wait(keys.value)
	defer unregister()

	var waitStart time.Time
	for {
		state, e, err := c.acquire(ctx, keys, owner, true)
		if err != nil {
			if ctx.Err() != nil {
				return fillResult{}, ctx.Err()
			}
			return c.fillLocal(ctx, k, keys, deadline)
		}
		if state != acquireBusy && !waitStart.IsZero() {
			c.metrics.leaseWait.Observe(time.Since(waitStart).Seconds())
		}
		switch state {
		case acquireFound:
			c.localSet(keys.value, e)
			return fillResult{entry: e, result: ResultCoalesced}, nil
		case acquireTaken:
			return c.fetchAndStore(ctx, k, keys, owner, deadline)
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
		}
		poll := c.opts.PollInterval/2 + mrand.N(c.opts.PollInterval)
		select {
		case <-wake:
		case <-time.After(poll):
		case <-ctx.Done():
			return fillResult{}, ctx.Err()
		}
	}
}

// acquire runs acquireScript; with checkValue false it only tries the lease.
// A found value that cannot be trusted counts as absent: the lease is then
// tried without looking at the value, and the value is overwritten by the
// fetch.
func (c *Cache) acquire(ctx context.Context, keys redisKeys, owner string, checkValue bool) (int, entry, error) {
	for {
		flag := "0"
		if checkValue {
			flag = "1"
		}
		res, err := acquireScript.Run(ctx, c.rdb, []string{keys.value, keys.lease()},
			owner, c.opts.LeaseTTL.Milliseconds(), flag).Slice()
		if err != nil {
			return 0, entry{}, err
		}
		state, _ := res[0].(int64)
		if state != acquireFound {
			return int(state), entry{}, nil
		}
		raw, _ := res[1].(string)
		if e, ok := decodeEntry([]byte(raw)); ok && c.opts.Now().Before(e.Until) {
			return acquireFound, e, nil
		}
		checkValue = false
	}
}

// fetchAndStore calls Polyv while holding the lease, stores what it gets and
// wakes the waiters. A rejection is stored as a negative entry; any other
// failure releases the lease so that a waiter can try.
func (c *Cache) fetchAndStore(ctx context.Context, k Key, keys redisKeys, owner string, deadline time.Time) (fillResult, error) {
	stopRenew := c.renewLease(ctx, keys.lease(), owner)
	defer stopRenew()
	defer c.events.publish(context.WithoutCancel(ctx), c.rdb, keys.value)

	if err := c.waitFleetSlot(ctx, deadline); err != nil {
		c.releaseLease(ctx, keys.lease(), owner)
		return fillResult{}, err
	}
	tok, err := c.callUpstream(ctx, k)
	if err != nil {
		if e, ok := c.rejection(err); ok {
			c.store(ctx, keys, owner, e)
			return fillResult{entry: e, result: ResultMiss}, nil
		}
		c.releaseLease(ctx, keys.lease(), owner)
		return fillResult{}, err
	}
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt)}
	c.store(ctx, keys, owner, e)
	return fillResult{entry: e, result: ResultMiss}, nil
}

// fillLocal fetches without Redis: per-process coalescing (the caller's
// singleflight), the local rate limit and the local cache only.
func (c *Cache) fillLocal(ctx context.Context, k Key, keys redisKeys, deadline time.Time) (fillResult, error) {
	if err := c.waitLocalSlot(ctx, deadline); err != nil {
		return fillResult{}, err
	}
	tok, err := c.callUpstream(ctx, k)
	if err != nil {
		if e, ok := c.rejection(err); ok {
			c.localSet(keys.value, e)
			return fillResult{entry: e, result: ResultMiss}, nil
		}
		return fillResult{}, err
	}
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt)}
	c.localSet(keys.value, e)
	return fillResult{entry: e, result: ResultMiss}, nil
}

// rejection returns the negative entry for err when Polyv rejected the request
// itself; other failures are never stored.
func (c *Cache) rejection(err error) (entry, bool) {
	var apiErr *polyv.APIError
	if polyv.Classify(err) != polyv.KindRejected || !errors.As(err, &apiErr) {
		return entry{}, false
	}
	return entry{
		Rejected: &rejection{Endpoint: apiErr.Endpoint, Code: apiErr.Code, Message: apiErr.Message},
		Until:    c.opts.Now().Add(c.opts.NegativeTTL),
	}, true
}

// store writes e to Redis and the local cache, releasing the lease. A Redis
// failure here loses nothing the caller needs: the token is still returned.
func (c *Cache) store(ctx context.Context, keys redisKeys, owner string, e entry) {
	c.localSet(keys.value, e)
	ttl := e.Until.Sub(c.opts.Now())
	if ttl < time.Millisecond {
		return
	}
	_ = storeScript.Run(ctx, c.rdb, []string{keys.value, keys.lease()}, e.encode(), ttl.Milliseconds(), owner).Err()
}

func (c *Cache) releaseLease(ctx context.Context, lease, owner string) {
	_ = leaseScript.Run(context.WithoutCancel(ctx), c.rdb, []string{lease}, owner, "release", 0).Err()
}

// renewLease extends the lease while its holder works, so that only a dead
// holder's lease lapses.
func (c *Cache) renewLease(ctx context.Context, lease, owner string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(c.opts.LeaseTTL / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = leaseScript.Run(ctx, c.rdb, []string{lease}, owner, "extend", c.opts.LeaseTTL.Milliseconds()).Err()
			}
		}
	}()
	return func() { cancel(); <-done }
}

// callUpstream makes one Polyv call for k and records it. It gives up when
// ctx ends even if the upstream does not, and turns a panic into an error, so
// that no upstream fault can wedge a key.
func (c *Cache) callUpstream(ctx context.Context, k Key) (Token, error) {
	endpoint := polyv.EndpointChatToken
	if k.Kind == KindChannel {
		endpoint = polyv.EndpointChannelToken
	}
	type reply struct {
		tok Token
		err error
	}
	start := time.Now()
	ch := make(chan reply, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- reply{err: fmt.Errorf("cache: upstream panicked: %v", p)}
			}
		}()
		tok, err := c.upstreamCall(ctx, k)
		ch <- reply{tok, err}
	}()
	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		r = reply{err: fmt.Errorf("cache: upstream %s: %w", endpoint, ctx.Err())}
	}
	outcome := "ok"
	if r.err != nil {
		outcome = polyv.Classify(r.err).String()
	}
	c.metrics.upstreamRequests.WithLabelValues(endpoint, outcome).Inc()
	c.metrics.upstreamDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	return r.tok, r.err
}

// upstreamCall asks Polyv for k's token. An upstream that reports no issue
// time gets the time the call started.
func (c *Cache) upstreamCall(ctx context.Context, k Key) (Token, error) {
	sent := c.opts.Now()
	var tok Token
	if k.Kind == KindChannel {
		t, err := c.upstream.ChannelToken(ctx, k.ChannelID)
		if err != nil {
			return Token{}, err
		}
		tok = Token{Token: t.Token, MediaChannelKey: t.MediaChannelKey, IssuedAt: t.IssuedAt}
	} else {
		t, err := c.upstream.ChatToken(ctx, polyv.ChatTokenRequest{ChannelID: k.ChannelID, UserID: k.UserID, Role: k.Role, Origin: k.Origin})
		if err != nil {
			return Token{}, err
		}
		tok = Token{
			Token: t.Token, MediaChannelKey: t.MediaChannelKey, RoomID: t.RoomID, ChildRoomEnabled: t.ChildRoomEnabled,
			ChatAPIDomain: t.ChatAPIDomain, ChatDomain: t.ChatDomain, IssuedAt: t.IssuedAt,
		}
	}
	if tok.IssuedAt.IsZero() {
		tok.IssuedAt = sent
	}
	return tok, nil
}
