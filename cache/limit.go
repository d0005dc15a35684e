package cache

import (
	"context"
	"time"
)

// waitFleetSlot waits for a slot of the fleet-wide Polyv rate limit, giving up
// with *UnavailableError when none comes before deadline (or ctx's deadline).
// Without Redis it falls back to the local limit.
func (c *Cache) waitFleetSlot(ctx context.Context, deadline time.Time) error {
	deadline = earliest(ctx, deadline)
	for {
		res, err := c.fleetLimiter.Allow(ctx, c.rateKey, c.fleetLimit)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return c.waitLocalSlot(ctx, deadline)
		}
		if res.Allowed > 0 {
			return nil
		}
		wait := res.RetryAfter
		if !deadline.IsZero() && time.Until(deadline) < wait {
			return &UnavailableError{RetryAfter: wait, Reason: "Polyv rate limit reached"}
		}
		select {
		case <-ctx.Done():
			return &UnavailableError{RetryAfter: wait, Reason: "Polyv rate limit reached"}
		case <-time.After(wait):
		}
	}
}

// waitLocalSlot waits for a slot of this process's own Polyv rate limit.
func (c *Cache) waitLocalSlot(ctx context.Context, deadline time.Time) error {
	deadline = earliest(ctx, deadline)
	r := c.localLimiter.Reserve()
	wait := r.Delay()
	if wait == 0 {
		return nil
	}
	if !deadline.IsZero() && time.Until(deadline) < wait {
		r.Cancel()
		return &UnavailableError{RetryAfter: wait, Reason: "Polyv rate limit reached"}
	}
	select {
	case <-ctx.Done():
		r.Cancel()
		return &UnavailableError{RetryAfter: wait, Reason: "Polyv rate limit reached"}
	case <-time.After(wait):
		return nil
	}
}

// earliest returns the earlier of deadline and ctx's deadline; zero is none.
func earliest(ctx context.Context, deadline time.Time) time.Time {
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		return d
	}
	return deadline
}
