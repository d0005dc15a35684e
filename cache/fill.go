package cache

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/polyv"
)

// fillResult is what a shared fetch hands to each caller waiting on it.
type fillResult struct {
	entry  entry
	result Result
}

// fillShared merges this process's concurrent misses of k into one fill that
// runs detached from any caller; each caller waits only as long as its ctx.
// The fill waits for a Polyv slot while any of its callers here waits, and
// no longer: a fill whose callers all left leaves the queue, and its lease.
func (c *Cache) fillShared(ctx context.Context, k Key, keys redisKeys) (Token, Result, error) {
	for {
		f, ch, leader := c.flights.join(ctx, c, k, keys)
		var r singleflight.Result
		select {
		case <-ctx.Done():
			queued := f.queued.Load()
			c.flights.leave(f)
			if queued && !errors.Is(ctx.Err(), context.Canceled) {
				return Token{}, ResultError, &UnavailableError{Reason: budget.ReasonQueue, RetryAfter: c.sched.Drain() + c.sched.Interval()}
			}
			return Token{}, ResultError, ctx.Err()
		case r = <-ch:
			c.flights.leave(f)
		}
		if errors.Is(r.Err, errAbandoned) {
			continue // joined a fill its callers had just left: start another
		}
		var refused *UnavailableError
		if !*leader && errors.As(r.Err, &refused) && refused.Reason == budget.ReasonQueue {
			// The queue refused the deadlines of the callers it knew; this
			// one may have joined just then, with more time: ask for it.
			continue
		}
		if r.Err != nil {
			return Token{}, ResultError, r.Err
		}
		fr := r.Val.(fillResult)
		if fr.entry.Rejected != nil {
			res := ResultNegative
			if *leader && fr.result == ResultMiss {
				res = ResultError
			}
			return Token{}, res, fr.entry.Rejected.err()
		}
		res := fr.result
		if !*leader {
			res = ResultCoalesced
		}
		return *fr.entry.Token, res, nil
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
	// Polyv cools down: a miss is refused at once, with no Redis work.
	if left := c.sched.CooldownLeft(); left > 0 {
		return fillResult{}, &UnavailableError{Reason: budget.ReasonCooldown, RetryAfter: left}
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
			return c.fetchAndStore(ctx, k, keys, owner, gen, e.Mark)
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
func (c *Cache) fetchAndStore(ctx context.Context, k Key, keys redisKeys, owner string, gen uint64, mark int64) (fillResult, error) {
	stopRenew := c.renewLease(context.WithoutCancel(ctx), keys, owner)
	defer stopRenew()

	if err := c.queueForSlot(ctx, k); err != nil {
		c.releaseLease(ctx, keys, owner)
		return fillResult{}, err
	}
	// Paid for from here: the call and the store go on whoever waits, until
	// Close.
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	tok, rejected, err := c.callPolyv(ctx, k, true)
	if rejected != nil {
		c.releaseLease(ctx, keys, owner)
		return fillResult{entry: *rejected, result: ResultNegative}, nil
	}
	if err != nil {
		if e, ok := c.rejection(err); ok {
			c.rememberChannelRejection(ctx, k, err, e, true)
			e.Mark = mark
			c.storeAfterAnswer(ctx, keys, owner, e, gen)
			return fillResult{entry: e, result: ResultMiss}, nil
		}
		c.releaseLease(ctx, keys, owner)
		return fillResult{}, err
	}
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt), Mark: mark}
	c.storeAfterAnswer(ctx, keys, owner, e, gen)
	return fillResult{entry: e, result: ResultMiss}, nil
}

// callContext is the context of a Polyv call and its store: detached from
// the callers, bounded by FillTimeout, and ended by Close.
func (c *Cache) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.FillTimeout)
	stop := context.AfterFunc(c.life, cancel)
	return ctx, func() { stop(); cancel() }
}

// storeAfterAnswer puts e in the local cache at once and stores it in Redis
// in the background, so that the callers are answered a round trip sooner.
// The lease is held until the store lands: the rest of the fleet waits for
// this token meanwhile instead of fetching its own.
func (c *Cache) storeAfterAnswer(ctx context.Context, keys redisKeys, owner string, e entry, gen uint64) {
	c.localSetIf(keys.value, e, gen)
	untrack, ok := c.track()
	if !ok {
		return // closing: the lease lapses by itself
	}
	c.storing.Add(1)
	go func() {
		defer untrack()
		defer c.storing.Done()
		c.store(context.WithoutCancel(ctx), keys, owner, e)
	}()
}

// fillLocal fetches without Redis: per-process coalescing (the caller's
// singleflight), the local rate limit and the local cache only.
func (c *Cache) fillLocal(ctx context.Context, k Key, keys redisKeys, gen uint64) (fillResult, error) {
	if err := c.queueForSlot(ctx, k); err != nil {
		return fillResult{}, err
	}
	ctx, cancel := c.callContext(ctx)
	defer cancel()
	tok, rejected, err := c.callPolyv(ctx, k, false)
	if rejected != nil {
		return fillResult{entry: *rejected, result: ResultNegative}, nil
	}
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
