package cache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testwait"
)

// Invalidations published while a subscriber reconnects are lost; the
// instance must drop its local cache when it subscribes again, so that 2s
// after a Delete returns no instance serves the deleted token.
func TestDeleteReachesAnInstanceWhosePubSubDropped(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	fleet := newFleet(t, rdb, up, 2, nil)
	a, b := fleet[0], fleet[1]
	ctx := context.Background()
	for i := range 10 {
		deleted, _, err := a.Get(ctx, viewerKey)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to serve the token from its local cache", func() bool {
			tok, res, _ := b.Get(ctx, viewerKey)
			return tok.Token == deleted.Token && res == ResultHitLocal
		})
		if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx, viewerKey); err != nil {
			t.Fatal(err)
		}
		goneWithin2s(t, b, viewerKey, deleted.Token, time.Now(), fmt.Sprintf("round %d: ", i))
	}
}

// A pub/sub connection that goes silent without an error (its host left the
// network, say, while the instance's other commands moved to a new master)
// is found and replaced: 2 s after a Delete returns, the instance no longer
// serves the deleted token.
func TestDeleteReachesAnInstanceWhosePubSubWentSilent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	proxy := redistest.StartProxy(t, srv.Addr)
	up := &fakeUpstream{}
	a := newCache(t, rdb, up, testOptions(nil))
	b := newCache(t, subscribeVia{ownClient(t, rdb), proxy.Client(t)}, up, testOptions(nil))
	ctx := context.Background()
	deleted := fetched(t, a)
	eventually(t, "b to serve the token from its local cache", func() bool {
		tok, res, _ := b.Get(ctx, viewerKey)
		return tok.Token == deleted.Token && res == ResultHitLocal
	})
	proxy.SilenceOpen()
	if err := a.Delete(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	goneWithin2s(t, b, viewerKey, deleted.Token, time.Now(), "")
	if silent, dropped := testutil.ToFloat64(b.metrics.pubsubSilent), testutil.ToFloat64(b.metrics.localDropped); silent != 1 || dropped != 1 {
		t.Errorf("pubsub_silent_total = %v, local_cache_dropped_total = %v; want 1 and 1", silent, dropped)
	}
}

// When every connection of an instance goes silent (the Redis host it
// reached left the network), its commands time out and open its circuit,
// and its subscription is replaced all the same: the open circuit must not
// hold the new one back, or the instance serves deleted tokens from its
// local cache until the circuit closes.
func TestDeleteReachesAnInstanceWhoseConnectionsWentSilent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	proxy := redistest.StartProxy(t, srv.Addr)
	up := &fakeUpstream{}
	a := newCache(t, rdb, up, testOptions(nil))
	b := newCache(t, proxy.Client(t), up, testOptions(func(o *Options) { o.BreakerOpenFor = 3 * time.Second }))
	ctx := context.Background()
	for i := range 1 {
		k := Key{ChannelID: "c", UserID: fmt.Sprint("silenced-", i), Role: "viewer"}
		deleted, _, err := a.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		settle(a)
		eventually(t, "b's circuit to let a probe through", func() bool { return b.RedisCircuit() != "open" })
		if tok, _, err := b.Get(ctx, k); err != nil || tok.Token != deleted.Token {
			t.Fatalf("round %d: b.Get() = %q, %v; want a's token", i, tok.Token, err)
		}
		misses := func(round string) { // Redis commands in parallel, on as many connections
			hammer(20, func(j int) {
				_, _, _ = b.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(round, i, "-", j), Role: "viewer"})
			})
		}
		misses("before-")
		proxy.SilenceOpen()
		if err := a.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
		deletedAt := time.Now()
		misses("after-") // they time out on the silenced connections, and open b's circuit
		if b.RedisCircuit() != "open" {
			t.Fatalf("round %d: b's circuit is %s; the test means it open", i, b.RedisCircuit())
		}
		goneWithin2s(t, b, k, deleted.Token, deletedAt, fmt.Sprintf("round %d: ", i))
	}
}

// A quiet subscription is kept: the pings prove it alive, so the local cache
// is not dropped for want of messages.
func TestQuietSubscriptionIsKept(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) { // miniredis is the embedded Redis
		rdb, _ := b.open(t)
		c := newCache(t, rdb, &fakeUpstream{}, testOptions(nil))
		fetched(t, c)
		time.Sleep(3 * silentAfter)
		if _, res, err := c.Get(context.Background(), viewerKey); err != nil || res != ResultHitLocal {
			t.Fatalf("Get() after %v of quiet = %v, %v; want a local hit", 3*silentAfter, res, err)
		}
		if silent, dropped := testutil.ToFloat64(c.metrics.pubsubSilent), testutil.ToFloat64(c.metrics.localDropped); silent != 0 || dropped != 0 {
			t.Errorf("pubsub_silent_total = %v, local_cache_dropped_total = %v; want 0 and 0", silent, dropped)
		}
	})
}

// goneWithin2s fails t unless c stops serving the deleted token of k within
// 2 s of deletedAt, when the Delete returned.
func goneWithin2s(t *testing.T, c *Cache, k Key, deleted string, deletedAt time.Time, round string) {
	t.Helper()
	var res Result
	if !testwait.Until(time.Until(deletedAt.Add(2*time.Second)), func() bool {
		var tok Token
		tok, res, _ = c.Get(context.Background(), k)
		return tok.Token != deleted
	}) {
		t.Fatalf("%s2s after Delete, the instance still serves the deleted token (%v; circuit %s)", round, res, c.RedisCircuit())
	}
}

// subscribeVia is an instance's Redis client whose pub/sub goes through
// another client.
type subscribeVia struct {
	Redis
	sub redis.UniversalClient
}

func (s subscribeVia) Subscribe(ctx context.Context, channels ...string) *redis.PubSub {
	return s.sub.Subscribe(ctx, channels...)
}

// An instance waiting on another's fetch is woken by pub/sub when the token
// is stored, long before its next poll; on Redis Cluster too, where the
// store script publishes on one node.
func TestWaiterIsWokenByTheStore(t *testing.T) {
	run := func(t *testing.T, rdb redis.UniversalClient) {
		up := &fakeUpstream{delay: 300 * time.Millisecond}
		o := testOptions(func(o *Options) { o.PollInterval = 20 * time.Second })
		fleet := newFleet(t, rdb, up, 2, &o)
		ctx := context.Background()
		go func() { _, _, _ = fleet[0].Get(ctx, viewerKey) }()
		eventually(t, "the first instance to fetch", func() bool { return up.calls.Load() == 1 })
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second) // a poll would come after 10 s or more
		defer cancel()
		if _, res, err := fleet[1].Get(wctx, viewerKey); err != nil || res != ResultCoalesced {
			t.Fatalf("waiting instance: Get() = %v, %v; want the other's token", res, err)
		}
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls = %d, want 1", got)
		}
	}
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		run(t, rdb)
	})
	t.Run("cluster", func(t *testing.T) { run(t, redistest.StartCluster(t, 3)) })
}

// A miss nobody else waits for sends no pub/sub message: with a fleet of
// N, each would be read by N instances.
func TestUncontendedMissPublishesNothing(t *testing.T) {
	rdb := realRedis(t)
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(nil))
	ctx := context.Background()
	sub := ownClient(t, rdb).Subscribe(ctx, c.events.channel)
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, res, err := c.Get(ctx, Key{ChannelID: "100", UserID: fmt.Sprint("solo-", i), Role: "viewer"}); err != nil || res != ResultMiss {
			t.Fatalf("Get() = %v, %v", res, err)
		}
	}
	// A Delete always tells the fleet: its message marks the end.
	if err := c.Delete(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for {
		m, err := sub.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m.Payload)
		if strings.HasSuffix(m.Payload, c.keysOf(viewerKey).value) {
			break
		}
	}
	if len(msgs) != 1 {
		t.Errorf("%d pub/sub messages for 20 uncontended misses and a delete, want only the delete's: %v", len(msgs), msgs)
	}
}

// A new subscription wakes every waiter, in case the store's wake-up was
// published while the old one was down: waiters check the lease rarely.
func TestNewSubscriptionWakesWaiters(t *testing.T) {
	rdb := realRedis(t)
	c := newCache(t, ownClient(t, rdb), &fakeUpstream{}, testOptions(nil))
	wake, unregister := c.events.wait("any key")
	defer unregister()
	if err := rdb.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-wake:
	case <-time.After(5 * time.Second):
		t.Fatal("no wake-up 5s after the subscription was dropped and made again")
	}
}

// An instance waiting for another's fetch when Redis dies hears of it from
// its circuit breaker, and fetches on its own, instead of sleeping until it
// would next check the lease.
func TestRedisFailureWakesWaiters(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	up := &gatedUpstream{gate: make(chan struct{})}
	o := testOptions(func(o *Options) { o.LeaseTTL = 20 * time.Second })
	fleet := newFleet(t, rdb, up, 2, &o)
	ctx := context.Background()
	go func() { _, _, _ = fleet[0].Get(ctx, viewerKey) }() // holds the lease: Polyv hangs
	keys := viewerKey.redisKeys("tc:")
	eventually(t, "the first instance to take the lease", func() bool { return rdb.Exists(ctx, keys.lease()).Val() == 1 })

	waited := getInBackground(fleet[1], viewerKey, 15*time.Second)
	eventually(t, "the other instance to wait", func() bool { return rdb.Exists(ctx, keys.waiters()).Val() == 1 })
	srv.Kill()
	killed := time.Now()
	close(up.gate) // Polyv answers again
	// Other requests on the waiting instance open its circuit.
	for i := range 5 {
		_, _, _ = fleet[1].Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"})
	}
	if got := fleet[1].RedisCircuit(); got != "open" {
		t.Fatalf("circuit %s after failures, want open", got)
	}
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("waiting Get() = %v, want a token fetched without Redis", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the waiter still sleeps %v after Redis died", time.Since(killed).Round(time.Second))
	}
}
