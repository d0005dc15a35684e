package cache

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Callers whose own deadline ends say nothing about Redis: on a healthy Redis
// they must never open the circuit.
func TestCallerDeadlinesNeverTripTheBreaker(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{delay: 50 * time.Millisecond}
		c := newCache(t, rdb, up, testOptions(nil))
		for i := range 3 * int(c.opts.BreakerFailures) {
			ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
			_, _, _ = c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"})
			cancel()
		}
		// Deadlines that end while the command is under way.
		hammer(20, func(i int) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%3)*time.Millisecond)
			defer cancel()
			_, _, _ = c.Get(ctx, Key{ChannelID: "d", UserID: fmt.Sprint(i), Role: "viewer"})
		})
		if got := c.RedisCircuit(); got != "closed" {
			t.Errorf("circuit = %s after callers' deadlines on a healthy Redis, want closed", got)
		}
		if got := testutil.ToFloat64(c.metrics.redisErrors); got != 0 {
			t.Errorf("redis errors = %v, want 0: a caller's deadline is not a Redis failure", got)
		}
	})
}
