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

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"
)

// UnavailableError says no Polyv call could be made in time: the rate limit
// had no slot before the caller's deadline.
type UnavailableError struct {
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("cache: upstream unavailable: Polyv rate limit reached; retry after %v", e.RetryAfter)
}

// unavailable is the error of a fetch that got no rate-limit slot in time.
func unavailable(retryAfter time.Duration) error { return &UnavailableError{RetryAfter: retryAfter} }

// RetryAfterSeconds is RetryAfter rounded up to whole seconds, at least 1,
// as a Retry-After header wants it.
func (e *UnavailableError) RetryAfterSeconds() string {
	return strconv.Itoa(max(1, int(math.Ceil(e.RetryAfter.Seconds()))))
}

// errUseLocal tells a queued fetch that Redis failed: take a local slot.
var errUseLocal = errors.New("cache: fleet limiter unavailable")

// errClosed is returned to fetches still queued when the cache closes.
var errClosed = errors.New("cache: closed")

// Caller says on whose behalf a request runs, for the Polyv budget: every
// fetch takes a slot of the fleet-wide limit, a bulk item also one of the
// bulk share, and a caller with a Rate also one of its own limit.
type Caller struct {
	Name  string // the API key's name; empty for the service itself
	Route string // for the audit record
	Rate  int    // this caller's own Polyv fetches per second; 0: none
	Bulk  bool   // a bulk item, held to Options.BulkShare
}

type callerKey struct{}

// WithCaller returns ctx carrying who the request is for.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the Caller ctx carries; the zero Caller is the service.
func CallerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// slotQueue is one rate limit, fleet-wide in Redis (or local while Redis is
// out of use), and this instance's fetches waiting for it in arrival order.
// One poller asks the Redis limiter for as many slots as there are waiters,
// once per emission interval at most, so Redis commands per fetch stay a
// small constant however many wait.
type slotQueue struct {
	key      string
	limit    redis_rate.Limit
	interval time.Duration
	local    *rate.Limiter

	mu      sync.Mutex
	waiting list.List // of chan error, each buffered 1
	polling bool
	size    atomic.Int64 // waiting.Len(), readable without the lock
}

func newSlotQueue(key string, perSecond int) *slotQueue {
	// A burst of a tenth of the rate, and at least 2: with a burst of 1,
	// redis_rate's floating-point arithmetic can leave a fresh key refusing
	// every request, for ever.
	burst := max(2, perSecond/10)
	return &slotQueue{
		key:      key,
		limit:    redis_rate.Limit{Rate: perSecond, Period: time.Second, Burst: burst},
		interval: time.Second / time.Duration(perSecond),
		local:    rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// wait is how long the queue needs to drain at its rate.
func (q *slotQueue) wait() time.Duration { return time.Duration(q.size.Load()) * q.interval }

// queueWait is how long this instance's fleet-wide queue needs to drain.
func (c *Cache) queueWait() time.Duration { return c.global.wait() }

// interval is the fleet-wide emission interval.
func (c *Cache) interval() time.Duration { return c.global.interval }

// queuesFor lists the limits a fetch for ctx's caller waits for, narrowest
// first, so that a slot of the fleet-wide limit is never held while waiting
// for another.
func (c *Cache) queuesFor(ctx context.Context) []*slotQueue {
	caller := CallerFrom(ctx)
	var qs []*slotQueue
	if caller.Rate > 0 && caller.Name != "" {
		qs = append(qs, c.queue("key:"+caller.Name, caller.Rate))
	}
	if caller.Bulk {
		qs = append(qs, c.bulk)
	}
	return append(qs, c.global)
}

// queue returns the queue of a named limit at perSecond, made on first use.
func (c *Cache) queue(name string, perSecond int) *slotQueue {
	id := name + "@" + strconv.Itoa(perSecond)
	if q, ok := c.queues.Load(id); ok {
		return q.(*slotQueue)
	}
	q, _ := c.queues.LoadOrStore(id, newSlotQueue(c.opts.Prefix+keyVersion+":upstream:"+name, perSecond))
	return q.(*slotQueue)
}

// waitSlot waits for the slots needed to call Polyv for key: of the fleet's
// limits, or of this process's own while Redis is out of use. While it
// waits, callers of key that give up are told the rate limit is why.
func (c *Cache) waitSlot(ctx context.Context, key string, fleet bool) error {
	// A refresh and a fill of one key may both wait: each removes only its
	// own mark.
	mark := new(byte)
	c.queued.Store(key, mark)
	defer c.queued.CompareAndDelete(key, mark)
	for _, q := range c.queuesFor(ctx) {
		var err error
		if fleet {
			err = c.waitFleetSlot(ctx, q)
		} else {
			err = c.waitLocalSlot(ctx, q)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// waitFleetSlot queues for a slot of q. It gives up at once with
// *UnavailableError when ctx's deadline comes before the queue ahead could
// drain, and falls back to the local limit when Redis fails.
func (c *Cache) waitFleetSlot(ctx context.Context, q *slotQueue) error {
	done := make(chan error, 1)
	q.mu.Lock()
	ahead := q.waiting.Len()
	if d, ok := ctx.Deadline(); ok && time.Until(d) < time.Duration(ahead)*q.interval {
		q.mu.Unlock()
		return unavailable(time.Duration(ahead+1) * q.interval)
	}
	el := q.waiting.PushBack(done)
	q.size.Store(int64(q.waiting.Len()))
	start := !q.polling
	q.polling = true
	q.mu.Unlock()
	if start {
		c.bg.Add(1)
		go c.pollSlots(q)
	}
	select {
	case err := <-done:
		if errors.Is(err, errUseLocal) {
			return c.waitLocalSlot(ctx, q)
		}
		return err
	case <-ctx.Done():
		q.mu.Lock()
		q.waiting.Remove(el)
		left := q.waiting.Len()
		q.size.Store(int64(left))
		q.mu.Unlock()
		return c.gaveUp(ctx, time.Duration(left+1)*q.interval)
	}
}

// pollSlots grants q's slots, front first, until q is empty.
func (c *Cache) pollSlots(q *slotQueue) {
	defer c.bg.Done()
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

		res, err := c.fleetLimiter.AllowAtMost(c.life, q.key, q.limit, n)
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
		wait := max(res.RetryAfter, time.Duration(q.limit.Burst)*q.interval/2) + mrand.N(q.interval/4+1)
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

// waitLocalSlot waits for a slot of q's limit in this process alone.
func (c *Cache) waitLocalSlot(ctx context.Context, q *slotQueue) error {
	r := q.local.Reserve()
	wait := r.Delay()
	if wait == 0 {
		return nil
	}
	if d, ok := ctx.Deadline(); ok && time.Until(d) < wait {
		r.Cancel()
		return unavailable(wait)
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
	return unavailable(retryAfter)
}

// fillQueued reports whether the fill of key waits for a rate-limit slot.
func (c *Cache) fillQueued(key string) bool {
	_, ok := c.queued.Load(key)
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
