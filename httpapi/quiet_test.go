package httpapi

import (
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/internal/syncbuf"
)

// jsonLines decodes a JSON log, one object a line.
func jsonLines(log string) []map[string]any {
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// A flood of refused requests (401 here, 503 from an overloaded Polyv)
// writes a bounded number of log lines, and says how many it left out.
func TestRefusalFloodLogsBounded(t *testing.T) {
	var logs syncbuf.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	fc := &fakeCache{get: func(cache.Key) (cache.Token, cache.Result, error) {
		return cache.Token{}, cache.ResultError, &cache.UnavailableError{Reason: "queue", RetryAfter: time.Second}
	}}
	e := New(Options{Cache: fc, APIKeys: []string{testKey}, Logger: log})
	const flood = 2000
	start := time.Now()
	for i := range flood {
		req := httptest.NewRequest("GET", "/v1/channels/1/chat-token?userId=u&role=viewer", nil)
		if i%2 == 0 {
			req.Header.Set("Authorization", "Bearer wrong-key")
		} else {
			req.Header.Set("Authorization", "Bearer "+testKey)
		}
		e.ServeHTTP(httptest.NewRecorder(), req)
	}
	// The bound: a burst of 10, then 10 a second, for however long the
	// flood took on this machine, and the line after the pause.
	bound := 10 + int(10*time.Since(start).Seconds()) + 2
	time.Sleep(1100 * time.Millisecond) // a new second: the next line is allowed
	for _, key := range []string{"wrong-key", testKey} {
		req := httptest.NewRequest("GET", "/v1/channels/1/chat-token?userId=u&role=viewer", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		e.ServeHTTP(httptest.NewRecorder(), req)
	}
	written := map[string]int{}    // lines per message and status
	suppressed := map[string]int{} // by the "suppressed" lines
	for _, m := range jsonLines(logs.String()) {
		status, _ := m["status"].(float64)
		k := m["msg"].(string) + " " + jsonNumber(status)
		if m["msg"] == "similar lines suppressed" {
			n, _ := m["suppressed"].(float64)
			suppressed[m["line"].(string)+" "+jsonNumber(status)] += int(n)
			continue
		}
		written[k]++
	}
	for _, k := range []string{"request 401", "request 503", "request failed 503"} {
		if written[k] > bound {
			t.Errorf("%d %q lines for %d requests", written[k], k, flood/2+1)
		}
		if got := written[k] + suppressed[k]; got != flood/2+1 {
			t.Errorf("%q: %d written + %d suppressed, want %d", k, written[k], suppressed[k], flood/2+1)
		}
	}
}

func jsonNumber(f float64) string { b, _ := json.Marshal(f); return string(b) }
