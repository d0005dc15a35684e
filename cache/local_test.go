package cache

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

func TestLocalCacheBoundedAndNeverPastTTL(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	clk := newClock()
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(func(o *Options) { o.LocalSize = 10; o.Now = clk.Now }))
	for i := range 25 {
		if _, _, err := c.Get(context.Background(), Key{ChannelID: "1", UserID: fmt.Sprint(i), Role: "viewer"}); err != nil {
			t.Fatal(err)
		}
	}
	c.local.CleanUp() // evictions may be pending
	if n := c.local.EstimatedSize(); n > 10 {
		t.Errorf("local cache holds %d entries, bound is 10", n)
	}
	k := Key{ChannelID: "1", UserID: "24", Role: "viewer"}
	if _, res, _ := c.Get(context.Background(), k); res != ResultHitLocal {
		t.Fatalf("Get() = %v, want hit_local", res)
	}
	clk.Add(c.opts.TTL)
	if _, ok := c.localGet(k.redisKeys("tc:").value); ok {
		t.Error("local entry served at TTL")
	}
}

func TestInvalidationReachesEveryInstance(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{}
		fleet := newFleet(t, rdb, up, 2, nil)
		a, other := fleet[0], fleet[1]
		ctx := context.Background()
		first := fetched(t, a)
		if tok, res, _ := other.Get(ctx, viewerKey); res != ResultHitRedis || tok.Token != first.Token {
			t.Fatalf("other.Get() = %v", res)
		}
		// a's fill publishes a change, which may drop other's first copy.
		eventually(t, "other to serve from its local cache", func() bool {
			_, res, _ := other.Get(ctx, viewerKey)
			return res == ResultHitLocal
		})
		if err := a.Delete(ctx, viewerKey); err != nil {
			t.Fatal(err)
		}
		eventually(t, "the delete to reach the other instance", func() bool {
			_, ok := other.localGet(viewerKey.redisKeys("tc:").value)
			return !ok
		})
		tok, res, err := other.Get(ctx, viewerKey)
		if err != nil || res != ResultMiss || tok.Token == first.Token {
			t.Errorf("Get() after delete = %q, %v, %v; want a new token", tok.Token, res, err)
		}
		// A delete of a missing key is fine.
		if err := a.Delete(ctx, Key{ChannelID: "x", UserID: "y", Role: "viewer"}); err != nil {
			t.Errorf("Delete() of a missing key = %v", err)
		}
	})
}

func TestRefreshInvalidatesOtherInstances(t *testing.T) {
	rdb := realRedis(t)
	clk := newClock()
	up := &fakeUpstream{}
	opts := testOptions(func(o *Options) { o.Now = clk.Now })
	fleet := newFleet(t, rdb, up, 2, &opts)
	a, other := fleet[0], fleet[1]
	ctx := context.Background()
	first := fetched(t, a)
	_, _, _ = other.Get(ctx, viewerKey) // now in other's local cache
	clk.Add(5*time.Hour + time.Minute)
	_, _, _ = a.Get(ctx, viewerKey) // stale: a refreshes
	eventually(t, "other instance to see the refreshed token", func() bool {
		tok, _, _ := other.Get(ctx, viewerKey)
		return tok.Token != first.Token
	})
}

// A Delete that lands while another instance is fetching the token drops
// that fetch's token too: the fetch answers the callers already waiting,
// but stores nothing, so no caller after the Delete gets a token minted
// before it.
func TestDeleteDuringAFetchDropsItsToken(t *testing.T) {
	rdb := realRedis(t)
	up := &gatedUpstream{gate: make(chan struct{})}
	fleet := newFleet(t, rdb, up, 2, nil)
	a, b := fleet[0], fleet[1]
	ctx := context.Background()
	keys := viewerKey.redisKeys("tc:")

	var inFlight Token
	fetched := make(chan error, 1)
	go func() {
		var err error
		inFlight, _, err = a.Get(ctx, viewerKey)
		fetched <- err
	}()
	eventually(t, "a to take the fill lease", func() bool { return rdb.Exists(ctx, keys.lease()).Val() == 1 })
	if err := b.Delete(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	close(up.gate)
	if err := <-fetched; err != nil {
		t.Fatal(err)
	}
	settle(a) // the store, if any, has landed
	for name, c := range map[string]*Cache{"a": a, "b": b} {
		if tok, res, _ := c.Get(ctx, viewerKey); tok.Token == inFlight.Token {
			t.Errorf("%s.Get() after the Delete = the token fetched before it (%v)", name, res)
		}
	}
}

// A Delete that runs between a Redis read and the local-cache write after it
// must win: the deleted token never reaches the local cache.
func TestDeleteRacingARedisReadNeverRefillsTheLocalCache(t *testing.T) {
	for _, path := range []string{"get", "fill"} {
		t.Run(path, func(t *testing.T) {
			rdb := realRedis(t)
			up := &fakeUpstream{}
			fleet := newFleet(t, rdb, up, 2, nil)
			a, b := fleet[0], fleet[1]
			ctx := context.Background()
			deleted, _, err := a.Get(ctx, viewerKey)
			if err != nil {
				t.Fatal(err)
			}
			var once sync.Once
			b.afterRedisRead = func() {
				once.Do(func() {
					if err := b.Delete(ctx, viewerKey); err != nil {
						t.Error(err)
					}
				})
			}
			if path == "get" {
				_, _, _ = b.Get(ctx, viewerKey)
			} else {
				_, _, _ = b.fillShared(ctx, viewerKey, viewerKey.redisKeys("tc:"))
			}
			for i := range 3 {
				if tok, res, _ := b.Get(ctx, viewerKey); tok.Token == deleted.Token {
					t.Fatalf("Get() #%d after Delete = the deleted token (%v)", i, res)
				}
			}
		})
	}
}
