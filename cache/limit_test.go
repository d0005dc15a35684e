package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestFleetRateLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		const limit = 20
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.RateLimit = limit })
		fleet := newFleet(t, rdb, up, 3, &opts)

		// 90 distinct misses across the fleet, each willing to wait 10s.
		var failures atomic.Int64
		hammer(90, func(i int) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, _, err := fleet[i%3].Get(ctx, ChatKey("c", fmt.Sprint(i), "viewer", "")); err != nil {
				failures.Add(1)
			}
		})
		if failures.Load() != 0 {
			t.Fatalf("%d requests failed", failures.Load())
		}
		up.mu.Lock()
		times := up.times
		up.mu.Unlock()
		// In any one-second window, at most the limit plus the burst (GCRA).
		burst := max(1, limit/10)
		for i := range times {
			n := 0
			for _, u := range times[i:] {
				if u.Sub(times[i]) < time.Second {
					n++
				}
			}
			if n > limit+burst {
				t.Fatalf("%d upstream calls within one second, limit %d (+%d burst)", n, limit, burst)
			}
		}
	})
}

func TestRateLimitUnavailableWithinDeadline(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.RateLimit = 1 }))
	if _, _, err := c.Get(context.Background(), ChatKey("c", "0", "viewer", "")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, res, err := c.Get(ctx, ChatKey("c", "1", "viewer", ""))
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || res != ResultError {
		t.Fatalf("Get() = %v, %v; want *UnavailableError", res, err)
	}
	if unavailable.RetryAfter <= 0 || unavailable.RetryAfterSeconds() != "1" {
		t.Errorf("RetryAfter = %v (%s s)", unavailable.RetryAfter, unavailable.RetryAfterSeconds())
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}
