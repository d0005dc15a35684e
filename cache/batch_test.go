package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// tripCounter counts round trips: single commands and whole pipelines.
type tripCounter struct{ n atomic.Int64 }

func (h *tripCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *tripCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *tripCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// Concurrent Redis hits share round trips, and each gets its own value.
func TestConcurrentRedisHitsShareRoundTrips(t *testing.T) {
	rdb := realRedis(t)
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(func(o *Options) { o.LocalSize = 0 }))
	ctx := context.Background()
	want := map[int]string{}
	for i := range 100 {
		tok, _, err := c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"})
		if err != nil {
			t.Fatal(err)
		}
		want[i] = tok.Token
	}
	var trips tripCounter
	rdb.AddHook(&trips)
	hammer(1000, func(i int) {
		tok, res, err := c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i % 100), Role: "viewer"})
		if err != nil || res != ResultHitRedis || tok.Token != want[i%100] {
			t.Errorf("Get(%d) = %q, %v, %v; want %q from Redis", i%100, tok.Token, res, err, want[i%100])
		}
	})
	if got := trips.n.Load(); got >= 1000 {
		t.Errorf("%d round trips for 1000 concurrent hits: no batching", got)
	}
	t.Logf("%d round trips for 1000 concurrent Redis hits", trips.n.Load())
}
