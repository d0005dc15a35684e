package httpapi

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestTighterInput(t *testing.T) {
	for _, tt := range []struct {
		name, target, body, field, message string
	}{
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
