package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestTighterInput(t *testing.T) {
	for _, tt := range []struct {
		name, target, body, field, message string
	}{
		{"typo in origin", "/v1/channels/1/chat-token?userId=u&role=viewer&orign=web", "", "orign", "unknown query parameter"},
		{"repeated parameter", "/v1/channels/1/chat-token?userId=u&role=viewer&role=admin", "", "role", "given once"},
		{"bad escape", "/v1/channels/1/chat-token?userId=u&role=viewer&origin=%zz", "", "origin", "invalid escape"},
		{"semicolon", "/v1/channels/1/chat-token?userId=u&role=viewer;origin=web", "", "query", "not ';'"},
		{"parameter on the old route", "/v1/channels/1/token?x=1", "", "x", "unknown query parameter"},
		{"blank userId", "/v1/channels/1/chat-token?userId=%20%20&role=viewer", "", "userId", "not white space"},
		{"zero-width space", "/v1/channels/1/chat-token?userId=a%E2%80%8Bb&role=viewer", "", "userId", "format characters"},
		{"bidi override", "/v1/channels/1/chat-token?userId=%E2%80%AEabc&role=viewer", "", "userId", "format characters"},
		{"case-variant field", "/v1/channels/1/chat-tokens", `{"requests":[{"userId":"u","role":"viewer","Role":"admin"}]}`, "requests[0]", `"Role"`},
		{"repeated field", "/v1/channels/1/chat-tokens", `{"requests":[{"userId":"u","role":"viewer","role":"admin"}]}`, "requests[0]", `"role" given twice`},
		{"case-variant top level", "/v1/channels/1/chat-tokens", `{"Requests":[{"userId":"u","role":"viewer"}]}`, "body", `"Requests"`},
		{"wrong type", "/v1/channels/1/chat-tokens", `{"requests":[{"userId":5,"role":"viewer"}]}`, "requests[0]", "userId must be a string"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeCache{}
			method := "GET"
			if tt.body != "" {
				method = "POST"
			}
			w := do(newTestAPI(t, fc), method, tt.target, tt.body)
			var body struct{ Error apiError }
			_ = json.Unmarshal(w.Body.Bytes(), &body)
			if w.Code != 400 || body.Error.Field != tt.field || !strings.Contains(body.Error.Message, tt.message) {
				t.Errorf("%s %s = %d %s; want 400 on %s naming %s", method, tt.target, w.Code, w.Body, tt.field, tt.message)
			}
			if fc.calls.Load() != 0 {
				t.Error("a bad request reached the cache")
			}
		})
	}
}

func TestAccessLogCapsClientText(t *testing.T) {
	var log bytes.Buffer
	e := New(Options{Cache: &fakeCache{}, APIKeys: []string{testKey}, Logger: slog.New(slog.NewJSONHandler(&log, nil))})
	req := httptest.NewRequest("GET", "/"+strings.Repeat("p", 100000), nil)
	req.Header.Set("X-Request-Id", strings.Repeat("r", 100000))
	e.ServeHTTP(httptest.NewRecorder(), req)
	if n := log.Len(); n > 2000 {
		t.Errorf("one request wrote %d bytes of log", n)
	}
}

func TestRequestTimeoutHeader(t *testing.T) {
	fc := &fakeCache{}
	e := newTestAPI(t, fc)
	var left time.Duration
	send := func(timeout string) int {
		defer func() { left = time.Until(time.Unix(0, fc.deadline.Load())) }()
		req := httptest.NewRequest("GET", chatPath+"?userId=u&role=viewer", nil)
		req.Header.Set("Authorization", "Bearer "+testKey)
		if timeout != "" {
			req.Header.Set("Request-Timeout", timeout)
		}
		w := httptest.NewRecorder()
		e.ServeHTTP(w, req)
		return w.Code
	}
	// The answer leaves before the caller's deadline: 5% of it, at most
	// 50ms, is kept for sending it.
	if send("0.25") != 200 || left > 238*time.Millisecond || left < 100*time.Millisecond {
		t.Errorf("with Request-Timeout 0.25 the cache got %v, want under 238ms (the answer's margin kept)", left)
	}
	if send("2") != 200 || left > 2*time.Second-50*time.Millisecond {
		t.Errorf("with Request-Timeout 2 the cache got %v, want under 1.95s", left)
	}
	if send("3600") != 200 || left > 10*time.Second {
		t.Errorf("with Request-Timeout 3600 the cache got %v, want the server's own 10s at most", left)
	}
	if send("") != 200 || left > 10*time.Second || left < 9*time.Second {
		t.Errorf("without Request-Timeout the cache got %v", left)
	}
	for _, bad := range []string{"0", "-1", "soon", "NaN", "Inf"} {
		if code := send(bad); code != 400 {
			t.Errorf("Request-Timeout %q = %d, want 400", bad, code)
		}
	}
}

func TestAccessLogModes(t *testing.T) {
	for _, tt := range []struct {
		mode      string
		oks, want int
	}{{AccessLogErrors, 200, 1}, {AccessLogSampled, 200, 3}, {AccessLogAll, 200, 201}} {
		var log bytes.Buffer
		e := New(Options{Cache: &fakeCache{}, APIKeys: []string{testKey}, AccessLog: tt.mode, Logger: slog.New(slog.NewJSONHandler(&log, nil))})
		for range tt.oks {
			do(e, "GET", chatPath+"?userId=u&role=viewer", "")
		}
		do(e, "GET", "/nowhere", "") // a 404 is always logged
		lines := strings.Count(log.String(), `"msg":"request"`)
		if lines != tt.want {
			t.Errorf("mode %s: %d lines for %d hits and a 404, want %d", tt.mode, lines, tt.oks, tt.want)
		}
		if !strings.Contains(log.String(), `"latency_ms":`) || !strings.Contains(log.String(), `"status":404`) {
			t.Errorf("mode %s: lines lack latency_ms or status:\n%s", tt.mode, log.String())
		}
	}
}

// Invisible characters that are neither control nor format characters
// (Hangul fillers, the blank Braille pattern, the replacement character of
// a broken surrogate) are refused in a userId too: two ids that look alike
// must be alike.
func TestInvisibleUserIDRefused(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	for _, id := range []string{"a\u3164b", "a\u2800b", "\u115f", "\u1160x", "x\uffa0", "a\ufffdb"} {
		w := do(e, "GET", chatPath+"?userId="+url.QueryEscape(id)+"&role=viewer", "")
		if w.Code != 400 || !strings.Contains(w.Body.String(), `"field":"userId"`) {
			t.Errorf("userId %q = %d %s, want 400 naming userId", id, w.Code, w.Body)
		}
	}
	if w := do(e, "GET", chatPath+"?userId="+url.QueryEscape("王小明-1b448be323")+"&role=viewer", ""); w.Code != 200 {
		t.Errorf("a visible non-ASCII userId = %d, want 200", w.Code)
	}
}

// The bulk route refuses what the other routes refuse: unknown query
// parameters (400), and a body that is not JSON by its Content-Type (415).
func TestBulkRefusesStrayQueryAndContentType(t *testing.T) {
	e := newTestAPI(t, &fakeCache{})
	body := `{"requests":[{"userId":"a","role":"viewer"}]}`
	path := "/v1/channels/2094979/chat-tokens"
	if w := do(e, "POST", path+"?x=1", body); w.Code != 400 {
		t.Errorf("bulk with ?x=1 = %d, want 400", w.Code)
	}
	req := httptest.NewRequest("POST", path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testKey)
	req.Header.Set("Content-Type", "text/plain")
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	if w.Code != http.StatusUnsupportedMediaType || !strings.Contains(w.Body.String(), "application/json") {
		t.Errorf("bulk as text/plain = %d %s, want 415 naming application/json", w.Code, w.Body)
	}
	if w := do(e, "POST", path, body); w.Code != 200 {
		t.Errorf("bulk as JSON = %d, want 200", w.Code)
	}
}

// The body limit is the bytes MaxBodyBytes says: 1 MiB by default, not the
// 1,000,000 bytes echo reads "1M" as.
func TestBodyLimitIsInBytes(t *testing.T) {
	e := New(Options{Cache: &fakeCache{}, APIKeys: []string{testKey}, Logger: newTestLogger()})
	pad := strings.Repeat(" ", 1_040_000) // JSON allows white space
	body := `{"requests":[{"userId":"a","role":"viewer"}]` + pad + `}`
	if w := do(e, "POST", "/v1/channels/2094979/chat-tokens", body); w.Code != 200 {
		t.Errorf("a %d-byte body = %d, want 200 under 1 MiB", len(body), w.Code)
	}
	if w := do(e, "POST", "/v1/channels/2094979/chat-tokens", body+strings.Repeat(" ", 10_000)); w.Code != 413 {
		t.Errorf("a body over 1 MiB = %d, want 413", w.Code)
	}
}
