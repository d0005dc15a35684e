package cache

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// ErrRedisUnavailable is returned, wrapped, for Redis work skipped or failed
// because Redis is down.
var ErrRedisUnavailable = errors.New("cache: redis unavailable")

func redisFailure(err error) error {
	if errors.Is(err, ErrRedisUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrRedisUnavailable, err)
}

// newBreaker returns the Redis circuit breaker; onOpen runs each time it opens.
func newBreaker(o Options, m *Metrics, onOpen func()) *gobreaker.CircuitBreaker[struct{}] {
	return gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "redis",
		MaxRequests: 1,
		Timeout:     o.BreakerOpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= o.BreakerFailures },
		// Replies from Redis, misses included, prove it is up.
		IsSuccessful: func(err error) bool { return err == nil || !isOutage(err) },
		// A caller that gave up, or whose deadline ended, says nothing about Redis.
		IsExcluded: func(err error) bool { return errors.Is(err, errCallerGone) },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			if to == gobreaker.StateClosed {
				m.redisCircuitOpen.Set(0)
			} else {
				m.redisCircuitOpen.Set(1)
			}
			if to == gobreaker.StateOpen {
				onOpen()
			}
			if o.OnCircuitChange != nil {
				o.OnCircuitChange(from.String(), to.String())
			}
		},
	})
}

// isOutage tells a failure to reach Redis from a reply Redis sent.
func isOutage(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	var reply redis.Error
	return !errors.As(err, &reply)
}

// breakerHook runs every Redis command through the circuit breaker, so that
// while Redis is down commands fail at once instead of each waiting for a
// timeout.
type breakerHook struct {
	cb      *gobreaker.CircuitBreaker[struct{}]
	metrics *Metrics
}

var _ redis.Hook = breakerHook{}

func (h breakerHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h breakerHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if ctx.Value(insideBreaker{}) != nil {
			return next(ctx, cmd) // a handshake inside a guarded command
		}
		ctx = context.WithValue(ctx, insideBreaker{}, true)
		err := h.guard(ctx, func(ctx context.Context) error { return next(ctx, cmd) })
		h.countRefused(err) // go-redis sets cmd's error only after its hooks
		return err
	}
}

// ProcessPipelineHook runs pipelines (the batched GETs) through the breaker
// too.
func (h breakerHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if ctx.Value(insideBreaker{}) != nil {
			return next(ctx, cmds)
		}
		ctx = context.WithValue(ctx, insideBreaker{}, true)
		err := h.guard(ctx, func(ctx context.Context) error { return next(ctx, cmds) })
		for _, cmd := range cmds {
			h.countRefused(cmd.Err())
		}
		return err
	}
}

// countRefused counts err if Redis refused a command with an error reply,
// other than a miss or a script to send again (NOSCRIPT): a write refused at
// maxmemory, a replica's READONLY, an ACL's NOPERM. Redis answers, so the
// circuit stays closed, and without Redis's writes each instance fetches on
// its own: this count is where an operator sees it.
func (h breakerHook) countRefused(err error) {
	var reply redis.Error
	if err != nil && errors.As(err, &reply) && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "NOSCRIPT") {
		h.metrics.redisErrors.Inc()
	}
}

// insideBreaker marks a context whose commands skip the breaker. A guarded
// command's context has it: go-redis sends a new connection's handshake
// (HELLO) inside the command that needs it, and a second pass through a
// half-open breaker would fail the very probe that should close it.
type insideBreaker struct{}

// unguarded returns ctx with its commands off the breaker, for background
// work that must reach Redis as soon as it answers: the pub/sub listener,
// whose new subscription an open circuit would otherwise hold back, the
// local cache serving deleted tokens meanwhile.
func unguarded(ctx context.Context) context.Context {
	return context.WithValue(ctx, insideBreaker{}, true)
}

// errCallerGone marks, for the breaker only, a command that failed while its
// caller's context was done: the caller's deadline, not Redis, ended it.
var errCallerGone = errors.New("cache: caller gone")

// guard runs one command or pipeline through the breaker. A command whose
// caller's ctx ended says nothing about Redis.
func (h breakerHook) guard(ctx context.Context, run func(context.Context) error) error {
	var cmdErr error
	_, err := h.cb.Execute(func() (struct{}, error) {
		cmdErr = run(ctx)
		if cmdErr != nil && callerGone(ctx) {
			return struct{}{}, errCallerGone
		}
		return struct{}{}, cmdErr
	})
	if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
		return fmt.Errorf("%w: circuit open", ErrRedisUnavailable)
	}
	if isOutage(cmdErr) && !errors.Is(err, errCallerGone) {
		h.metrics.redisErrors.Inc()
	}
	return cmdErr
}

// callerGone reports whether ctx is done or its deadline has passed; a
// network deadline set from ctx can fire a moment before ctx itself reports it.
func callerGone(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}
