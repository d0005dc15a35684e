package cache

import (
	"context"
	"testing"
	"time"

	"github.com/tokencache/tokencache/polyv"
)

// A failed refresh must never make the key look "being fetched": once the
// token expires, the next miss fetches at once.
func TestFailedRefreshNeverBlocksTheNextMiss(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		clk := newClock()
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.Now = clk.Now; o.RefreshBackoff = time.Minute })
		fleet := newFleet(t, rdb, up, 2, &opts)
		ctx := context.Background()
		fetched(t, fleet[0])
		up.setErr(&polyv.APIError{Code: 500, Message: "fail"})
		goStale(t, fleet[0], clk)
		eventually(t, "the failed refresh", func() bool { return up.calls.Load() == 2 })
		keys := viewerKey.redisKeys("tc:")
		eventually(t, "the fleet to back off", func() bool { return rdb.Exists(ctx, keys.backoff()).Val() == 1 })

		// Polyv recovers and the token expires: the next request fetches.
		up.setErr(nil)
		clk.Add(6 * time.Hour)
		for i, c := range fleet {
			reqCtx, cancel := context.WithTimeout(ctx, time.Second)
			tok, res, err := c.Get(reqCtx, viewerKey)
			cancel()
			if err != nil || tok.Token == "" {
				t.Fatalf("instance %d: Get() after expiry = %v, %v; want a token", i, res, err)
			}
		}
		if got := up.calls.Load(); got != 3 {
			t.Errorf("upstream calls = %d, want 3: fill, failed refresh, fill after expiry", got)
		}
	})
}

// An instance that saw the old token just before another refreshed it must
// not refresh again.
func TestRefreshStopsWhenAnotherInstanceRefreshed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		clk := newClock()
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.Now = clk.Now; o.LocalSize = 0 })
		fleet := newFleet(t, rdb, up, 2, &opts)
		ctx := context.Background()
		first := fetched(t, fleet[0])

		clk.Add(5*time.Hour + time.Minute)
		keys := viewerKey.redisKeys("tc:")
		fleet[0].refresh(viewerKey, keys, first.IssuedAt) // refreshes: 2 calls
		fleet[1].refresh(viewerKey, keys, first.IssuedAt) // saw the old token: must stop
		if got := up.calls.Load(); got != 2 {
			t.Errorf("upstream calls = %d, want 2: one fill and one refresh", got)
		}
		if tok, _, _ := fleet[1].Get(ctx, viewerKey); tok.Token == first.Token {
			t.Error("the refreshed token is not served")
		}
	})
}

// Delete clears everything kept for the identity.
func TestDeleteClearsEveryKeyOfTheIdentity(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &fakeUpstream{}
	opts := testOptions(func(o *Options) { o.Now = clk.Now; o.RefreshBackoff = time.Minute })
	c := newCache(t, rdb, up, opts)
	ctx := context.Background()
	fetched(t, c)
	up.setErr(&polyv.APIError{Code: 500, Message: "fail"})
	clk.Add(5*time.Hour + time.Minute)
	_, _, _ = c.Get(ctx, viewerKey)
	keys := viewerKey.redisKeys("tc:")
	eventually(t, "the refresh backoff", func() bool { return rdb.Exists(ctx, keys.backoff()).Val() == 1 })

	if err := c.Delete(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{keys.value, keys.lease(), keys.backoff()} {
		if rdb.Exists(ctx, k).Val() != 0 {
			t.Errorf("%s survives Delete", k)
		}
	}
}

// A refresh under way ends with the cache: Close does not wait for Polyv.
func TestCloseEndsARefreshUnderWay(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	clk := newClock()
	up := &fakeUpstream{}
	c, err := New(rdb, up, testOptions(func(o *Options) { o.Now = clk.Now; o.FillTimeout = 30 * time.Second }))
	if err != nil {
		t.Fatal(err)
	}
	fetched(t, c)
	up.mu.Lock()
	up.delay = 20 * time.Second // honours ctx
	up.mu.Unlock()
	clk.Add(5*time.Hour + time.Minute)
	_, _, _ = c.Get(context.Background(), viewerKey)
	eventually(t, "the refresh to call Polyv", func() bool { return up.calls.Load() == 2 })
	start := time.Now()
	_ = c.Close()
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close() took %v with a refresh under way", took)
	}
}

// An instance waiting on a refresh's lease (the token expired meanwhile) is
// woken when the refresh fails and releases it, and fetches at once: it does
// not sleep until the lease would have lapsed.
func TestFailedRefreshWakesTheWaiters(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &gatedUpstream{gate: make(chan struct{})}
	opts := testOptions(func(o *Options) { o.Now = clk.Now; o.LeaseTTL = 20 * time.Second })
	fleet := newFleet(t, rdb, up, 2, &opts)
	ctx := context.Background()
	go func() { up.gate <- struct{}{} }()
	fetched(t, fleet[0])

	// The refresh starts and holds the lease while Polyv hangs.
	up.setErr(&polyv.APIError{Code: 500, Message: "fail"})
	goStale(t, fleet[0], clk)
	keys := viewerKey.redisKeys("tc:")
	eventually(t, "the refresh to take the lease", func() bool { return rdb.Exists(ctx, keys.lease()).Val() == 1 })
	// The token expires in Redis meanwhile, and another instance misses.
	rdb.Del(ctx, keys.value)
	waited := getInBackground(fleet[1], viewerKey, 5*time.Second)
	eventually(t, "the other instance to wait", func() bool { return rdb.Exists(ctx, keys.waiters()).Val() == 1 })

	up.gate <- struct{}{} // the refresh fails
	eventually(t, "the fleet to back off", func() bool { return rdb.Exists(ctx, keys.backoff()).Val() == 1 })
	up.setErr(nil)
	close(up.gate)
	if err := <-waited; err != nil {
		t.Errorf("waiting Get() = %v, want a token fetched after the failed refresh", err)
	}
}

// A Delete that lands while a refresh is fetching drops the refreshed token
// too: no instance serves a token minted before the Delete.
func TestDeleteDuringARefreshDropsItsToken(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &gatedUpstream{gate: make(chan struct{})}
	opts := testOptions(func(o *Options) { o.Now = clk.Now })
	fleet := newFleet(t, rdb, up, 2, &opts)
	a, b := fleet[0], fleet[1]
	ctx := context.Background()
	go func() { up.gate <- struct{}{} }()
	first := fetched(t, a)
	goStale(t, a, clk)
	keys := viewerKey.redisKeys("tc:")
	eventually(t, "the refresh to take the lease", func() bool { return rdb.Exists(ctx, keys.lease()).Val() == 1 })
	if err := b.Delete(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	close(up.gate)
	quiesce(a) // the refresh has fetched, and stored if it would
	for name, c := range map[string]*Cache{"a": a, "b": b} {
		tok, res, _ := c.Get(ctx, viewerKey)
		if tok.Token == first.Token || tok.Token == "tok-2" {
			t.Errorf("%s.Get() after the Delete = %q (%v), a token minted before it", name, tok.Token, res)
		}
	}
}
