package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/client"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/testwait"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

const apiKey = "client-test-key"

// server is the real service in-process: httpapi on the cache on miniredis
// and the Polyv simulator. calls counts the HTTP requests it got.
type server struct {
	URL   string
	calls atomic.Int64
	sim   *polyvsim.TestServer
}

// tester is what startServer needs of a test, so that an Example can run it.
type tester interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
}

func startServer(tb tester) *server {
	tb.Helper()
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "app", AppSecret: "secret"})
	tb.Cleanup(sim.Close)
	up, err := polyv.New(polyv.Options{AppID: "app", AppSecret: "secret", BaseURL: sim.URL})
	if err != nil {
		tb.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(tb).Addr()})
	tc, err := cache.New(rdb, up, cache.Options{RateLimit: 100000})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tc.Close(); _ = rdb.Close() })
	s := &server{sim: sim}
	api := httpapi.New(httpapi.Options{Cache: tc, APIKeys: []string{apiKey}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		api.ServeHTTP(w, r)
	}))
	tb.Cleanup(ts.Close)
	s.URL = ts.URL
	return s
}

func newClient(tb testing.TB, url, key string, opts client.Options) *client.Client {
	tb.Helper()
	c, err := client.New(url, key, opts)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

var viewer = client.ChatTokenRequest{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"}

func TestAgainstTheServer(t *testing.T) {
	s := startServer(t)
	c := newClient(t, s.URL, apiKey, client.Options{})
	ctx := context.Background()

	tok, err := c.ChatToken(ctx, viewer)
	if err != nil || len(tok.Token) != 32 || tok.UserID != viewer.UserID || tok.ExpiresAt.Sub(tok.IssuedAt) != 6*time.Hour {
		t.Fatalf("ChatToken() = %+v, %v", tok, err)
	}
	if again, _ := c.ChatToken(ctx, viewer); again.Token != tok.Token {
		t.Error("the server's cache did not serve the same token")
	}
	if err := c.DeleteChatToken(ctx, viewer); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := c.ChatToken(ctx, viewer); fresh.Token == tok.Token {
		t.Error("the deleted token came back")
	}
	if ct, err := c.ChannelToken(ctx, "2094979"); err != nil || ct.Token == "" {
		t.Errorf("ChannelToken() = %+v, %v", ct, err)
	}
}

func TestTypedErrors(t *testing.T) {
	s := startServer(t)
	s.sim.Sim.SetIllegalChannels([]string{"666"})
	ctx := context.Background()
	for _, tt := range []struct {
		name   string
		key    string
		req    client.ChatTokenRequest
		status int
		code   string
		check  func(e *client.Error) bool
	}{
		{"bad role", apiKey, client.ChatTokenRequest{ChannelID: "1", UserID: "u", Role: "king"}, 400, client.CodeInvalidArgument,
			func(e *client.Error) bool { return e.Field == "role" }},
		{"wrong key", "nope", viewer, 401, client.CodeUnauthenticated, nil},
		{"rejected channel", apiKey, client.ChatTokenRequest{ChannelID: "666", UserID: "u", Role: "viewer"}, 422, client.CodeUpstreamRejected,
			func(e *client.Error) bool {
				return e.UpstreamCode == 403 && strings.Contains(e.UpstreamMessage, "illegal channel")
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := newClient(t, s.URL, tt.key, client.Options{}).ChatToken(ctx, tt.req)
			var e *client.Error
			if !errors.As(err, &e) || e.Status != tt.status || e.Code != tt.code || (tt.check != nil && !tt.check(e)) {
				t.Errorf("ChatToken() error = %#v, want %d %s", err, tt.status, tt.code)
			}
		})
	}
}

// With a cache, asking twice (or fifty times at once) for one viewer calls
// tokencache once.
func TestClientCacheAndCoalescing(t *testing.T) {
	s := startServer(t)
	c := newClient(t, s.URL, apiKey, client.Options{CacheSize: 100})
	ctx := context.Background()
	var wg sync.WaitGroup
	tokens := make([]string, 50)
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := c.ChatToken(ctx, viewer)
			if err != nil {
				t.Error(err)
			}
			tokens[i] = tok.Token
		}()
	}
	wg.Wait()
	if _, err := c.ChatToken(ctx, viewer); err != nil {
		t.Fatal(err)
	}
	if got := s.calls.Load(); got != 1 {
		t.Errorf("calls to tokencache = %d, want 1", got)
	}
	for _, tok := range tokens {
		if tok != tokens[0] {
			t.Fatal("callers got different tokens")
		}
	}
	// Delete drops it from memory too.
	if err := c.DeleteChatToken(ctx, viewer); err != nil {
		t.Fatal(err)
	}
	if tok, _ := c.ChatToken(ctx, viewer); tok.Token == tokens[0] {
		t.Error("the client served a deleted token from memory")
	}
	// A token within the margin of its expiry is not kept.
	short := newClient(t, s.URL, apiKey, client.Options{CacheSize: 100, ExpiryMargin: 7 * time.Hour})
	before := s.calls.Load()
	_, _ = short.ChatToken(ctx, viewer)
	_, _ = short.ChatToken(ctx, viewer)
	if got := s.calls.Load() - before; got != 2 {
		t.Errorf("calls with a margin longer than the validity = %d, want 2", got)
	}
}

func TestBulkChunksAndOrder(t *testing.T) {
	s := startServer(t)
	c := newClient(t, s.URL, apiKey, client.Options{})
	items := make([]client.BulkItem, 2500)
	for i := range items {
		items[i] = client.BulkItem{UserID: fmt.Sprint("u", i), Role: "viewer"}
	}
	items[1700].Role = "king"
	results, err := c.ChatTokens(context.Background(), "2094979", items)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2500 || s.calls.Load() != 3 {
		t.Fatalf("%d results in %d calls, want 2500 in 3", len(results), s.calls.Load())
	}
	for i, r := range results {
		var e *client.Error
		switch {
		case i == 1700:
			if !errors.As(r.Err, &e) || e.Code != client.CodeInvalidArgument {
				t.Errorf("item 1700 = %+v, want invalid_argument", r)
			}
		case r.Err != nil || r.Token.UserID != items[i].UserID:
			t.Fatalf("item %d = %+v, out of order or failed", i, r)
		}
	}
}

// A 503 with Retry-After is retried when the caller's deadline allows, and
// the caller's deadline travels in Request-Timeout.
func TestRetryAfterAndDeadline(t *testing.T) {
	var calls atomic.Int64
	var timeouts sync.Map
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		timeouts.Store(n, r.Header.Get("Request-Timeout"))
		if n%2 == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":{"code":"upstream_unavailable","message":"rate limit"}}`)
			return
		}
		fmt.Fprint(w, `{"token":"t","userId":"u"}`)
	}))
	t.Cleanup(ts.Close)
	c := newClient(t, ts.URL, apiKey, client.Options{})

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if tok, err := c.ChatToken(ctx, viewer); err != nil || tok.Token != "t" {
		t.Errorf("ChatToken() with room for a retry = %+v, %v", tok, err)
	}
	v, _ := timeouts.Load(int64(1))
	if secs, err := strconv.ParseFloat(v.(string), 64); err != nil || secs > 3 || secs < 2 {
		t.Errorf("Request-Timeout = %q, want the caller's 3 seconds", v)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.ChatToken(ctx, viewer)
	var e *client.Error
	if !errors.As(err, &e) || e.Status != 503 || e.RetryAfter != time.Second || time.Since(start) > 400*time.Millisecond {
		t.Errorf("ChatToken() without room for a retry = %v after %v, want the 503 at once", err, time.Since(start))
	}
}

// A fetch that was under way when a DELETE returned does not put the
// deleted token back in the client's memory, and the next ask goes to the
// server.
func TestDeleteWinsOverAFetchUnderWay(t *testing.T) {
	var gets atomic.Int64
	release := make(chan struct{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		n := gets.Add(1)
		if n == 1 {
			<-release // the first fetch answers only after the DELETE
		}
		fmt.Fprintf(w, `{"token":"tok-%d","userId":"u","expiresAt":%q}`, n, time.Now().Add(6*time.Hour).Format(time.RFC3339))
	}))
	t.Cleanup(ts.Close)
	c := newClient(t, ts.URL, apiKey, client.Options{CacheSize: 100})
	ctx := context.Background()
	first := make(chan string, 1)
	go func() {
		tok, _ := c.ChatToken(ctx, viewer)
		first <- tok.Token
	}()
	testwait.Eventually(t, 5*time.Second, "the fetch to reach the server", func() bool { return gets.Load() > 0 })
	if err := c.DeleteChatToken(ctx, viewer); err != nil {
		t.Fatal(err)
	}
	close(release)
	if got := <-first; got != "tok-1" {
		t.Fatalf("the fetch under way got %q", got)
	}
	if tok, err := c.ChatToken(ctx, viewer); err != nil || tok.Token == "tok-1" {
		t.Errorf("ChatToken() after the DELETE = %q, %v; want a new token, not the deleted one", tok.Token, err)
	}
}

// A call that runs to its deadline gets the server's answer: the client
// tells the server a deadline a little before its own.
func TestServerAnswerArrivesBeforeTheDeadline(t *testing.T) {
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		secs, _ := strconv.ParseFloat(r.Header.Get("Request-Timeout"), 64)
		time.Sleep(time.Duration(secs * float64(time.Second))) // works until the deadline it was given
		w.Header().Set("Retry-After", "2")
		w.WriteHeader(http.StatusGatewayTimeout)
		fmt.Fprint(w, `{"error":{"code":"upstream_timeout","message":"Polyv did not answer in time"}}`)
	}))
	t.Cleanup(ts.Close)
	c := newClient(t, ts.URL, apiKey, client.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := c.ChatToken(ctx, viewer)
	var e *client.Error
	if !errors.As(err, &e) || e.Status != http.StatusGatewayTimeout || e.Code != client.CodeUpstreamTimeout {
		t.Errorf("ChatToken() = %v, want the server's 504 as *client.Error", err)
	}
}

// Bulk calls are split by encoded size as well as by count: 1000 valid
// items whose userIds the JSON encoder escapes (& is 6 bytes) fit no single
// body under the server's 1 MiB limit, yet every item gets its token.
func TestBulkSplitsBySize(t *testing.T) {
	s := startServer(t)
	c := newClient(t, s.URL, apiKey, client.Options{})
	items := make([]client.BulkItem, 1000)
	for i := range items {
		items[i] = client.BulkItem{UserID: fmt.Sprintf("%04d", i) + strings.Repeat("&", 200), Role: "viewer"}
	}
	results, err := c.ChatTokens(context.Background(), "2094979", items)
	if err != nil {
		t.Fatalf("ChatTokens() = %v", err)
	}
	for i, r := range results {
		if r.Err != nil || r.Token.UserID != items[i].UserID {
			t.Fatalf("item %d = %+v, %v", i, r.Token.UserID, r.Err)
		}
	}
}
