package cache

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestThousandMissesOneCall(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{delay: 50 * time.Millisecond}
		c := newCache(t, rdb, up, testOptions(nil))
		var tokens stringSet
		var failures atomic.Int64
		hammer(1000, func(int) {
			tok, _, err := c.Get(context.Background(), viewerKey)
			if err != nil {
				failures.Add(1)
				return
			}
			tokens.add(tok.Token)
		})
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls = %d, want 1", got)
		}
		if failures.Load() != 0 || tokens.len() != 1 {
			t.Errorf("failures = %d, distinct tokens = %d; want 0 and 1", failures.Load(), tokens.len())
		}
	})
}

func TestCancelledFirstCallerDoesNotFailOthers(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{delay: 200 * time.Millisecond}
		c := newCache(t, rdb, up, testOptions(nil))

		first, cancel := context.WithCancel(context.Background())
		firstErr := make(chan error, 1)
		go func() { _, _, err := c.Get(first, viewerKey); firstErr <- err }()
		eventually(t, "the first call to reach upstream", func() bool { return up.calls.Load() == 1 })

		var errs atomic.Int64
		done := make(chan struct{})
		go func() {
			hammer(50, func(int) {
				if _, _, err := c.Get(context.Background(), viewerKey); err != nil {
					errs.Add(1)
				}
			})
			close(done)
		}()
		eventually(t, "other callers to join the fill", func() bool { return c.fillCallers(viewerKey) > 1 })
		cancel()
		if err := <-firstErr; !errors.Is(err, context.Canceled) {
			t.Errorf("first caller error = %v, want context.Canceled", err)
		}
		<-done
		if errs.Load() != 0 {
			t.Errorf("%d of the other callers failed", errs.Load())
		}
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls = %d, want 1", got)
		}
	})
}

func TestCallerWaitsOnlyItsOwnDeadline(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{delay: time.Second}
	c := newCache(t, rdb, up, testOptions(nil))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, res, err := c.Get(ctx, viewerKey)
	if !errors.Is(err, context.DeadlineExceeded) || res != ResultError {
		t.Fatalf("Get() = %v, %v; want deadline exceeded", res, err)
	}
	// The detached fetch finishes for the next caller.
	eventually(t, "the detached fetch to store the token", func() bool {
		_, res, err := c.Get(context.Background(), viewerKey)
		return err == nil && res != ResultMiss
	})
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}

func TestFaultyUpstreamDoesNotWedgeKey(t *testing.T) {
	for _, fault := range []string{"panic", "hang"} {
		t.Run(fault, func(t *testing.T) {
			rdb, _ := backends()[0].open(t)
			up := &fakeUpstream{panic: fault == "panic", hang: fault == "hang"}
			c := newCache(t, rdb, up, testOptions(func(o *Options) { o.FillTimeout = 200 * time.Millisecond }))
			if _, _, err := c.Get(context.Background(), viewerKey); err == nil {
				t.Fatal("Get() error = nil with a faulty upstream")
			}
			up.mu.Lock()
			up.panic, up.hang = false, false
			up.mu.Unlock()
			tok, _, err := c.Get(context.Background(), viewerKey)
			if err != nil || tok.Token == "" {
				t.Fatalf("after the fault, Get() = %q, %v", tok.Token, err)
			}
		})
	}
}

func TestFleetCoalescing(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{delay: 100 * time.Millisecond}
		fleet := newFleet(t, rdb, up, 3, nil)

		t.Run("one key", func(t *testing.T) {
			var failures atomic.Int64
			hammer(300, func(i int) {
				if _, _, err := fleet[i%3].Get(context.Background(), viewerKey); err != nil {
					failures.Add(1)
				}
			})
			if got := up.calls.Load(); got != 1 || failures.Load() != 0 {
				t.Errorf("upstream calls = %d, failures = %d; want 1 and 0", got, failures.Load())
			}
		})
		t.Run("100 keys", func(t *testing.T) {
			up.calls.Store(0)
			var failures atomic.Int64
			hammer(100*3*4, func(i int) {
				k := Key{ChannelID: "ch", UserID: fmt.Sprintf("user-%d", i%100), Role: "viewer"}
				if _, _, err := fleet[i%3].Get(context.Background(), k); err != nil {
					failures.Add(1)
				}
			})
			if got := up.calls.Load(); got != 100 || failures.Load() != 0 {
				t.Errorf("upstream calls = %d, failures = %d; want 100 and 0", got, failures.Load())
			}
		})
	})
}

func TestDeadLeaseHolderIsTakenOver(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, expire := b.open(t)
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.LeaseTTL = 500 * time.Millisecond })
		fleet := newFleet(t, rdb, up, 2, &opts)
		// A holder that died mid-fetch leaves its lease behind.
		keys := viewerKey.redisKeys("tc:")
		if err := rdb.Set(context.Background(), keys.lease(), "dead-holder", opts.LeaseTTL).Err(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		done := make(chan error, 2)
		for _, c := range fleet {
			go func() { _, _, err := c.Get(context.Background(), viewerKey); done <- err }()
		}
		time.Sleep(100 * time.Millisecond)
		if got := up.calls.Load(); got != 0 {
			t.Fatalf("upstream calls while the lease is held = %d, want 0", got)
		}
		expire(opts.LeaseTTL)
		for range fleet {
			if err := <-done; err != nil {
				t.Errorf("Get() error = %v", err)
			}
		}
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls = %d, want 1", got)
		}
		// Loose bound, for a noisy machine: about one lease period, not more.
		if waited := time.Since(start); waited > 5*opts.LeaseTTL {
			t.Errorf("waiters were delayed %v, over 5 lease periods", waited)
		}
	})
}

func newFleet(tb testing.TB, rdb redis.UniversalClient, up Upstream, n int, opts *Options) []*Cache {
	tb.Helper()
	o := testOptions(nil)
	if opts != nil {
		o = *opts
	}
	fleet := make([]*Cache, n)
	for i := range fleet {
		fleet[i] = newCache(tb, ownClient(tb, rdb), up, o)
	}
	return fleet
}

// Found by TestRandomFaults: an instance that read an expired value, and
// tried the lease only after another instance had fetched and stored a new
// token, fetched again.
func TestLeaseOverAnExpiredValueRechecksIt(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &fakeUpstream{}
	opts := testOptions(func(o *Options) { o.Now = clk.Now; o.LocalSize = 0 })
	fleet := newFleet(t, rdb, up, 2, &opts)
	a, b := fleet[0], fleet[1]
	ctx := context.Background()
	fetched(t, a)
	clk.Add(6 * time.Hour) // expired, though Redis still holds it
	var fresh Token
	b.afterUntrustedRead = func() {
		b.afterUntrustedRead = nil
		fresh, _, _ = a.Get(ctx, viewerKey)
		settle(a)
	}
	tok, _, err := b.Get(ctx, viewerKey)
	if err != nil || tok.Token != fresh.Token {
		t.Errorf("Get() = %q, %v; want %q, the token the other instance just fetched", tok.Token, err, fresh.Token)
	}
	if got := up.calls.Load(); got != 2 {
		t.Errorf("upstream calls = %d, want 2", got)
	}
}

// slowScript holds back each run of one script, as a slow link would.
type slowScript struct {
	hash  string
	delay time.Duration
}

func (s slowScript) DialHook(next redis.DialHook) redis.DialHook { return next }
func (s slowScript) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if args := cmd.Args(); len(args) > 1 && cmd.Name() == "evalsha" && args[1] == s.hash {
			time.Sleep(s.delay)
		}
		return next(ctx, cmd)
	}
}
func (s slowScript) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A key asked again while its fetch's store is still on its way to Redis,
// on the instance that fetched it (with no local cache) or on another, gets
// that token: Polyv is not called again.
func TestAskedAgainBeforeTheStoreLands(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	opts := testOptions(func(o *Options) { o.LocalSize = 0 })
	fleet := newFleet(t, rdb, up, 2, &opts)
	a, b := fleet[0], fleet[1]
	a.rdb.(redis.UniversalClient).AddHook(slowScript{hash: storeScript.Hash(), delay: 300 * time.Millisecond})
	ctx := context.Background()
	first, _, err := a.Get(ctx, viewerKey)
	if err != nil {
		t.Fatal(err)
	}
	if rdb.Exists(ctx, viewerKey.redisKeys("tc:").value).Val() != 0 {
		t.Fatal("the store landed before the answer: this test needs it still on its way")
	}
	for name, c := range map[string]*Cache{"a": a, "b": b} {
		if tok, res, err := c.Get(ctx, viewerKey); err != nil || tok.Token != first.Token {
			t.Errorf("%s.Get() before the store landed = %q, %v, %v; want %q", name, tok.Token, res, err, first.Token)
		}
	}
	if got := up.calls.Load(); got != 1 {
		t.Errorf("upstream calls = %d, want 1", got)
	}
}
