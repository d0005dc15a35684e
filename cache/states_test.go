package cache

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/polyv"
)

func TestTokenStates(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		clk := newClock()
		up := &fakeUpstream{delay: 300 * time.Millisecond} // slow enough that the refresh ends after the hits
		opts := testOptions(func(o *Options) { o.Now = clk.Now; o.LocalSize = 0 })
		fleet := newFleet(t, rdb, up, 3, &opts)
		ctx := context.Background()

		first, res, err := fleet[0].Get(ctx, viewerKey)
		if err != nil || res != ResultMiss {
			t.Fatalf("first Get() = %v, %v; want miss", res, err)
		}
		settle(fleet[0])
		if _, res, _ := fleet[1].Get(ctx, viewerKey); res != ResultHitRedis {
			t.Errorf("fresh Get() = %v, want hit_redis", res)
		}

		// Stale but valid: every instance serves the old token at once, and
		// the fleet makes one refresh.
		clk.Add(5*time.Hour + time.Minute)
		hammer(90, func(i int) {
			tok, res, err := fleet[i%3].Get(ctx, viewerKey)
			if err != nil || res != ResultStale || tok.Token != first.Token {
				t.Errorf("stale Get() = %q, %v, %v; want the old token, stale", tok.Token, res, err)
			}
		})
		eventually(t, "the refresh", func() bool {
			tok, _, _ := fleet[2].Get(ctx, viewerKey)
			return tok.Token != first.Token
		})
		if got := up.calls.Load(); got != 2 {
			t.Errorf("upstream calls = %d, want 2 (fill and one refresh)", got)
		}

		// Past TTL the token is gone.
		clk.Add(6 * time.Hour)
		if _, res, _ := fleet[0].Get(ctx, viewerKey); res != ResultMiss {
			t.Errorf("expired Get() = %v, want miss", res)
		}
	})
}

func TestFailedRefreshKeepsServingAndBacksOff(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, expire := b.open(t)
		clk := newClock()
		up := &fakeUpstream{}
		opts := testOptions(func(o *Options) { o.Now = clk.Now; o.RefreshBackoff = 300 * time.Millisecond })
		fleet := newFleet(t, rdb, up, 2, &opts)
		ctx := context.Background()
		first := fetched(t, fleet[0])

		up.setErr(&polyv.APIError{Code: 500, Message: "fail"})
		clk.Add(5*time.Hour + time.Minute)
		for i := range 50 {
			tok, res, err := fleet[i%2].Get(ctx, viewerKey)
			if err != nil || tok.Token != first.Token || res != ResultStale {
				t.Fatalf("Get() during failing refresh = %q, %v, %v", tok.Token, res, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		eventually(t, "the failed refresh", func() bool { return up.calls.Load() == 2 })
		time.Sleep(50 * time.Millisecond)
		if got := up.calls.Load(); got != 2 {
			t.Fatalf("upstream calls within the backoff = %d, want 2: one failed refresh, no retry on every hit", got)
		}

		// After the backoff, a hit retries, and the retry succeeds.
		up.setErr(nil)
		time.Sleep(opts.RefreshBackoff)
		b.catchUp(expire, opts.RefreshBackoff)
		eventually(t, "a successful retry", func() bool {
			tok, _, _ := fleet[1].Get(ctx, viewerKey)
			return tok.Token != first.Token
		})
		if got := up.calls.Load(); got != 3 {
			t.Errorf("upstream calls = %d, want 3", got)
		}
	})
}

func TestNegativeEntries(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, expire := b.open(t)
		clk := newClock()
		up := &fakeUpstream{delay: 20 * time.Millisecond}
		up.setErr(&polyv.APIError{Endpoint: polyv.EndpointChatToken, Code: 403, Message: "illegal channel id: 666"})
		opts := testOptions(func(o *Options) { o.Now = clk.Now; o.NegativeTTL = 300 * time.Millisecond })
		fleet := newFleet(t, rdb, up, 3, &opts)
		k := Key{ChannelID: "666", UserID: "u", Role: "viewer"}

		var negatives atomic.Int64
		hammer(300, func(i int) {
			_, res, err := fleet[i%3].Get(context.Background(), k)
			if polyv.Classify(err) != polyv.KindRejected {
				t.Errorf("Get() error = %v, want Polyv's rejection", err)
			}
			if res == ResultNegative {
				negatives.Add(1)
			}
		})
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls for a flood on a rejected channel = %d, want 1", got)
		}
		if negatives.Load() < 290 {
			t.Errorf("negative results = %d of 300", negatives.Load())
		}
		// After the negative TTL, the next request asks Polyv again.
		clk.Add(opts.NegativeTTL)
		expire(opts.NegativeTTL)
		_, _, _ = fleet[0].Get(context.Background(), k)
		if got := up.calls.Load(); got != 2 {
			t.Errorf("upstream calls after the negative TTL = %d, want 2", got)
		}
	})
}

func TestTransientErrorsAreNotStored(t *testing.T) {
	errs := map[string]error{
		"server":        &polyv.APIError{Code: 500, Message: "fail"},
		"misconfigured": &polyv.APIError{Code: 403, Message: "invalid signature."},
		"malformed":     &polyv.MalformedError{HTTPStatus: 502, Reason: "html"},
		"timeout":       fmt.Errorf("post: %w", context.DeadlineExceeded),
	}
	for name, upErr := range errs {
		t.Run(name, func(t *testing.T) {
			rdb, _ := backends()[0].open(t)
			up := &fakeUpstream{}
			up.setErr(upErr)
			c := newCache(t, rdb, up, testOptions(nil))
			for range 3 {
				_, res, err := c.Get(context.Background(), viewerKey)
				if err == nil || res != ResultError {
					t.Fatalf("Get() = %v, %v; want an error", res, err)
				}
			}
			if got := up.calls.Load(); got != 3 {
				t.Errorf("upstream calls = %d, want 3: %s is never stored", got, name)
			}
			keys := viewerKey.redisKeys("tc:")
			if n, _ := rdb.Exists(context.Background(), keys.value).Result(); n != 0 {
				t.Error("an error was stored in Redis")
			}
		})
	}
}

func TestCorruptValueIsAMissAndOverwritten(t *testing.T) {
	for _, raw := range []string{"garbage", `{"v":99,"t":{"token":"x"}}`, `{"v":1}`, `{"v":1,"t":{"token":""},"until":"2999-01-01T00:00:00Z"}`,
		"\x02garbage", "\x02", "\x02\x80", "\x03\x80"} {
		rdb, _ := backends()[0].open(t)
		up := &fakeUpstream{}
		c := newCache(t, rdb, up, testOptions(nil))
		keys := viewerKey.redisKeys("tc:")
		rdb.Set(context.Background(), keys.value, raw, time.Hour)
		tok, res, err := c.Get(context.Background(), viewerKey)
		if err != nil || res != ResultMiss || tok.Token == "" {
			t.Errorf("Get() over %q = %q, %v, %v; want a miss", raw, tok.Token, res, err)
		}
		settle(c)
		b, _ := rdb.Get(context.Background(), keys.value).Bytes()
		if e, ok := decodeEntry(b); !ok || e.Token.Token != tok.Token {
			t.Errorf("value over %q was not overwritten: %s", raw, b)
		}
	}
}

// A value written by the first release, in JSON, is still served, so that
// both releases can share Redis during a rolling update.
func TestFirstReleaseValueIsRead(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(nil))
	old := `{"v":1,"t":{"token":"old-token","mediaChannelKey":"mck","roomId":"100","issuedAt":"` +
		time.Now().UTC().Format(time.RFC3339Nano) + `"},"until":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano) + `"}`
	rdb.Set(context.Background(), viewerKey.redisKeys("tc:").value, old, time.Hour)
	tok, res, err := c.Get(context.Background(), viewerKey)
	if err != nil || res != ResultHitRedis || tok.Token != "old-token" || tok.RoomID != "100" {
		t.Errorf("Get() over a first-release value = %+v, %v, %v", tok, res, err)
	}
	if up.calls.Load() != 0 {
		t.Error("a first-release value was fetched again")
	}
}

func TestTTLUnderSixHoursWithJitter(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	c := newCache(t, rdb, &fakeUpstream{}, testOptions(nil))
	issued := time.Now()
	seen := map[time.Time]bool{}
	for range 50 {
		until := c.tokenUntil(issued)
		if ttl := until.Sub(issued); ttl > c.opts.TTL || ttl <= c.opts.RefreshAfter || ttl >= polyv.TokenValidity {
			t.Fatalf("TTL %v outside (RefreshAfter, TTL]", ttl)
		}
		seen[until] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct expiries in 50: no jitter", len(seen))
	}
	if _, err := New(rdb, &fakeUpstream{}, Options{TTL: 6 * time.Hour}); err == nil {
		t.Error("New() accepted TTL 6h")
	}
	if _, err := New(rdb, &fakeUpstream{}, Options{TTL: time.Hour, RefreshAfter: time.Hour}); err == nil {
		t.Error("New() accepted RefreshAfter == TTL")
	}
}

func TestChannelTokenKeyedPerChannel(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(nil))
	a, _, err := c.ChannelToken(context.Background(), "100")
	if err != nil {
		t.Fatal(err)
	}
	b, res, _ := c.ChannelToken(context.Background(), "100")
	if res != ResultHitLocal || a.Token != b.Token {
		t.Errorf("second ChannelToken() = %v, token %q vs %q", res, b.Token, a.Token)
	}
	if up.calls.Load() != 1 {
		t.Errorf("upstream calls = %d, want 1", up.calls.Load())
	}
}

func TestRefreshBackoffDoubles(t *testing.T) {
	c := &Cache{opts: Options{RefreshBackoff: 30 * time.Second}}
	for _, tt := range []struct {
		failures int
		want     time.Duration
	}{{1, 30 * time.Second}, {2, time.Minute}, {3, 2 * time.Minute}, {10, maxRefreshBackoff}, {100, maxRefreshBackoff}} {
		if got := c.backoff(tt.failures); got != tt.want {
			t.Errorf("backoff(%d) = %v, want %v", tt.failures, got, tt.want)
		}
	}
}

// Validate names every broken option, as *OptionError, after defaults.
func TestOptionsValidate(t *testing.T) {
	if err := (Options{}).Validate(); err != nil {
		t.Errorf("Validate() of the defaults = %v", err)
	}
	err := Options{TTL: 7 * time.Hour, RefreshAfter: -time.Second, LocalSize: -1, BulkShare: 2, PollInterval: -1}.Validate()
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var oe *OptionError
		if !errors.As(e, &oe) {
			t.Fatalf("%v is not an *OptionError", e)
		}
		got = append(got, oe.Option)
	}
	if want := []string{"TTL", "RefreshAfter", "LocalSize", "BulkShare", "PollInterval"}; !slices.Equal(got, want) {
		t.Errorf("Validate() named %v, want %v", got, want)
	}
}
