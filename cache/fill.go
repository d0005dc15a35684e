package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tokencache/tokencache/polyv"
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
		return c.fill(fctx, k, keys)
	})
	select {
	case <-ctx.Done():
		if c.fillQueued(keys.value) {
			return Token{}, ResultError, c.gaveUp(ctx, c.interval())
		}
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
func (c *Cache) fill(ctx context.Context, k Key, keys redisKeys) (fillResult, error) {
	// A flight that just ended may have filled the local cache after this
	// caller looked: singleflight only merges calls that overlap.
	if e, ok := c.localGet(keys.value); ok {
		return fillResult{entry: e, result: ResultCoalesced}, nil
	}
	if e, ok := c.localGet(c.channelRejectionKey(k)); ok {
		return fillResult{entry: e, result: ResultNegative}, nil
	}
	gen := c.localGen(keys.value)
	if !c.redisUsable() {
		return c.fillLocal(ctx, k, keys, gen)
	}
	owner := randomID()
	wake, unregister := c.events.wait(keys.value)
	defer unregister()

	var waitStart time.Time
	state, e, held, err := c.acquireUnlessRejected(ctx, k, keys, owner)
	for {
		if err != nil {
			if ctx.Err() != nil {
				return fillResult{}, ctx.Err()
			}
			return c.fillLocal(ctx, k, keys, gen)
		}
		if state != acquireBusy && !waitStart.IsZero() {
			c.metrics.leaseWait.Observe(time.Since(waitStart).Seconds())
		}
		switch state {
		case acquireRejected:
			return fillResult{entry: e, result: ResultNegative}, nil
		case acquireFound:
			if c.afterRedisRead != nil {
				c.afterRedisRead()
			}
			c.localSetIf(keys.value, e, gen)
			return fillResult{entry: e, result: ResultCoalesced}, nil
		case acquireTaken:
			return c.fetchAndStore(ctx, k, keys, owner, gen)
		}
		if waitStart.IsZero() {
			waitStart = time.Now()
		}
		select {
		case <-wake:
		case <-time.After(c.leaseCheckAfter(held)):
		case <-ctx.Done():
			return fillResult{}, ctx.Err()
		}
		state, e, held, err = c.acquire(ctx, keys, owner)
	}
}

// fetchAndStore calls Polyv while holding the lease, stores what it gets and
// wakes the waiters. A rejection is stored as a negative entry; any other
// failure releases the lease so that a waiter can try.
func (c *Cache) fetchAndStore(ctx context.Context, k Key, keys redisKeys, owner string, gen uint64) (fillResult, error) {
	stopRenew := c.renewLease(ctx, keys, owner)
	defer stopRenew()

	if err := c.waitSlot(ctx, keys.value, true); err != nil {
		c.releaseLease(ctx, keys, owner)
		return fillResult{}, err
	}
	tok, err := c.callUpstream(ctx, k)
	if err != nil {
		if e, ok := c.rejection(err); ok {
			c.rememberChannelRejection(ctx, k, err, e, true)
			c.storeAfterAnswer(ctx, keys, owner, e, gen)
			return fillResult{entry: e, result: ResultMiss}, nil
		}
		c.releaseLease(ctx, keys, owner)
		return fillResult{}, err
	}
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt)}
	c.storeAfterAnswer(ctx, keys, owner, e, gen)
	return fillResult{entry: e, result: ResultMiss}, nil
}

// storeAfterAnswer puts e in the local cache at once and stores it in Redis
// in the background, so that the callers are answered a round trip sooner.
// The lease is held until the store lands: the rest of the fleet waits for
// this token meanwhile instead of fetching its own.
func (c *Cache) storeAfterAnswer(ctx context.Context, keys redisKeys, owner string, e entry, gen uint64) {
	c.localSetIf(keys.value, e, gen)
	c.storing.Add(1)
	go func() {
		defer c.storing.Done()
		c.store(context.WithoutCancel(ctx), keys, owner, e)
	}()
}

// fillLocal fetches without Redis: per-process coalescing (the caller's
// singleflight), the local rate limit and the local cache only.
func (c *Cache) fillLocal(ctx context.Context, k Key, keys redisKeys, gen uint64) (fillResult, error) {
	if err := c.waitSlot(ctx, keys.value, false); err != nil {
		return fillResult{}, err
	}
	tok, err := c.callUpstream(ctx, k)
	if err != nil {
		if e, ok := c.rejection(err); ok {
			c.rememberChannelRejection(ctx, k, err, e, false)
			c.localSetIf(keys.value, e, gen)
			return fillResult{entry: e, result: ResultMiss}, nil
		}
		return fillResult{}, err
	}
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt)}
	c.localSetIf(keys.value, e, gen)
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
		tok, err := c.requestToken(ctx, k)
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
	c.polyvState.Store(polyvStateOf(r.err))
	if c.opts.OnFetch != nil {
		c.opts.OnFetch(ctx, k, outcome)
	}
	c.metrics.upstreamDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	return r.tok, r.err
}

// requestToken asks Polyv for k's token. An upstream that reports no issue
// time gets the time the call started.
func (c *Cache) requestToken(ctx context.Context, k Key) (Token, error) {
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
	tok.Rendered = new(Rendered)
	return tok, nil
}

// rememberChannelRejection keeps e for k's whole channel when err rejects
// the channel itself, in Redis too when fleet is set.
func (c *Cache) rememberChannelRejection(ctx context.Context, k Key, err error, e entry, fleet bool) {
	var apiErr *polyv.APIError
	if !errors.As(err, &apiErr) || !apiErr.ChannelRejected() {
		return
	}
	key := c.channelRejectionKey(k)
	c.localSetIf(key, e, c.localGen(key))
	if fleet {
		_ = c.rdb.Set(ctx, key, c.encode(key, e), c.opts.NegativeTTL).Err()
	}
}

// polyvStateOf sorts the outcome of a Polyv call for /readyz: a rejection of
// the request still shows Polyv answering with our credentials.
func polyvStateOf(err error) string {
	switch polyv.Classify(err) {
	case polyv.KindNone, polyv.KindRejected, polyv.KindCanceled:
		return PolyvOK
	case polyv.KindMisconfigured:
		return PolyvMisconfigured
	}
	return PolyvUnavailable
}
