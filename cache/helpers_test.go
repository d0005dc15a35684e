package cache

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testwait"
	"github.com/tokencache/tokencache/polyv"
)

// fakeUpstream counts calls and answers with unique tokens after delay, or
// with err. It honours ctx, unless hang is set.
type fakeUpstream struct {
	calls atomic.Int64
	delay time.Duration

	mu    sync.Mutex
	err   error
	panic bool
	hang  bool
	times []time.Time
	keys  map[string]int
	order []string // channel ids, in call order
}

var _ Upstream = (*fakeUpstream)(nil)

func (f *fakeUpstream) setErr(err error) { f.mu.Lock(); f.err = err; f.mu.Unlock() }

func (f *fakeUpstream) ChatToken(ctx context.Context, req polyv.ChatTokenRequest) (polyv.ChatToken, error) {
	n := f.calls.Add(1)
	f.mu.Lock()
	err, doPanic, hang, delay := f.err, f.panic, f.hang, f.delay
	f.times = append(f.times, time.Now())
	if f.keys == nil {
		f.keys = map[string]int{}
	}
	f.keys[req.ChannelID+"/"+req.UserID]++
	f.order = append(f.order, req.ChannelID)
	f.mu.Unlock()
	if doPanic {
		panic("upstream exploded")
	}
	if hang {
		select {} // ignores ctx on purpose
	}
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return polyv.ChatToken{}, ctx.Err()
		}
	}
	if err != nil {
		return polyv.ChatToken{}, err
	}
	return polyv.ChatToken{Token: fmt.Sprintf("tok-%d", n), MediaChannelKey: "mck", RoomID: req.ChannelID, ChildRoomEnabled: "N",
		ChatAPIDomain: "apichat.polyv.net", ChatDomain: "chat.polyv.net"}, nil
}

func (f *fakeUpstream) ChannelToken(ctx context.Context, channelID string) (polyv.ChannelToken, error) {
	t, err := f.ChatToken(ctx, polyv.ChatTokenRequest{ChannelID: channelID})
	return polyv.ChannelToken{Token: t.Token, MediaChannelKey: t.MediaChannelKey}, err
}

// callsSince returns the channel ids of the calls after the first n.
func (f *fakeUpstream) callsSince(n int) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.order[n:])
}

// gatedUpstream holds each call until the test lets it go (a send lets one
// go, closing the gate lets all), then answers as fakeUpstream.
type gatedUpstream struct {
	fakeUpstream
	gate    chan struct{}
	arrived atomic.Int64 // calls that reached the gate
}

func (u *gatedUpstream) ChatToken(ctx context.Context, req polyv.ChatTokenRequest) (polyv.ChatToken, error) {
	u.arrived.Add(1)
	select {
	case <-u.gate:
	case <-ctx.Done():
		return polyv.ChatToken{}, ctx.Err()
	}
	return u.fakeUpstream.ChatToken(ctx, req)
}

// getInBackground runs c.Get(k) with a timeout in a goroutine, and hands
// over its error.
func getInBackground(c *Cache, k Key, timeout time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, _, err := c.Get(ctx, k)
		done <- err
	}()
	return done
}

// settle waits for c's stores that run after their answer, for a test that
// reads Redis or asks another instance next.
func settle(c *Cache) { c.storing.Wait() }

// quiesce waits for all of c's work that runs after its answer: stores,
// refreshes, and fills whose callers left. Nothing may start meanwhile.
func quiesce(c *Cache) { c.detached.Wait() }

// fetched has c fetch viewerKey's token and waits for its store: a token in
// Redis and in c's local cache, to start a test from.
func fetched(tb testing.TB, c *Cache) Token {
	tb.Helper()
	tok, _, err := c.Get(context.Background(), viewerKey)
	if err != nil {
		tb.Fatal(err)
	}
	settle(c)
	return tok
}

// goStale moves clk past refresh-after and asks c for viewerKey, which must
// serve the stale token and start a refresh.
func goStale(tb testing.TB, c *Cache, clk *clock) {
	tb.Helper()
	clk.Add(5*time.Hour + time.Minute)
	if _, res, _ := c.Get(context.Background(), viewerKey); res != ResultStale {
		tb.Fatalf("Get() past refresh-after = %v, want stale", res)
	}
}

// clock is a settable clock for token ages.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Now()} }

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }

// backend is a Redis to run the same test on. open returns a client and a
// function that makes keys with a TTL of d or less expire: miniredis needs
// FastForward, a real server only needs the time to pass.
type backend struct {
	name string
	open func(tb testing.TB) (redis.UniversalClient, func(d time.Duration))
}

// catchUp moves Redis's clock on by d after the test slept it: miniredis's
// clock stands still, a real server's has moved on with the sleep.
func (b backend) catchUp(expire func(time.Duration), d time.Duration) {
	if b.name == "miniredis" {
		expire(d)
	}
}

// backends returns miniredis and a real redis-server.
func backends() []backend {
	return []backend{
		{"miniredis", func(tb testing.TB) (redis.UniversalClient, func(time.Duration)) {
			mr := miniredis.RunT(tb)
			c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
			tb.Cleanup(func() { _ = c.Close() })
			return c, mr.FastForward
		}},
		{"redis-server", func(tb testing.TB) (redis.UniversalClient, func(time.Duration)) {
			return redistest.Start(tb).Client(tb), func(d time.Duration) { time.Sleep(d + 50*time.Millisecond) }
		}},
	}
}

// realRedis returns a client of a redis-server of the test's own.
func realRedis(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	return redistest.Start(tb).Client(tb)
}

func eachBackend(t *testing.T, run func(t *testing.T, b backend)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { run(t, b) })
	}
}

// testOptions are fast settings for tests.
func testOptions(mod func(*Options)) Options {
	o := Options{
		LeaseTTL: time.Second, PollInterval: 20 * time.Millisecond, FillTimeout: 5 * time.Second,
		RateLimit: 100000, BreakerOpenFor: 200 * time.Millisecond, BreakerFailures: 3, LocalSize: DefaultLocalSize,
		Logger: slog.New(slog.DiscardHandler),
	}
	if mod != nil {
		mod(&o)
	}
	return o
}

func newCache(tb testing.TB, rdb Redis, up Upstream, opts Options) *Cache {
	tb.Helper()
	c, err := New(rdb, up, opts)
	if err != nil {
		tb.Fatalf("New() error = %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// hammer runs fn from n goroutines at once and waits for them.
func hammer(n int, fn func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			fn(i)
		}()
	}
	close(start)
	wg.Wait()
}

// eventually waits up to 5 s for cond, for what comes in its own time (a
// message, a background refresh).
func eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	testwait.Eventually(tb, 5*time.Second, what, cond)
}

var viewerKey = Key{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"}

// stringSet is a set of strings safe for concurrent adds.
type stringSet struct {
	mu sync.Mutex
	m  map[string]bool
}

func (s *stringSet) add(v string) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[string]bool{}
	}
	s.m[v] = true
	s.mu.Unlock()
}

func (s *stringSet) len() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.m) }

// ownClient returns a new client of rdb's server, as a separate instance of
// the service would have, closed at cleanup.
func ownClient(tb testing.TB, rdb redis.UniversalClient) redis.UniversalClient {
	tb.Helper()
	var c redis.UniversalClient
	switch r := rdb.(type) {
	case *redis.Client:
		o := *r.Options()
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c = redis.NewClient(&o)
	case *redis.ClusterClient:
		o := *r.Options()
		o.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
		c = redis.NewClusterClient(&o)
	default:
		tb.Fatalf("unknown client %T", rdb)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// fillCallers counts the callers waiting on c's fill of k.
func (c *Cache) fillCallers(k Key) int {
	c.flights.mu.Lock()
	defer c.flights.mu.Unlock()
	if f := c.flights.m[c.keysOf(k).value]; f != nil {
		return f.callers
	}
	return 0
}

// waitQueued waits until at least n fetches wait for a slot across fleet.
func waitQueued(tb testing.TB, n int, fleet ...*Cache) {
	tb.Helper()
	eventually(tb, fmt.Sprint(n, " fetches to queue"), func() bool {
		queued := 0
		for _, c := range fleet {
			queued += c.sched.Queued()
		}
		return queued >= n
	})
}

// waitResealed waits for c's start-up pass over the stored values.
func waitResealed(tb testing.TB, c *Cache) {
	tb.Helper()
	select {
	case <-c.resealed:
	case <-time.After(10 * time.Second):
		tb.Fatal("the re-seal pass did not end")
	}
}
