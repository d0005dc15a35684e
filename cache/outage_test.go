package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redisconn"
	"github.com/tokencache/tokencache/internal/redistest"
)

func TestRedisDownAndBack(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	up := &fakeUpstream{delay: 50 * time.Millisecond}
	var transitions stringSet
	c := newCache(t, rdb, up, testOptions(func(o *Options) {
		o.RateLimit = 1000
		o.OnCircuitChange = func(from, to string) { transitions.add(from + "->" + to) }
	}))
	ctx := context.Background()
	warm, _, err := c.Get(ctx, viewerKey)
	if err != nil {
		t.Fatal(err)
	}

	srv.Kill()

	// A warm token is served from the local cache.
	if tok, res, err := c.Get(ctx, viewerKey); err != nil || res != ResultHitLocal || tok.Token != warm.Token {
		t.Errorf("warm Get() with Redis down = %q, %v, %v", tok.Token, res, err)
	}
	// A cold key is fetched once for all concurrent callers of this process.
	cold := Key{ChannelID: "2094979", UserID: "cold-user", Role: "viewer"}
	before := up.calls.Load()
	var failures atomic.Int64
	hammer(200, func(int) {
		if _, _, err := c.Get(ctx, cold); err != nil {
			failures.Add(1)
		}
	})
	if failures.Load() != 0 {
		t.Errorf("%d requests failed with Redis down", failures.Load())
	}
	if got := up.calls.Load() - before; got != 1 {
		t.Errorf("upstream calls for a cold key with Redis down = %d, want 1", got)
	}

	// The circuit is open: further requests do not touch Redis.
	eventually(t, "the circuit to open", func() bool {
		_, _, _ = c.Get(ctx, Key{ChannelID: "x", UserID: fmt.Sprint(time.Now().UnixNano()), Role: "viewer"})
		return c.RedisCircuit() == "open"
	})
	errsBefore := testutil.ToFloat64(c.metrics.redisErrors)
	openedAt := time.Now()
	const requests = 50
	for i := range requests {
		if _, _, err := c.Get(ctx, Key{ChannelID: "open", UserID: fmt.Sprint(i), Role: "viewer"}); err != nil {
			t.Fatalf("Get() with the circuit open: %v", err)
		}
	}
	// At most one probe per open period reaches the dead Redis.
	probes := 1 + time.Since(openedAt)/c.opts.BreakerOpenFor
	if got := testutil.ToFloat64(c.metrics.redisErrors) - errsBefore; got > float64(probes) {
		t.Errorf("%v Redis errors for %d requests with the circuit open, want at most %d probes", got, requests, probes)
	}

	// Redis comes back: the cache uses it again by itself.
	srv.Restart(t)
	back := Key{ChannelID: "2094979", UserID: "after-recovery", Role: "viewer"}
	eventually(t, "the cache to store in Redis again", func() bool {
		_, _, _ = c.Get(ctx, back)
		c.dropLocal(back.redisKeys("tc:").value)
		n, _ := srv.Client(t).Exists(ctx, back.redisKeys("tc:").value).Result()
		return n == 1
	})
	if c.RedisCircuit() != "closed" {
		t.Errorf("circuit = %s after recovery, want closed", c.RedisCircuit())
	}
	for _, want := range []string{"closed->open", "half-open->closed"} {
		transitions.mu.Lock()
		seen := transitions.m[want]
		transitions.mu.Unlock()
		if !seen {
			t.Errorf("OnCircuitChange never reported %s: %v", want, transitions.m)
		}
	}
	if err := c.Ready(ctx); err != nil {
		t.Errorf("Ready() after recovery = %v", err)
	}
}

func TestRedisDownLocalRateLimit(t *testing.T) {
	srv := redistest.Start(t)
	up := &fakeUpstream{}
	c := newCache(t, srv.Client(t), up, testOptions(func(o *Options) { o.RateLimit = 10 }))
	srv.Kill()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var unavailable atomic.Int64
	hammer(40, func(i int) {
		if _, _, err := c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"}); err != nil {
			unavailable.Add(1)
		}
	})
	// 10/s with a burst of 1 allows about 4 calls in 300ms.
	if got := up.calls.Load(); got > 6 {
		t.Errorf("upstream calls in 300ms at 10/s with Redis down = %d", got)
	}
	if unavailable.Load() < 30 {
		t.Errorf("only %d of 40 requests were refused", unavailable.Load())
	}
}

func TestCluster(t *testing.T) {
	rdb := redistest.StartCluster(t, 3)
	up := &fakeUpstream{delay: 50 * time.Millisecond}
	fleet := newFleet(t, rdb, up, 3, nil)
	var failures atomic.Int64
	hammer(300, func(i int) {
		if _, _, err := fleet[i%3].Get(context.Background(), viewerKey); err != nil {
			failures.Add(1)
		}
	})
	if got := up.calls.Load(); got != 1 || failures.Load() != 0 {
		t.Errorf("cluster: upstream calls = %d, failures = %d; want 1 and 0", got, failures.Load())
	}
	up.calls.Store(0)
	hammer(300, func(i int) {
		k := Key{ChannelID: "2094979", UserID: fmt.Sprint(i % 100), Role: "viewer"}
		if _, _, err := fleet[i%3].Get(context.Background(), k); err != nil {
			t.Errorf("cluster Get(): %v", err)
		}
	})
	if got := up.calls.Load(); got != 100 {
		t.Errorf("cluster: upstream calls for 100 keys = %d, want 100", got)
	}
	// Invalidation crosses nodes.
	if err := fleet[0].Delete(context.Background(), viewerKey); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the delete to reach the others", func() bool {
		_, ok1 := fleet[1].localGet(viewerKey.redisKeys("tc:").value)
		_, ok2 := fleet[2].localGet(viewerKey.redisKeys("tc:").value)
		return !ok1 && !ok2
	})
}

// A Redis that lost its scripts (restarted, or SCRIPT FLUSH) gets them
// again on the next miss, which still costs one fetch and no error.
func TestScriptsFlushed(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{}
		c := newCache(t, rdb, up, testOptions(nil))
		ctx := context.Background()
		if _, _, err := c.Get(ctx, Key{ChannelID: "100", UserID: "before", Role: "viewer"}); err != nil {
			t.Fatal(err)
		}
		if err := rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		errsBefore := testutil.ToFloat64(c.metrics.redisErrors)
		k := Key{ChannelID: "100", UserID: "after", Role: "viewer"}
		if _, res, err := c.Get(ctx, k); err != nil || res != ResultMiss {
			t.Fatalf("Get() after SCRIPT FLUSH = %v, %v", res, err)
		}
		settle(c)
		if n, _ := rdb.Exists(ctx, c.keysOf(k).value).Result(); n != 1 {
			t.Error("the token was not stored after SCRIPT FLUSH")
		}
		if got := testutil.ToFloat64(c.metrics.redisErrors) - errsBefore; got != 0 {
			t.Errorf("%v Redis errors counted for a missing script", got)
		}
		if got := up.calls.Load(); got != 2 {
			t.Errorf("upstream calls = %d, want 2", got)
		}
	})
}

// The configured rate limit is exported, for alerts and dashboards to set
// the call rate against.
func TestRateLimitIsExported(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(func(o *Options) { o.RateLimit = 150 }))
	if got := testutil.ToFloat64(c.metrics.rateLimit); got != 150 {
		t.Errorf("tokencache_polyv_rate_limit = %v, want 150", got)
	}
}

// A Redis at maxmemory that refuses writes (noeviction) takes no lease: each
// instance fetches on its own, as when Redis is down, and every request is
// still answered. Redis still replies, so the circuit stays closed; each
// refused command is counted instead, for the operator to see.
func TestRedisRefusingWritesIsCounted(t *testing.T) {
	rdb := redistest.Start(t, "--maxmemory-policy", "noeviction").Client(t)
	ctx := context.Background()
	if err := rdb.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil { // far below what Redis uses empty
		t.Fatal(err)
	}
	if err := rdb.Set(ctx, "probe", "x", 0).Err(); err == nil {
		t.Fatal("Redis took a write over maxmemory")
	}
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(nil))
	if _, res, err := c.Get(ctx, viewerKey); err != nil || res != ResultMiss {
		t.Fatalf("Get() = %v, %v; want a token fetched on its own", res, err)
	}
	settle(c)
	if got := testutil.ToFloat64(c.metrics.redisErrors); got < 1 {
		t.Errorf("tokencache_redis_errors_total = %v; want the refused writes counted", got)
	}
	if got := c.RedisCircuit(); got != "closed" {
		t.Errorf("circuit = %s; Redis answers, so it should stay closed", got)
	}
}

// A stalled Cluster node (DEBUG SLEEP) costs each command of a miss one
// read timeout, not the cluster client's retry loop (redisconn's
// oneTimeout), and counts as a Redis failure toward the breaker. A miss asks
// the identity's node twice (the read, then the lease); a stalled node that
// holds a key of the fleet's budget holds the budget's round once more.
func TestClusterStalledNode(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	addrs := cluster.Options().Addrs
	rdb, err := redisconn.Open(redisconn.Options{URL: "redis://" + addrs[0] + "?addr=" + addrs[1] + "&addr=" + addrs[2], Cluster: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Close() })
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(nil))
	ctx := context.Background()
	nodeOf := func(key string) string {
		n, err := cluster.MasterForKey(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		return n.Options().Addr
	}
	// The budget's round reads two slots: the fleet's bucket and the shares.
	prefix := DefaultPrefix + keyVersion + ":upstream"
	budgetNodes := map[string]bool{nodeOf(prefix): true, nodeOf(prefix + ":{shares}:waiting"): true}
	for _, tc := range []struct {
		name       string
		withBudget bool
		bounds     int // the read timeouts a miss may wait
	}{
		{"a node without the budget's keys", false, 2}, // the read, then the acquire
		{"a node with a budget key", true, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var k Key
			for i := 0; ; i++ {
				k = Key{ChannelID: "2094979", UserID: fmt.Sprint("stalled-", i), Role: "viewer"}
				if budgetNodes[nodeOf(c.keysOf(k).value)] == tc.withBudget {
					break
				}
			}
			node := redis.NewClient(&redis.Options{Addr: nodeOf(c.keysOf(k).value), ReadTimeout: 5 * time.Second})
			defer node.Close()
			stalled := make(chan error, 1)
			go func() { stalled <- node.Do(context.Background(), "DEBUG", "SLEEP", "3").Err() }()
			time.Sleep(100 * time.Millisecond) // DEBUG SLEEP has begun
			failuresBefore := testutil.ToFloat64(c.metrics.redisErrors)
			start := time.Now()
			_, _, err := c.Get(ctx, k)
			took := time.Since(start)
			t.Logf("a miss on a stalled node: %v", took)
			if err != nil {
				t.Errorf("Get() = %v; want the token, fetched without Redis", err)
			}
			// Room for a loaded machine: the unbounded retry loop took the
			// whole stall (3 s here, 4.5 s with a longer one).
			if limit := time.Duration(tc.bounds)*redisconn.IOTimeout + time.Second; took > limit {
				t.Errorf("a miss on a stalled node took %v, over %d × %v and a margin", took, tc.bounds, redisconn.IOTimeout)
			}
			if got := testutil.ToFloat64(c.metrics.redisErrors) - failuresBefore; got < 1 {
				t.Error("the stalled node's timeout was not counted as a Redis failure")
			}
			if err := <-stalled; err != nil {
				t.Fatalf("DEBUG SLEEP: %v", err)
			}
		})
	}
}
