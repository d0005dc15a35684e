package polyvsim

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testwait"
	"github.com/tokencache/tokencache/polyv"
)

const secret = "sim-secret"

func post(t *testing.T, s *Server, path string, form url.Values) reply {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	var rep reply
	if err := json.Unmarshal(w.Body.Bytes(), &rep); err != nil {
		t.Fatalf("reply %q is not JSON: %v", w.Body.String(), err)
	}
	return rep
}

func form(mod func(map[string]string), method polyv.SignMethod) url.Values {
	p := map[string]string{
		"appId": "sim-app", "timestamp": strconv.FormatInt(time.Now().UnixMilli(), 10),
		"channelId": "100", "userId": "u1", "role": "viewer",
	}
	if mod != nil {
		mod(p)
	}
	return polyv.SignedForm(p, secret, method)
}

func TestChecksInPolyvOrder(t *testing.T) {
	old := strconv.FormatInt(time.Now().Add(-4*time.Minute).UnixMilli(), 10)
	tests := []struct {
		name    string
		form    url.Values
		code    int
		message string
	}{
		{"ok MD5", form(nil, polyv.SignMD5), 200, ""},
		{"ok SHA256", form(nil, polyv.SignSHA256), 200, ""},
		{"no appId", form(func(p map[string]string) { delete(p, "appId") }, polyv.SignMD5), 400, "appId is required."},
		{"wrong appId before bad timestamp", form(func(p map[string]string) { p["appId"] = "x"; p["timestamp"] = old }, polyv.SignMD5), 400, "application not found."},
		{"timestamp 4 min old", form(func(p map[string]string) { p["timestamp"] = old }, polyv.SignMD5), 400, "invalid timestamp."},
		{"timestamp in seconds", form(func(p map[string]string) { p["timestamp"] = strconv.FormatInt(time.Now().Unix(), 10) }, polyv.SignMD5), 400, "invalid timestamp."},
		{"bad role", form(func(p map[string]string) { p["role"] = "king" }, polyv.SignMD5), 400, "param validate error"},
		{"no userId", form(func(p map[string]string) { delete(p, "userId") }, polyv.SignMD5), 400, "param validate error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := post(t, New(Options{}), ChatTokenPath, tt.form)
			if rep.Code != tt.code || rep.Message != tt.message {
				t.Errorf("reply = %d %q, want %d %q", rep.Code, rep.Message, tt.code, tt.message)
			}
		})
	}

	t.Run("tampered value", func(t *testing.T) {
		f := form(nil, polyv.SignMD5)
		f.Set("userId", "u2")
		if rep := post(t, New(Options{}), ChatTokenPath, f); rep.Code != 403 || rep.Message != "invalid signature." {
			t.Errorf("reply = %d %q, want 403 invalid signature.", rep.Code, rep.Message)
		}
	})
	t.Run("SHA256 digest claimed as MD5", func(t *testing.T) {
		f := form(nil, polyv.SignSHA256)
		f.Del("signatureMethod")
		if rep := post(t, New(Options{}), ChatTokenPath, f); rep.Code != 403 {
			t.Errorf("reply = %d %q, want 403", rep.Code, rep.Message)
		}
	})
}

func TestFaultsAndStats(t *testing.T) {
	s := New(Options{IllegalChannels: []string{"666"}, ErrorRate: 0})
	if rep := post(t, s, ChatTokenPath, form(func(p map[string]string) { p["channelId"] = "666" }, polyv.SignMD5)); rep.Code != 403 || !strings.HasPrefix(rep.Message, "illegal channel id") {
		t.Errorf("illegal channel reply = %d %q", rep.Code, rep.Message)
	}
	s.SetErrorRate(1)
	if rep := post(t, s, ChannelTokenPath, form(nil, polyv.SignMD5)); rep.Code != 500 || rep.Message != "fail" {
		t.Errorf("error-rate reply = %d %q", rep.Code, rep.Message)
	}
	s.SetErrorRate(0)
	s.SetRateLimit(2)
	var limited int
	for range 5 {
		if rep := post(t, s, ChatTokenPath, form(nil, polyv.SignMD5)); rep.Message == "qps exceeds number of calls" {
			limited++
		}
	}
	if limited != 3 {
		t.Errorf("rate-limited replies = %d of 5 at 2/s, want 3", limited)
	}

	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/stats", nil))
	var st Stats
	if err := json.Unmarshal(w.Body.Bytes(), &st); err != nil {
		t.Fatal(err)
	}
	if got := s.Issued()["100/u1/viewer/"]; len(got) != 2 || len(got[0]) != 32 || got[0] == got[1] {
		t.Errorf("issued tokens = %v, want 2 distinct", got)
	}
	if st.Calls["get-chat-token"] != 6 || st.Calls["get-token"] != 1 || st.Keys["100/u1/viewer/"] != 2 || st.Issued != 2 {
		t.Errorf("stats = %+v", st)
	}
}

func TestControl(t *testing.T) {
	s := New(Options{})
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/control", strings.NewReader(`{"errorRate":1,"latency":"1ms"}`)))
	if w.Code != http.StatusNoContent {
		t.Fatalf("POST /control = %d %s", w.Code, w.Body)
	}
	if rep := post(t, s, ChatTokenPath, form(nil, polyv.SignMD5)); rep.Code != 500 {
		t.Errorf("after control, reply = %d, want 500", rep.Code)
	}
	w = httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/control", strings.NewReader(`{"latency":"soon"}`)))
	if w.Code != http.StatusBadRequest {
		t.Errorf("bad control = %d, want 400", w.Code)
	}
}

// Over the rate limit with a ban set, every call is refused for the ban,
// and a call during the ban starts it again.
func TestBan(t *testing.T) {
	now := time.Now()
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	s := New(Options{RateLimit: 1, Ban: time.Minute, Now: clock})
	call := func() string { return post(t, s, ChatTokenPath, form(nil, polyv.SignMD5)).Message }
	if msg := call(); msg != "" {
		t.Fatalf("first call = %q", msg)
	}
	if msg := call(); msg != "qps exceeds number of calls" {
		t.Fatalf("second call in the same instant = %q, want the qps error", msg)
	}
	advance(50 * time.Second)
	if msg := call(); msg != "qps exceeds number of calls" {
		t.Errorf("a call during the ban = %q, want refused", msg)
	}
	advance(50 * time.Second) // 100 s after the limit, but 50 s after the call that restarted the ban
	if msg := call(); msg != "qps exceeds number of calls" {
		t.Errorf("a call within a minute of the last = %q, want refused", msg)
	}
	advance(61 * time.Second)
	if msg := call(); msg != "" {
		t.Errorf("a call after the ban = %q, want a token", msg)
	}
	if st := s.Stats(); st.Bans != 1 || st.Outcomes["banned"] != 2 {
		t.Errorf("bans = %d, banned replies = %d; want 1 and 2", st.Bans, st.Outcomes["banned"])
	}
}

// A caller that leaves during the simulated latency is noticed at once
// (counted client_gone), not when the latency is over: the form is read
// first, so the server sees the connection close.
func TestCallerLeavingIsNoticed(t *testing.T) {
	ts := NewTestServer(Options{AppID: "a", AppSecret: "s"})
	defer ts.Close()
	ts.Sim.SetLatency(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, ts.URL+polyv.ChatTokenPath, strings.NewReader("appId=a&channelId=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("the call answered within 100 ms despite 10 s of latency")
	}
	if !testwait.Until(3*time.Second, func() bool { return ts.Sim.Stats().Outcomes["client_gone"] > 0 }) {
		t.Fatal("the simulator did not notice the caller leave within 3 s of a 10 s latency")
	}
}
