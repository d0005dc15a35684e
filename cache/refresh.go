package cache

import (
	"context"
	"errors"
	"time"

	"github.com/tokencache/tokencache/budget"
)

// refreshGateFor is how long an instance waits before it tries again to start
// a refresh of the same key: stale hits must not each cost a Redis command.
const refreshGateFor = time.Second

// maxRefreshBackoff caps the doubling of RefreshBackoff after failures.
const maxRefreshBackoff = 10 * time.Minute

// backoffMemory is how long the fleet remembers failed refreshes after a
// backoff ends, so that the next failure doubles the wait.
const backoffMemory = maxRefreshBackoff

// refreshState is this instance's memory of a key's refreshes.
type refreshState struct {
	next     time.Time // no new attempt before this
	failures int       // failed attempts in a row
}

// backoff is the wait after the n-th failure in a row: RefreshBackoff,
// doubled per further failure, capped.
func (c *Cache) backoff(failures int) time.Duration {
	d := c.opts.RefreshBackoff
	for i := 1; i < failures && d < maxRefreshBackoff; i++ {
		d *= 2
	}
	return min(d, maxRefreshBackoff)
}

// startRefresh refreshes k in the background unless this instance tried
// lately. seen is the issue time of the stale token the caller was served.
func (c *Cache) startRefresh(k Key, keys redisKeys, seen time.Time) {
	now := time.Now()
	state, _ := c.refreshGate.GetIfPresent(keys.value)
	if now.Before(state.next) {
		return
	}
	untrack, ok := c.track()
	if !ok {
		return
	}
	state.next = now.Add(refreshGateFor)
	c.refreshGate.Set(keys.value, state)
	go func() {
		defer untrack()
		c.refresh(k, keys, seen)
	}()
}

// refresh fetches a new token while the old one, issued at seen, is still
// served. Across the fleet only the instance that takes the refresh lease
// refreshes, and it stops if the stored token is newer than seen. On failure
// the old token stays until its TTL, and the next attempt waits a backoff that
// doubles with each failure in a row: fleet-wide in the backoff key, locally
// in the gate. The fill lease is released either way, so a miss after the
// token expires fetches at once.
func (c *Cache) refresh(k Key, keys redisKeys, seen time.Time) {
	ctx, cancel := context.WithTimeout(c.life, c.opts.FillTimeout)
	defer cancel()

	owner := randomID()
	gen := c.localGen(keys.value)
	gate, _ := c.refreshGate.GetIfPresent(keys.value)
	failures := gate.failures
	fleet := c.redisUsable()
	var mark int64 // the identity's delete mark, which the new value carries
	if fleet {
		took, stored, fleetFailures, m, err := c.takeRefreshLease(ctx, keys, owner)
		mark = m
		if err == nil && !took {
			return // another instance is refreshing, or the fleet backs off
		}
		if err == nil && stored.Token != nil && stored.Token.IssuedAt.After(seen) {
			c.releaseLease(ctx, keys, owner)
			c.refreshGate.Invalidate(keys.value)
			c.localSetIf(keys.value, stored, gen)
			return // another instance refreshed it already
		}
		fleet = err == nil
		failures = max(failures, fleetFailures)
	}
	if fleet {
		stopRenew := c.renewLease(ctx, keys, owner)
		defer stopRenew()
	}

	tok, err := c.refreshCall(ctx, k, fleet)
	var unavailable *UnavailableError
	if errors.As(err, &unavailable) && unavailable.Reason == budget.ReasonCooldown {
		// Polyv's cool-down is no failure of this token: try after it.
		c.refreshGate.Set(keys.value, refreshState{next: time.Now().Add(unavailable.RetryAfter), failures: failures})
		if fleet {
			c.releaseLease(ctx, keys, owner)
		}
		return
	}
	if err != nil {
		c.metrics.refreshes.WithLabelValues("failed").Inc()
		failures++
		wait := c.backoff(failures)
		c.refreshGate.Set(keys.value, refreshState{next: time.Now().Add(wait), failures: failures})
		if fleet {
			c.backOff(ctx, keys, owner, failures, wait)
		}
		return
	}
	c.metrics.refreshes.WithLabelValues("ok").Inc()
	c.refreshGate.Invalidate(keys.value)
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt), Mark: mark}
	c.localSetIf(keys.value, e, gen)
	if !fleet {
		return
	}
	c.store(ctx, keys, owner, e)
	// Other instances hold the old token: they drop it for the new one.
	c.events.publish(ctx, c.rdb, keys.value)
}

func (c *Cache) refreshCall(ctx context.Context, k Key, fleet bool) (Token, error) {
	if err := c.waitSlot(ctx, k, nil); err != nil {
		return Token{}, err
	}
	tok, rejected, err := c.callPolyv(ctx, k, fleet)
	if rejected != nil {
		return Token{}, rejected.Rejected.err()
	}
	return tok, err
}
