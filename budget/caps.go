package budget

import (
	"container/list"
	"context"
	"errors"
	mrand "math/rand/v2"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"golang.org/x/time/rate"
)

// errUseLocal tells a capped fetch that Redis failed: take a local slot.
var errUseLocal = errors.New("budget: fleet limiter unavailable")

// capQueue is a narrower limit than the fleet's rate, an API key's own rate
// or the bulk share: fleet-wide in Redis (or local while Redis is out of
// use), with this instance's fetches waiting for it in arrival order. One
// poller asks for as many slots as there are waiters, once per emission
// interval at most.
type capQueue struct {
	key      string
	why      Reason
	limit    redis_rate.Limit
	interval time.Duration
	local    *rate.Limiter

	mu      sync.Mutex
	waiting list.List // of chan error, each buffered 1
	polling bool
}

func newCapQueue(key string, perSecond int, why Reason) *capQueue {
	// At least 2: with a burst of 1, redis_rate's floating-point arithmetic
	// can leave a fresh key refusing every request, for ever.
	burst := max(2, perSecond/10)
	return &capQueue{
		key:      key,
		why:      why,
		limit:    redis_rate.Limit{Rate: perSecond, Period: time.Second, Burst: burst},
		interval: time.Second / time.Duration(perSecond),
		local:    rate.NewLimiter(rate.Limit(perSecond), burst),
	}
}

// wait queues for a slot of q. It gives up at once when deadline comes
// before the queue ahead could drain.
func (q *capQueue) wait(ctx context.Context, s *Scheduler, deadline time.Time) error {
	if !s.opts.Fleet() {
		return q.waitLocal(ctx, deadline)
	}
	done := make(chan error, 1)
	q.mu.Lock()
	ahead := q.waiting.Len()
	if !deadline.IsZero() && time.Until(deadline) < time.Duration(ahead)*q.interval {
		q.mu.Unlock()
		return unavailable(q.why, time.Duration(ahead+1)*q.interval)
	}
	el := q.waiting.PushBack(done)
	start := !q.polling
	q.polling = true
	q.mu.Unlock()
	if start && !s.spawn(func() { q.poll(s) }) {
		q.mu.Lock()
		q.waiting.Remove(el)
		q.mu.Unlock()
		return ErrClosed
	}
	select {
	case err := <-done:
		if errors.Is(err, errUseLocal) {
			return q.waitLocal(ctx, deadline)
		}
		return err
	case <-ctx.Done():
		q.mu.Lock()
		q.waiting.Remove(el)
		q.mu.Unlock()
		return ctx.Err()
	}
}

// poll grants q's slots, front first, until q is empty.
func (q *capQueue) poll(s *Scheduler) {
	defer s.bg.Done()
	for {
		q.mu.Lock()
		n := q.waiting.Len()
		if n == 0 || s.life.Err() != nil {
			q.grant(n, ErrClosed)
			q.polling = false
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()

		ctx, cancel := context.WithTimeout(s.life, 2*time.Second)
		got, retry, err := takeWhole(ctx, s.limiter, q.key, q.limit, n)
		cancel()
		q.mu.Lock()
		if err != nil {
			q.grant(n, errUseLocal)
		} else {
			q.grant(got, nil)
		}
		q.mu.Unlock()
		if err != nil || got >= n {
			continue
		}
		wait := max(retry, min(time.Duration(q.limit.Burst)*q.interval/2, 250*time.Millisecond)) + mrand.N(q.interval/4+1)
		select {
		case <-time.After(wait):
		case <-s.life.Done():
		}
	}
}

// grant hands err (nil: a slot) to the first n waiters. Call it locked.
func (q *capQueue) grant(n int, err error) {
	for ; n > 0 && q.waiting.Len() > 0; n-- {
		q.waiting.Remove(q.waiting.Front()).(chan error) <- err
	}
}

// waitLocal waits for a slot of q's limit in this process alone.
func (q *capQueue) waitLocal(ctx context.Context, deadline time.Time) error {
	r := q.local.Reserve()
	wait := r.Delay()
	if wait == 0 {
		return nil
	}
	if !deadline.IsZero() && time.Until(deadline) < wait {
		r.Cancel()
		return unavailable(q.why, wait)
	}
	select {
	case <-ctx.Done():
		r.Cancel()
		return ctx.Err()
	case <-time.After(wait):
		return nil
	}
}

// AllowDelete takes one of key's DELETE slots: fleet-wide, or this
// process's own while Redis is out of use.
func (s *Scheduler) AllowDelete(ctx context.Context, key string, fleet bool) error {
	limit := s.opts.DeleteRate
	if fleet {
		res, err := s.limiter.Allow(ctx, s.opts.Prefix+":delete:"+member(key), redis_rate.PerSecond(limit))
		if err == nil {
			if res.Allowed == 0 {
				return s.refuse(unavailable(ReasonDeleteRate, res.RetryAfter))
			}
			return nil
		}
	}
	b, _ := s.deletes.LoadOrStore(key, newLocalBucket(limit, limit))
	if got, retry, _ := b.(*localBucket).take(ctx, limit, 1); got == 0 {
		return s.refuse(unavailable(ReasonDeleteRate, retry))
	}
	return nil
}
