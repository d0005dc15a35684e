package httpapi

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/cache"
)

const chatPath = "/v1/channels/2094979/chat-token"

func TestValidationCostsNothing(t *testing.T) {
	long := strings.Repeat("u", 10<<10)
	many := `{"requests":[` + strings.Repeat(`{"userId":"u","role":"viewer"},`, 1000) + `{"userId":"u","role":"viewer"}]}`
	tests := []struct {
		name, method, target, body string
		status                     int
		field                      string
	}{
		{"missing role", "GET", chatPath + "?userId=u", "", 400, "role"},
		{"unknown role", "GET", chatPath + "?userId=u&role=king", "", 400, "role"},
		{"empty userId", "GET", chatPath + "?userId=&role=viewer", "", 400, "userId"},
		{"missing userId", "GET", chatPath + "?role=viewer", "", 400, "userId"},
		{"10 KB userId", "GET", chatPath + "?role=viewer&userId=" + long, "", 400, "userId"},
		{"control character", "GET", chatPath + "?role=viewer&userId=a%00b", "", 400, "userId"},
		{"newline", "GET", chatPath + "?role=viewer&userId=a%0Ab", "", 400, "userId"},
		{"invalid UTF-8", "GET", chatPath + "?role=viewer&userId=%ff%fe", "", 400, "userId"},
		{"userId twice", "GET", chatPath + "?role=viewer&userId=a&userId=b", "", 400, "userId"},
		{"bad origin", "GET", chatPath + "?role=viewer&userId=u&origin=a/b", "", 400, "origin"},
		{"long origin", "GET", chatPath + "?role=viewer&userId=u&origin=" + strings.Repeat("o", 33), "", 400, "origin"},
		{"../ in channelId", "GET", "/v1/channels/..%2F..%2Fetc/chat-token?userId=u&role=viewer", "", 400, "channelId"},
		{"dot channelId", "GET", "/v1/channels/a.b/chat-token?userId=u&role=viewer", "", 400, "channelId"},
		{"65-char channelId", "GET", "/v1/channels/" + strings.Repeat("1", 65) + "/chat-token?userId=u&role=viewer", "", 400, "channelId"},
		{"bad channelId on delete", "DELETE", "/v1/channels/a%20b/chat-token?userId=u&role=viewer", "", 400, "channelId"},
		{"bad channelId on old token", "GET", "/v1/channels/a;b/token", "", 400, "channelId"},
		{"malformed JSON", "POST", "/v1/channels/1/chat-tokens", `{"requests":[`, 400, "body"},
		{"unknown field", "POST", "/v1/channels/1/chat-tokens", `{"requests":[],"x":1}`, 400, "body"},
		{"trailing data", "POST", "/v1/channels/1/chat-tokens", `{"requests":[{"userId":"u","role":"viewer"}]} {}`, 400, "body"},
		{"no requests", "POST", "/v1/channels/1/chat-tokens", `{}`, 400, "requests"},
		{"empty requests", "POST", "/v1/channels/1/chat-tokens", `{"requests":[]}`, 400, "requests"},
		{"1001 items", "POST", "/v1/channels/1/chat-tokens", many, 400, "requests"},
		{"oversized body", "POST", "/v1/channels/1/chat-tokens", `{"requests":[{"userId":"` + strings.Repeat("x", 300<<10) + `"}]}`, 413, "body"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeCache{}
			w := do(newTestAPI(t, fc), tt.method, tt.target, tt.body)
			if w.Code != tt.status {
				t.Fatalf("status = %d, want %d; body %s", w.Code, tt.status, w.Body)
			}
			var body struct{ Error apiError }
			if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", w.Body, err)
			}
			if body.Error.Code != codeInvalidArgument || body.Error.Field != tt.field || body.Error.Message == "" {
				t.Errorf("error = %+v, want invalid_argument on %s", body.Error, tt.field)
			}
			if n := fc.calls.Load(); n != 0 {
				t.Errorf("the cache was called %d times for a bad request", n)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err        error
		status     int
		code       string
		retryAfter string
	}{
		{errRejected, 422, codeUpstreamRejected, ""},
		{errMisconfigured, 502, codeUpstreamMisconfigured, ""},
		{errServer, 502, codeUpstreamError, ""},
		{errMalformed, 502, codeUpstreamError, ""},
		{errPolyvRate, 503, codeUpstreamUnavailable, "60"},
		{errUnavailable, 503, codeUpstreamUnavailable, "2"},
		{fmt.Errorf("x: %w", cache.ErrRedisUnavailable), 503, codeUpstreamUnavailable, "5"},
		{errTimeout, 504, codeUpstreamTimeout, ""},
		{errInternal, 500, codeInternal, ""},
	}
	for _, tt := range tests {
		t.Run(tt.code+"/"+tt.err.Error(), func(t *testing.T) {
			e := newTestAPI(t, &fakeCache{get: func(cache.Key) (cache.Token, cache.Result, error) { return cache.Token{}, cache.ResultError, tt.err }})
			w := do(e, "GET", chatPath+"?userId=u&role=viewer", "")
			var body struct{ Error apiError }
			_ = json.Unmarshal(w.Body.Bytes(), &body)
			if w.Code != tt.status || body.Error.Code != tt.code {
				t.Errorf("got %d %q, want %d %q", w.Code, body.Error.Code, tt.status, tt.code)
			}
			if got := w.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if strings.Contains(w.Body.String(), "disk on fire") {
				t.Error("internal error text reached the client")
			}
			if tt.code == codeUpstreamRejected && (body.Error.UpstreamCode != 403 || body.Error.UpstreamMessage == "") {
				t.Errorf("rejection lacks upstream details: %+v", body.Error)
			}
		})
	}
}

func TestAuth(t *testing.T) {
	fc := &fakeCache{}
	e := newTestAPI(t, fc)
	for _, h := range []string{"", "Bearer", "Bearer wrong", "Basic " + testKey, "Bearer " + testKey + "x"} {
		req := httptest.NewRequest("GET", chatPath+"?userId=u&role=viewer", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		w := httptest.NewRecorder()
		e.ServeHTTP(w, req)
		if w.Code != 401 || !strings.Contains(w.Body.String(), `"unauthenticated"`) {
			t.Errorf("Authorization %q: %d %s", h, w.Code, w.Body)
		}
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics", "/openapi.yaml"} {
		w := httptest.NewRecorder()
		e.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != 200 {
			t.Errorf("GET %s without a key = %d, want 200", p, w.Code)
		}
	}
	if fc.calls.Load() != 0 {
		t.Error("unauthenticated requests reached the cache")
	}
	noAuth := New(Options{Cache: fc, AuthDisabled: true, Logger: newTestLogger()})
	w := httptest.NewRecorder()
	noAuth.ServeHTTP(w, httptest.NewRequest("GET", chatPath+"?userId=u&role=viewer", nil))
	if w.Code != 200 {
		t.Errorf("with auth disabled: %d", w.Code)
	}
}

func TestChatTokenResponse(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	w := do(e, "GET", chatPath+"?userId=%E7%94%A8%E6%88%B7&role=viewer&origin=web", "")
	if w.Code != 200 {
		t.Fatalf("status = %d %s", w.Code, w.Body)
	}
	if got := w.Header().Get("Cache-Status"); got != "tokencache; fwd=miss; stored" {
		t.Errorf("Cache-Status = %q", got)
	}
	if got := w.Header().Get("Cache-Control"); got != "no-store" {
		t.Errorf("Cache-Control = %q", got)
	}
	var b chatTokenBody
	if err := json.Unmarshal(w.Body.Bytes(), &b); err != nil {
		t.Fatal(err)
	}
	if b.UserID != "用户" || b.Origin != "web" || b.Token != "tok-用户" || b.ExpiresAt.Sub(b.IssuedAt).Hours() != 6 {
		t.Errorf("body = %+v", b)
	}
}

func TestUnknownRouteAndMethodShape(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	for _, tc := range []struct {
		method, path string
		status       int
	}{{"GET", "/nope", 404}, {"PUT", chatPath, 405}, {"GET", "/v1/channels/1/chat-tokens", 405}} {
		w := do(e, tc.method, tc.path, "")
		var body struct{ Error apiError }
		if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || w.Code != tc.status || body.Error.Code == "" {
			t.Errorf("%s %s = %d %s", tc.method, tc.path, w.Code, w.Body)
		}
	}
}

func TestDeleteIdempotent(t *testing.T) {
	var deleted []cache.Key
	e := newTestAPI(t, &fakeCache{del: func(k cache.Key) error { deleted = append(deleted, k); return nil }})
	for range 2 {
		if w := do(e, "DELETE", chatPath+"?userId=u&role=viewer", ""); w.Code != http.StatusNoContent {
			t.Fatalf("DELETE = %d %s", w.Code, w.Body)
		}
	}
	if len(deleted) != 2 || deleted[0] != (cache.Key{ChannelID: "2094979", UserID: "u", Role: "viewer"}) {
		t.Errorf("deleted = %+v", deleted)
	}
}

func TestChannelTokenDeprecated(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	w := do(e, "GET", "/v1/channels/2094979/token", "")
	if w.Code != 200 || w.Header().Get("Deprecation") == "" || !strings.Contains(w.Header().Get("Link"), "successor-version") {
		t.Errorf("GET token = %d, headers %v", w.Code, w.Header())
	}
	var b channelTokenBody
	_ = json.Unmarshal(w.Body.Bytes(), &b)
	if b.ChannelID != "2094979" || b.Token == "" {
		t.Errorf("body = %s", w.Body)
	}
}

func TestBulk(t *testing.T) {
	e := newTestAPI(t, &fakeCache{get: func(k cache.Key) (cache.Token, cache.Result, error) {
		if k.UserID == "bad-upstream" {
			return cache.Token{}, cache.ResultError, errRejected
		}
		return cache.Token{Token: "tok-" + k.UserID}, cache.ResultMiss, nil
	}})
	var items []string
	for i := range 50 {
		items = append(items, fmt.Sprintf(`{"userId":"u%d","role":"viewer","origin":"web"}`, i))
	}
	items[10] = `{"userId":"bad-upstream","role":"viewer"}`
	items[20] = `{"userId":"u20","role":"king"}`
	w := do(e, "POST", "/v1/channels/2094979/chat-tokens", `{"requests":[`+strings.Join(items, ",")+`]}`)
	if w.Code != 200 {
		t.Fatalf("bulk = %d %s", w.Code, w.Body)
	}
	var body struct {
		Results []map[string]any `json:"results"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil || len(body.Results) != 50 {
		t.Fatalf("results: %v, %d", err, len(body.Results))
	}
	for i, r := range body.Results {
		switch i {
		case 10:
			if r["error"].(map[string]any)["code"] != codeUpstreamRejected || r["userId"] != "bad-upstream" {
				t.Errorf("result 10 = %v", r)
			}
		case 20:
			if r["error"].(map[string]any)["field"] != "role" {
				t.Errorf("result 20 = %v", r)
			}
		default:
			if r["token"] != fmt.Sprintf("tok-u%d", i) || r["userId"] != fmt.Sprintf("u%d", i) {
				t.Errorf("result %d = %v, out of order or failed", i, r)
			}
		}
	}
}

func TestMetricsExposed(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	do(e, "GET", chatPath+"?userId=u&role=viewer", "")
	do(e, "GET", "/v1/channels/x/chat-token?userId=secret-user&role=viewer", "")
	w := do(e, "GET", "/metrics", "")
	if !strings.Contains(w.Body.String(), `tokencache_requests_total{key="env-2",route="/v1/channels/:channelId/chat-token",status="200"} 2`) {
		t.Errorf("metrics lack the request count:\n%s", w.Body)
	}
	if strings.Contains(w.Body.String(), "secret-user") {
		t.Error("a user id reached a metric label")
	}
}

func FuzzChatTokenRequest(f *testing.F) {
	f.Add("2094979", "userId=u&role=viewer&origin=web", `{"requests":[{"userId":"u","role":"viewer"}]}`)
	f.Add("..", "userId=%ff&role=", `{"requests":[{}]}`)
	f.Add("a", "userId=a%00&role=viewer&role=guest", `[`)
	f.Fuzz(func(t *testing.T, channel, query, body string) {
		e := newTestAPI(t, &fakeCache{})
		path := "/v1/channels/" + url.PathEscape(channel)
		for _, req := range []*http.Request{
			httptest.NewRequest("GET", path+"/chat-token?"+escapeQuery(query), nil),
			httptest.NewRequest("DELETE", path+"/chat-token?"+escapeQuery(query), nil),
			httptest.NewRequest("GET", path+"/token", nil),
			httptest.NewRequest("POST", path+"/chat-tokens", strings.NewReader(body)),
		} {
			req.Header.Set("Authorization", "Bearer "+testKey)
			w := httptest.NewRecorder()
			e.ServeHTTP(w, req)
			if w.Code >= 500 {
				t.Fatalf("%s %s = %d %s", req.Method, req.URL, w.Code, w.Body)
			}
			if !json.Valid(w.Body.Bytes()) && w.Code != http.StatusNoContent {
				t.Fatalf("%s %s: body is not JSON: %q", req.Method, req.URL, w.Body)
			}
		}
	})
}

// escapeQuery keeps fuzzed text a valid query string.
func escapeQuery(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '#' {
			fmt.Fprintf(&b, "%%%02X", c)
		} else {
			b.WriteByte(c)
		}
	}
	return b.String()
}

func TestServerErrorsLoggedClientErrorsNot(t *testing.T) {
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	e := New(Options{Cache: &fakeCache{get: func(k cache.Key) (cache.Token, cache.Result, error) {
		if k.UserID == "boom" {
			panic("cache exploded")
		}
		return cache.Token{}, cache.ResultError, errServer
	}}, APIKeys: []string{testKey}, Logger: log})

	do(e, "GET", chatPath+"?userId=&role=viewer", "")
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("a 400 was logged as an error:\n%s", logs.String())
	}
	if w := do(e, "GET", chatPath+"?userId=u&role=viewer", ""); w.Code != 502 {
		t.Fatalf("status = %d", w.Code)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "request_id=") {
		t.Errorf("a 502 was not logged as an error with its request id:\n%s", logs.String())
	}
	// A panic becomes a 500 in the usual shape, and the server lives on.
	w := do(e, "GET", chatPath+"?userId=boom&role=viewer", "")
	if w.Code != 500 || !strings.Contains(w.Body.String(), `"code":"internal"`) || strings.Contains(w.Body.String(), "exploded") {
		t.Errorf("panic: %d %s", w.Code, w.Body)
	}
}

// A 503 for want of a Polyv call says which case it is, each in its own words.
func TestUnavailableSaysWhy(t *testing.T) {
	seen := map[string]budget.Reason{}
	for _, why := range []budget.Reason{budget.ReasonQueue, budget.ReasonCooldown, budget.ReasonKeyRate, budget.ReasonBulkShare, budget.ReasonDeleteRate} {
		ae := toAPIError(&cache.UnavailableError{Reason: why, RetryAfter: 3 * time.Second})
		if ae.Status != 503 || ae.RetryAfter != "3" || ae.Message == "" {
			t.Errorf("%s: %d, Retry-After %q, message %q", why, ae.Status, ae.RetryAfter, ae.Message)
		}
		if other, dup := seen[ae.Message]; dup {
			t.Errorf("%s and %s share the message %q", why, other, ae.Message)
		}
		seen[ae.Message] = why
	}
}

// pprof is served on the admin listener only, and never the command line:
// flags may hold secrets.
func TestPprofHidesTheCommandLine(t *testing.T) {
	public := New(Options{Cache: &fakeCache{}, Logger: newTestLogger(), Pprof: true})
	w := httptest.NewRecorder()
	public.ServeHTTP(w, httptest.NewRequest("GET", "/debug/pprof/goroutine?debug=1", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("pprof on the public listener = %d, want 404", w.Code)
	}
	e := NewAdmin(Options{Cache: &fakeCache{}, Logger: newTestLogger(), Pprof: true})
	w = httptest.NewRecorder()
	e.ServeHTTP(w, httptest.NewRequest("GET", "/debug/pprof/cmdline", nil))
	if w.Code != http.StatusNotFound {
		t.Errorf("/debug/pprof/cmdline = %d %q, want 404", w.Code, w.Body.String())
	}
	w = httptest.NewRecorder()
	e.ServeHTTP(w, httptest.NewRequest("GET", "/debug/pprof/goroutine?debug=1", nil))
	if w.Code != http.StatusOK {
		t.Errorf("/debug/pprof/goroutine = %d, want 200", w.Code)
	}
}
