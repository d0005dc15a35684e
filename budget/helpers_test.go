package budget

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testwait"
)

// backend is a Redis to run a test on.
type backend struct {
	name string
	open func(tb testing.TB) func(tb testing.TB) redis.UniversalClient // a client per instance
}

func backends() []backend {
	return []backend{
		{"miniredis", func(tb testing.TB) func(testing.TB) redis.UniversalClient {
			mr := miniredis.RunT(tb)
			return func(tb testing.TB) redis.UniversalClient {
				c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
				tb.Cleanup(func() { _ = c.Close() })
				return c
			}
		}},
		{"redis-server", func(tb testing.TB) func(testing.TB) redis.UniversalClient {
			srv := redistest.Start(tb)
			return func(tb testing.TB) redis.UniversalClient { return srv.Client(tb) }
		}},
	}
}

func eachBackend(t *testing.T, run func(t *testing.T, client func(testing.TB) redis.UniversalClient)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { run(t, b.open(t)) })
	}
}

// fleetOf starts n schedulers on one Redis, as n instances would run.
func fleetOf(tb testing.TB, client func(testing.TB) redis.UniversalClient, n int, opts Options) []*Scheduler {
	tb.Helper()
	if opts.Prefix == "" {
		opts.Prefix = "t:upstream"
	}
	fleet := make([]*Scheduler, n)
	for i := range fleet {
		fleet[i] = New(client(tb), opts)
		tb.Cleanup(fleet[i].Close)
	}
	return fleet
}

// until is a Request deadline d from now.
func until(d time.Duration) func() time.Time {
	t := time.Now().Add(d)
	return func() time.Time { return t }
}

// waitAllIn waits until n fetches are in s's queue or granted.
func waitAllIn(tb testing.TB, s *Scheduler, granted *atomic.Int64, n int) {
	tb.Helper()
	testwait.Eventually(tb, 5*time.Second, fmt.Sprint(n, " fetches to queue"), func() bool { return s.Queued()+int(granted.Load()) >= n })
}

// flood queues n fetches of key on s in the background, each waiting until
// ctx ends; granted counts their slots.
func flood(ctx context.Context, s *Scheduler, key string, n int, granted func()) {
	for range n {
		go func() {
			if s.Wait(ctx, Request{Key: key}) == nil {
				granted()
			}
		}()
	}
}
