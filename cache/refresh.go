package cache

import (
	"context"
	"time"
)

// refreshGateFor is how long an instance waits before it tries again to start
// a refresh of the same key: stale hits must not each cost a Redis command.
const refreshGateFor = time.Second

// maxRefreshBackoff caps the doubling of RefreshBackoff after failures.
const maxRefreshBackoff = 10 * time.Minute

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
// lately. Across the fleet only the instance that takes the lease refreshes.
func (c *Cache) startRefresh(k Key, keys redisKeys) {
	now := time.Now()
	state, _ := c.refreshGate.Get(keys.value)
	if now.Before(state.next) {
		return
	}
	state.next = now.Add(refreshGateFor)
	c.refreshGate.Add(keys.value, state)
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.refresh(k, keys)
	}()
}

// refresh fetches a new token while the old one is still served. On failure
// the old token stays until its TTL, and the next attempt waits a backoff
// that doubles with each failure in a row: fleet-wide through the lease, and
// locally through the gate.
func (c *Cache) refresh(k Key, keys redisKeys) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.FillTimeout)
	defer cancel()

	owner := randomID()
	fleet := c.redisUsable()
	if fleet {
		state, _, err := c.acquire(ctx, keys, owner, false)
		if err == nil && state != acquireTaken {
			return // another instance is refreshing, or backing off
		}
		fleet = err == nil
	}
	if fleet {
		stopRenew := c.renewLease(ctx, keys.lease(), owner)
		defer stopRenew()
	}

	tok, err := c.refreshCall(ctx, k, fleet)
	if err != nil {
		c.metrics.refreshes.WithLabelValues("failed").Inc()
		state, _ := c.refreshGate.Get(keys.value)
		state.failures++
		wait := c.backoff(state.failures)
		state.next = time.Now().Add(wait)
		c.refreshGate.Add(keys.value, state)
		if fleet {
			_ = leaseScript.Run(ctx, c.rdb, []string{keys.lease()}, owner, "backoff", wait.Milliseconds()).Err()
		}
		return
	}
	c.metrics.refreshes.WithLabelValues("ok").Inc()
	c.refreshGate.Remove(keys.value)
	e := entry{Token: &tok, Until: c.tokenUntil(tok.IssuedAt)}
	if !fleet {
		c.localSet(keys.value, e)
		return
	}
	c.store(ctx, keys, owner, e)
	c.events.publish(ctx, c.rdb, keys.value)
}

func (c *Cache) refreshCall(ctx context.Context, k Key, fleet bool) (Token, error) {
	wait := c.waitLocalSlot
	if fleet {
		wait = c.waitFleetSlot
	}
	if err := wait(ctx, time.Time{}); err != nil {
		return Token{}, err
	}
	return c.callUpstream(ctx, k)
}
