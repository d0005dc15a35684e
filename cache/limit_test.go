package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/polyv"
)

func TestFleetRateLimit(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		const limit = 20
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.RateLimit = limit; o.FillTimeout = 15 * time.Second })
		fleet := newFleet(t, rdb, up, 3, &opts)

		// 60 distinct misses across the fleet (3 s at the limit), each
		// willing to wait 10 s.
		var failures atomic.Int64
		hammer(60, func(i int) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, _, err := fleet[i%3].Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"}); err != nil {
				failures.Add(1)
			}
		})
		if failures.Load() != 0 {
			t.Fatalf("%d requests failed", failures.Load())
		}
		up.mu.Lock()
		times := up.times
		up.mu.Unlock()
		// In any one-second window, at most the limit plus the deepest burst
		// (GCRA), and one call whose goroutine a loaded machine started late:
		// the times are taken when the calls start, not when Redis granted
		// their slots.
		burst := fleet[0].sched.MaxBurst() + 1
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
	burst := useBurst(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, res, err := c.Get(ctx, Key{ChannelID: "c", UserID: "1", Role: "viewer"})
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || res != ResultError {
		t.Fatalf("Get() = %v, %v; want *UnavailableError", res, err)
	}
	if unavailable.RetryAfter <= 0 || unavailable.RetryAfterSeconds() != "1" {
		t.Errorf("RetryAfter = %v (%s s)", unavailable.RetryAfter, unavailable.RetryAfterSeconds())
	}
	if got := up.calls.Load(); got != int64(burst) {
		t.Errorf("upstream calls = %d, want %d (the burst)", got, burst)
	}
}

// commandCounter counts the Redis commands a client sends.
type commandCounter struct{ n atomic.Int64 }

func (h *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(int64(len(cmds))); return next(ctx, cmds) }
}

// queuedStampede asks for 60 new keys at once on a fleet of three, at a
// limit of 20/s, each key on copies instances (1 to 3). It returns the Polyv
// calls made and the Redis commands sent per key.
func queuedStampede(t *testing.T, copies int) (calls int64, perKey float64) {
	rdb := realRedis(t)
	const keys = 60
	up := &fakeUpstream{}
	opts := testOptions(func(o *Options) { o.RateLimit = 20 })
	var counter commandCounter
	fleet := make([]*Cache, 3)
	for i := range fleet {
		client := ownClient(t, rdb)
		client.AddHook(&counter)
		fleet[i] = newCache(t, client, up, opts)
	}
	counter.n.Store(0)
	hammer(copies*keys, func(i int) {
		key, instance := i%keys, (i%keys+i/keys)%len(fleet)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if _, _, err := fleet[instance].Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(key), Role: "viewer"}); err != nil {
			t.Errorf("Get(): %v", err)
		}
	})
	perKey = float64(counter.n.Load()) / keys
	t.Logf("%d Polyv calls and %.1f Redis commands per key for %d keys, each asked on %d instances", up.calls.Load(), perKey, keys, copies)
	return up.calls.Load(), perKey
}

// Fetches queued at the rate limit wait in-process: Redis commands per fetch
// stay a small constant however many wait. (Each call also checks the
// fleet's cool-down: one command.)
func TestQueuedFetchesDoNotFloodRedis(t *testing.T) {
	if _, perKey := queuedStampede(t, 1); perKey > 16 {
		t.Errorf("%.1f Redis commands per fetch, want at most 16", perKey)
	}
}

// The same keys asked on every instance while the fetches queue at the rate
// limit: the holder keeps its lease while it waits for a slot, however much
// the queue grew since it took the lease, so each key costs one Polyv call;
// and the instances without the lease wait for the holder's store at a
// small constant cost to Redis, not a check every PollInterval for as long
// as the queue takes.
func TestQueuedHolderKeepsItsLease(t *testing.T) {
	calls, perKey := queuedStampede(t, 3)
	if calls != 60 {
		t.Errorf("Polyv calls = %d, want one per key (60)", calls)
	}
	// The holder's share is about 12 (see above); each waiter reads the
	// value, checks the lease, and reads the value again when woken. Checking
	// every PollInterval instead would cost over 150.
	if perKey > 32 {
		t.Errorf("%.1f Redis commands per key, want at most 32", perKey)
	}
}

// The shared fetch runs on its own budget: a follower with a long deadline
// gets its token even when the leader's short deadline ends in the queue.
func TestFollowerOutlivesTheLeadersDeadline(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.RateLimit = 10 })
		fleet := newFleet(t, rdb, up, 2, &opts)
		// Another instance keeps the limit busy.
		busy := make(chan struct{})
		go func() {
			defer close(busy)
			hammer(10, func(i int) {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				_, _, _ = fleet[1].Get(ctx, Key{ChannelID: "busy", UserID: fmt.Sprint(i), Role: "viewer"})
			})
		}()
		eventually(t, "the other instance to spend the budget", func() bool { return up.calls.Load() > 0 })
		leaderErr := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
			defer cancel()
			_, _, err := fleet[0].Get(ctx, viewerKey)
			leaderErr <- err
		}()
		eventually(t, "the leader to begin the fill, or to be refused", func() bool { return fleet[0].fillCallers(viewerKey) == 1 || len(leaderErr) > 0 })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		tok, res, err := fleet[0].Get(ctx, viewerKey)
		if err != nil || tok.Token == "" {
			t.Errorf("follower Get() = %v, %v; want a token", res, err)
		}
		// The leader may win a slot in time; if not, the rate limit is why.
		var unavailable *UnavailableError
		if err := <-leaderErr; err != nil && !errors.As(err, &unavailable) {
			t.Errorf("leader Get() error = %v, want a token or *UnavailableError", err)
		}
		<-busy
	})
}

// A caller that cancels gets its context's error, not "unavailable".
func TestCancelledCallerGetsItsContextError(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(func(o *Options) { o.RateLimit = 1 }))
	useBurst(t, c)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, err := c.Get(ctx, Key{ChannelID: "c", UserID: "1", Role: "viewer"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Get() error = %v, want context.Canceled", err)
	}
}

// Every key the cache writes, the limiter's included, starts with the
// prefix, so that a Redis ACL scoped to it works.
func TestEveryKeyUnderThePrefix(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.Prefix = "acl:"; o.Now = clk.Now; o.RefreshBackoff = time.Minute }))
	ctx := context.Background()
	fetched(t, c)
	up.setErr(&polyv.APIError{Code: 500, Message: "fail"})
	clk.Add(5*time.Hour + time.Minute)
	_, _, _ = c.Get(ctx, viewerKey) // a failed refresh: a backoff key
	quiesce(c)
	if up.calls.Load() != 2 {
		t.Fatalf("%d Polyv calls, want 2: the fetch and the failed refresh", up.calls.Load())
	}
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "acl:") {
			t.Errorf("key %q is outside the prefix", k)
		}
	}
}

// useBurst takes the viewers' burst of c's rate limit, a token at a time,
// until a Get finds no slot at once, and returns how many it took.
func useBurst(tb testing.TB, c *Cache) int {
	tb.Helper()
	for i := range 20 {
		// A slot comes within a round trip; with none, the refusal comes at
		// once, the next being a second away at 1/s.
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		_, _, err := c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint("burst", i), Role: "viewer"})
		cancel()
		var u *UnavailableError
		if errors.As(err, &u) {
			return i
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	tb.Fatal("no end to the burst")
	return 0
}
