package cache

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// UnavailableError says no Polyv call could be made in time: the rate limit
// had no slot before the caller's deadline.
type UnavailableError struct {
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("cache: upstream unavailable: Polyv rate limit reached; retry after %v", e.RetryAfter)
}

// RetryAfterSeconds is RetryAfter rounded up to whole seconds, at least 1,
// as a Retry-After header wants it.
func (e *UnavailableError) RetryAfterSeconds() string {
	return strconv.Itoa(max(1, int(math.Ceil(e.RetryAfter.Seconds()))))
}

// errUseLocal tells a queued fetch that Redis failed: take a local slot.
var errUseLocal = errors.New("cache: fleet limiter unavailable")

// errClosed is returned to fetches still queued when the cache closes.
var errClosed = errors.New("cache: closed")

// slotQueue holds this instance's fetches waiting for a fleet-wide slot, in
// arrival order. One poller asks the Redis limiter for as many slots as there
// are waiters, once per emission interval at most, so Redis commands per
// fetch stay a small constant however many wait.
type slotQueue struct {
	mu      sync.Mutex
	waiting list.List    // of chan error, each buffered 1
	size    atomic.Int64 // waiting.Len(), readable without the lock
	polling bool
	queued  sync.Map // value key -> struct{}: fills waiting for a slot now
}

// queueWait is how long this instance's queue needs at the fleet-wide rate.
func (c *Cache) queueWait() time.Duration {
	return time.Duration(c.slots.size.Load()) * c.interval()
}

// interval is the fleet-wide emission interval.
func (c *Cache) interval() time.Duration { return time.Second / time.Duration(c.opts.RateLimit) }

// waitSlot waits for a slot to call Polyv for key: the fleet's, or this
// process's own when Redis is out of use. While it waits, callers of key that
// give up are told the rate limit is why.
func (c *Cache) waitSlot(ctx context.Context, key string, fleet bool) error {
	c.slots.queued.Store(key, struct{}{})
	defer c.slots.queued.Delete(key)
	if fleet {
		return c.waitFleetSlot(ctx)
	}
	return c.waitLocalSlot(ctx)
}

// waitFleetSlot queues for a slot of the fleet-wide limit. It gives up at
// once with *UnavailableError when ctx's deadline comes before this
// instance's queue could drain, and falls back to the local limit when Redis
// fails.
func (c *Cache) waitFleetSlot(ctx context.Context) error {
	done := make(chan error, 1)
	q := &c.slots
	q.mu.Lock()
	ahead := q.waiting.Len()
	if d, ok := ctx.Deadline(); ok && time.Until(d) < time.Duration(ahead)*c.interval() {
		q.mu.Unlock()
		return &UnavailableError{RetryAfter: time.Duration(ahead+1) * c.interval()}
	}
	el := q.waiting.PushBack(done)
	q.size.Store(int64(q.waiting.Len()))
	start := !q.polling
	q.polling = true
	q.mu.Unlock()
	if start {
		c.bg.Add(1)
		go c.pollSlots()
	}
	select {
	case err := <-done:
		if errors.Is(err, errUseLocal) {
			return c.waitLocalSlot(ctx)
		}
		return err
	case <-ctx.Done():
		q.mu.Lock()
		q.waiting.Remove(el)
		left := q.waiting.Len()
		q.size.Store(int64(left))
		q.mu.Unlock()
		return c.gaveUp(ctx, time.Duration(left+1)*c.interval())
	}
}

// pollSlots grants slots to the queue, front first, until it is empty.
func (c *Cache) pollSlots() {
	defer c.bg.Done()
	q := &c.slots
	for {
		q.mu.Lock()
		n := q.waiting.Len()
		if n == 0 || c.life.Err() != nil {
			q.grant(n, errClosed)
			q.polling = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()

		res, err := c.fleetLimiter.AllowAtMost(c.life, c.rateKey, c.fleetLimit, n)
		q.mu.Lock()
		if err != nil {
			q.grant(n, errUseLocal)
		} else {
			q.grant(res.Allowed, nil)
		}
		q.mu.Unlock()
		if err != nil || res.Allowed >= n {
			continue
		}
		// Asking no more often than half a burst's worth of slots lets one
		// answer grant several; jitter keeps the fleet's pollers apart.
		wait := max(res.RetryAfter, time.Duration(c.fleetLimit.Burst)*c.interval()/2) + mrand.N(c.interval()/4+1)
		select {
		case <-time.After(wait):
		case <-c.life.Done():
		}
	}
}

// grant hands err (nil: a slot) to the first n waiters. Call it locked.
func (q *slotQueue) grant(n int, err error) {
	for ; n > 0 && q.waiting.Len() > 0; n-- {
		done := q.waiting.Remove(q.waiting.Front()).(chan error)
		done <- err
	}
	q.size.Store(int64(q.waiting.Len()))
}

// waitLocalSlot waits for a slot of this process's own Polyv rate limit.
func (c *Cache) waitLocalSlot(ctx context.Context) error {
	r := c.localLimiter.Reserve()
	wait := r.Delay()
	if wait == 0 {
		return nil
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
		r.Cancel()
		return &UnavailableError{RetryAfter: wait}
	}
	select {
	case <-ctx.Done():
		r.Cancel()
		return c.gaveUp(ctx, wait)
	case <-time.After(wait):
		return nil
	}
}

// gaveUp is the error of a caller whose ctx ended while it waited for a
// slot: its own cancellation, or its deadline, which the rate limit caused.
func (c *Cache) gaveUp(ctx context.Context, retryAfter time.Duration) error {
	if errors.Is(ctx.Err(), context.Canceled) {
		return ctx.Err()
	}
	return &UnavailableError{RetryAfter: retryAfter}
}

// fillQueued reports whether the fill of key waits for a rate-limit slot.
func (c *Cache) fillQueued(key string) bool {
	_, ok := c.slots.queued.Load(key)
	return ok
}

// limiterKeys keeps the rate limiter's key under the cache's prefix:
// redis_rate puts "rate:" in front of every key, outside a prefix-scoped ACL.
type limiterKeys struct{ rediser }

func (l limiterKeys) strip(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = strings.TrimPrefix(k, "rate:")
	}
	return out
}

func (l limiterKeys) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return l.rediser.Eval(ctx, script, l.strip(keys), args...)
}

func (l limiterKeys) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return l.rediser.EvalSha(ctx, sha1, l.strip(keys), args...)
}

func (l limiterKeys) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return l.rediser.EvalRO(ctx, script, l.strip(keys), args...)
}

func (l limiterKeys) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return l.rediser.EvalShaRO(ctx, sha1, l.strip(keys), args...)
}
