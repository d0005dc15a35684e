package cache

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/polyv"
)

// Two callers' bulk prefetches running flat out leave room for a third
// caller's single misses: bulk items get at most BulkShare (half) of the
// limit, so while both want slots, the singles get at least every other one.
// Sequential singles alone wait one emission interval each at a saturated
// limit; getting half the slots, they wait at most one interval longer.
func TestBulkLeavesRoomForSingles(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	const limit = 20
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.RateLimit = limit; o.FillTimeout = 30 * time.Second }))

	bulkCtx, stopBulk := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b"} {
		ctx := WithCaller(bulkCtx, Caller{Name: name, Bulk: true})
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _, _ = c.Get(ctx, Key{ChannelID: "bulk", UserID: fmt.Sprint(name, i), Role: "viewer"})
			}()
		}
	}
	time.Sleep(300 * time.Millisecond) // the bulk queues fill up: 80 items, 8s at the bulk share

	const singles = 20
	before := int(up.calls.Load())
	var failed int
	single := WithCaller(context.Background(), Caller{Name: "c"})
	for i := range singles {
		// Generous, to catch starvation only: behind the bulk queue a single
		// would wait seconds.
		ctx, cancel := context.WithTimeout(single, 10*time.Second/limit)
		if _, _, err := c.Get(ctx, Key{ChannelID: "single", UserID: fmt.Sprint(i), Role: "viewer"}); err != nil {
			failed++
		}
		cancel()
	}
	calls := up.callsSince(before)
	stopBulk()
	wg.Wait()

	if failed > 0 {
		t.Errorf("%d of %d single misses failed within 10 emission intervals while bulk ran", failed, singles)
	}
	bulk := 0
	for _, ch := range calls {
		if ch == "bulk" {
			bulk++
		}
	}
	// The limiter's burst (2) may go to bulk items granted just before.
	if bulk == 0 || bulk > singles+2 {
		t.Errorf("while %d singles were served, bulk items made %d Polyv calls; want some, and at most %d", singles, bulk, singles+2)
	}
}

// A caller's own rate caps the Polyv calls its requests cause.
func TestCallerRateCapsItsFetches(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.RateLimit = 1000 }))
	ctx, cancel := context.WithTimeout(WithCaller(context.Background(), Caller{Name: "capped", Rate: 5}), time.Second)
	defer cancel()
	var served atomic.Int64
	hammer(30, func(i int) {
		if _, _, err := c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i), Role: "viewer"}); err == nil {
			served.Add(1)
		}
	})
	// 5/s with a burst of 2 allows about 7 in one second.
	if got := up.calls.Load(); got > 8 || got < 3 {
		t.Errorf("Polyv calls in 1s for a caller capped at 5/s = %d", got)
	}
	// Another caller is not held by that cap.
	if _, _, err := c.Get(context.Background(), Key{ChannelID: "c", UserID: "free", Role: "viewer"}); err != nil {
		t.Errorf("Get() for an uncapped caller = %v", err)
	}
}

// OnFetch sees every Polyv call once, with the caller of the fetch.
func TestOnFetchSeesEveryPolyvCall(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	var mu sync.Mutex
	var seen []string
	up := &fakeUpstream{delay: 20 * time.Millisecond}
	c := newCache(t, rdb, up, testOptions(func(o *Options) {
		o.OnFetch = func(ctx context.Context, k Key, outcome string) {
			mu.Lock()
			seen = append(seen, CallerFrom(ctx).Name+" "+k.UserID+" "+outcome)
			mu.Unlock()
		}
	}))
	ctx := WithCaller(context.Background(), Caller{Name: "web"})
	hammer(50, func(i int) { _, _, _ = c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(i % 2), Role: "viewer"}) })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 2 || int64(len(seen)) != up.calls.Load() {
		t.Fatalf("OnFetch calls = %v for %d Polyv calls, want one each", seen, up.calls.Load())
	}
	for _, s := range seen {
		if !strings.HasPrefix(s, "web ") || !strings.HasSuffix(s, " ok") {
			t.Errorf("OnFetch saw %q, want the caller and the outcome", s)
		}
	}
}

func TestPolyvState(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(nil))
	ctx := context.Background()
	if got := c.PolyvState(); got != PolyvUnknown {
		t.Errorf("before any call: %s", got)
	}
	for i, tt := range []struct {
		err  error
		want string
	}{
		{nil, PolyvOK},
		{&polyv.APIError{Code: 403, Message: "invalid signature."}, PolyvMisconfigured},
		{&polyv.APIError{Code: 403, Message: "illegal channel id: 1"}, PolyvOK},
		{&polyv.APIError{Code: 500, Message: "fail"}, PolyvUnavailable},
	} {
		up.setErr(tt.err)
		_, _, _ = c.Get(ctx, Key{ChannelID: fmt.Sprint("c", i), UserID: "u", Role: "viewer"}) // a channel each: a rejection is per channel
		if got := c.PolyvState(); got != tt.want {
			t.Errorf("after %v: PolyvState() = %s, want %s", tt.err, got, tt.want)
		}
	}
}
