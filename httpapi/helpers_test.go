package httpapi

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
)

const testKey = "test-key-1"

// fakeCache answers from get, or with a token built from the key, and counts
// every call.
type fakeCache struct {
	calls    atomic.Int64
	deadline atomic.Int64 // of the last Get's ctx, unix nanos
	get      func(k cache.Key) (cache.Token, cache.Result, error)
	del      func(k cache.Key) error
	ready    error
}

var _ TokenCache = (*fakeCache)(nil)

func (f *fakeCache) Peek(cache.Key) (cache.Token, cache.Result, bool, error) {
	return cache.Token{}, "", false, nil
}

func (f *fakeCache) Get(ctx context.Context, k cache.Key) (cache.Token, cache.Result, error) {
	f.calls.Add(1)
	if d, ok := ctx.Deadline(); ok {
		f.deadline.Store(d.UnixNano())
	}
	if f.get != nil {
		return f.get(k)
	}
	return cache.Token{Token: "tok-" + k.UserID, MediaChannelKey: "mck", RoomID: k.ChannelID, ChildRoomEnabled: "N",
		ChatAPIDomain: "apichat.polyv.net", ChatDomain: "chat.polyv.net", IssuedAt: time.Now()}, cache.ResultMiss, nil
}

func (f *fakeCache) Delete(_ context.Context, k cache.Key) error {
	f.calls.Add(1)
	if f.del != nil {
		return f.del(k)
	}
	return nil
}

func (f *fakeCache) Ready(context.Context) error { return f.ready }
func (f *fakeCache) RedisCircuit() string        { return "closed" }
func (f *fakeCache) PolyvState() string          { return "unknown" }

func newTestAPI(tb testing.TB, c TokenCache) *echo.Echo {
	tb.Helper()
	return New(Options{Cache: c, APIKeys: []string{"other-key", testKey}, Logger: newTestLogger(),
		MaxBodyBytes: 256 << 10})
}

// do sends a request with the test key and returns the recorded response.
func do(e *echo.Echo, method, target, body string) *httptest.ResponseRecorder {
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, r)
	req.Header.Set("Authorization", "Bearer "+testKey)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	return w
}

var (
	errRejected      = &polyv.APIError{Endpoint: "get-chat-token", Code: 403, Message: "illegal channel id: 1"}
	errMisconfigured = &polyv.APIError{Code: 403, Message: "invalid signature."}
	errServer        = &polyv.APIError{Code: 500, Message: "fail"}
	errPolyvRate     = &polyv.APIError{Code: 400, Message: "qps exceeds number of calls"}
	errMalformed     = &polyv.MalformedError{HTTPStatus: 502, Reason: "html"}
	errUnavailable   = &cache.UnavailableError{Reason: budget.ReasonQueue, RetryAfter: 1500 * time.Millisecond}
	errTimeout       = context.DeadlineExceeded
	errInternal      = errors.New("disk on fire")
)

func newTestLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
