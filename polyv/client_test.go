package polyv_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

const (
	testAppID  = "app-under-test"
	testSecret = "s3cr3t-value-that-must-never-leak"
)

// startSim starts a simulator that knows the test credentials.
func startSim(tb testing.TB, opts polyvsim.Options) *polyvsim.TestServer {
	tb.Helper()
	opts.AppID, opts.AppSecret = testAppID, testSecret
	ts := polyvsim.NewTestServer(opts)
	tb.Cleanup(ts.Close)
	return ts
}

func newClient(tb testing.TB, baseURL string, mod func(*polyv.Options)) *polyv.Client {
	tb.Helper()
	opts := polyv.Options{AppID: testAppID, AppSecret: testSecret, BaseURL: baseURL, Timeout: 2 * time.Second,
		Retry: &polyv.RetryPolicy{MaxAttempts: 3, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}}
	if mod != nil {
		mod(&opts)
	}
	c, err := polyv.New(opts)
	if err != nil {
		tb.Fatalf("New() error = %v", err)
	}
	return c
}

var viewer = polyv.ChatTokenRequest{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"}

func TestChatTokenHappyPath(t *testing.T) {
	for _, method := range []polyv.SignMethod{polyv.SignMD5, polyv.SignSHA256} {
		t.Run(string(method), func(t *testing.T) {
			sim := startSim(t, polyvsim.Options{})
			c := newClient(t, sim.URL, func(o *polyv.Options) { o.SignMethod = method })
			before := time.Now()
			tok, err := c.ChatToken(context.Background(), viewer)
			if err != nil {
				t.Fatalf("ChatToken() error = %v", err)
			}
			if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(tok.Token) {
				t.Errorf("Token = %q, want 32 hex digits", tok.Token)
			}
			if len(tok.MediaChannelKey) < 100 || tok.RoomID != "2094979" || tok.ChildRoomEnabled != "N" ||
				tok.ChatAPIDomain != "apichat.polyv.net" || tok.ChatDomain != "chat.polyv.net" {
				t.Errorf("ChatToken() = %+v, missing Polyv's fields", tok)
			}
			if tok.IssuedAt.Before(before.Add(-time.Second)) || tok.IssuedAt.After(time.Now()) {
				t.Errorf("IssuedAt = %v, want between %v and now", tok.IssuedAt, before)
			}
			if got := sim.Sim.Stats().Keys["2094979/1b448be323/viewer/web"]; got != 1 {
				t.Errorf("simulator issued %d tokens for the key, want 1", got)
			}
		})
	}
}

func TestChannelToken(t *testing.T) {
	sim := startSim(t, polyvsim.Options{})
	c := newClient(t, sim.URL, nil)
	tok, err := c.ChannelToken(context.Background(), "2094979")
	if err != nil {
		t.Fatalf("ChannelToken() error = %v", err)
	}
	if len(tok.Token) != 32 || tok.MediaChannelKey == "" {
		t.Errorf("ChannelToken() = %+v", tok)
	}
	if got := sim.Sim.Stats().Calls[polyv.EndpointChannelToken]; got != 1 {
		t.Errorf("get-token calls = %d, want 1", got)
	}
}

func TestErrorKinds(t *testing.T) {
	tests := []struct {
		name     string
		sim      polyvsim.Options
		mod      func(*polyv.Options)
		req      polyv.ChatTokenRequest
		want     polyv.Kind
		attempts int64 // calls the simulator must see
	}{
		{"wrong secret", polyvsim.Options{}, func(o *polyv.Options) { o.AppSecret = "wrong" }, viewer, polyv.KindMisconfigured, 1},
		{"unknown app", polyvsim.Options{}, func(o *polyv.Options) { o.AppID = "nobody" }, viewer, polyv.KindMisconfigured, 1},
		{"clock 10 min behind", polyvsim.Options{}, func(o *polyv.Options) { o.Now = func() time.Time { return time.Now().Add(-10 * time.Minute) } }, viewer, polyv.KindMisconfigured, 1},
		{"bad role", polyvsim.Options{}, nil, polyv.ChatTokenRequest{ChannelID: "1", UserID: "u", Role: "king"}, polyv.KindRejected, 1},
		{"missing userId", polyvsim.Options{}, nil, polyv.ChatTokenRequest{ChannelID: "1", UserID: " ", Role: "viewer"}, polyv.KindRejected, 1},
		{"illegal channel", polyvsim.Options{IllegalChannels: []string{"2094979"}}, nil, viewer, polyv.KindRejected, 1},
		{"server error retried", polyvsim.Options{ErrorRate: 1}, nil, viewer, polyv.KindServer, 3},
		{"rate limited not retried", polyvsim.Options{RateLimit: 1}, nil, viewer, polyv.KindRateLimited, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := startSim(t, tt.sim)
			c := newClient(t, sim.URL, tt.mod)
			if tt.want == polyv.KindRateLimited { // spend the one-call budget first
				if _, err := c.ChatToken(context.Background(), viewer); err != nil {
					t.Fatalf("first call error = %v", err)
				}
				sim.Sim.ResetStats()
			}
			_, err := c.ChatToken(context.Background(), tt.req)
			if got := polyv.Classify(err); got != tt.want {
				t.Fatalf("Classify(%v) = %v, want %v", err, got, tt.want)
			}
			var apiErr *polyv.APIError
			if !errors.As(err, &apiErr) || apiErr.Message == "" {
				t.Errorf("error %v is not an *APIError with Polyv's message", err)
			}
			if got := sim.Sim.Stats().Calls[polyv.EndpointChatToken]; got != tt.attempts {
				t.Errorf("simulator saw %d calls, want %d", got, tt.attempts)
			}
		})
	}
}

func TestRetryRecoversFromTransientFailure(t *testing.T) {
	sim := startSim(t, polyvsim.Options{})
	var calls atomic.Int32
	// The first two attempts meet a gateway's HTML 502; the third reaches Polyv.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) <= 2 {
			w.WriteHeader(http.StatusBadGateway)
			fmt.Fprint(w, "<html><body>502 Bad Gateway</body></html>")
			return
		}
		sim.Config.Handler.ServeHTTP(w, r)
	}))
	defer srv.Close()
	c := newClient(t, srv.URL, nil)
	if _, err := c.ChatToken(context.Background(), viewer); err != nil {
		t.Fatalf("ChatToken() error = %v", err)
	}
	if got := calls.Load(); got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
}

func TestEachAttemptSignsAFreshTimestamp(t *testing.T) {
	var stamps []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		stamps = append(stamps, r.PostForm.Get("timestamp")+"/"+r.PostForm.Get("sign"))
		w.WriteHeader(http.StatusInternalServerError)
		fmt.Fprint(w, `{"code":500,"status":"error","message":"fail","data":""}`)
	}))
	defer srv.Close()
	var tick atomic.Int64
	start := time.Now()
	c := newClient(t, srv.URL, func(o *polyv.Options) {
		o.Now = func() time.Time { return start.Add(time.Duration(tick.Add(1)) * time.Millisecond) }
	})
	_, err := c.ChatToken(context.Background(), viewer)
	if polyv.Classify(err) != polyv.KindServer {
		t.Fatalf("error = %v, want server error", err)
	}
	if len(stamps) != 3 {
		t.Fatalf("attempts = %d, want 3", len(stamps))
	}
	seen := map[string]bool{}
	for _, s := range stamps {
		if seen[s] {
			t.Errorf("timestamp/sign %s sent twice", s)
		}
		seen[s] = true
	}
}

func TestDeadlineRespected(t *testing.T) {
	sim := startSim(t, polyvsim.Options{Latency: 2 * time.Second})
	c := newClient(t, sim.URL, func(o *polyv.Options) { o.Timeout = 10 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := c.ChatToken(ctx, viewer); done <- err }()
	select {
	case err := <-done:
		if polyv.Classify(err) != polyv.KindTimeout {
			t.Errorf("error = %v, want a timeout", err)
		}
	case <-time.After(1500 * time.Millisecond):
		t.Fatal("ChatToken outlived its caller's deadline by more than a second")
	}
	if got := sim.Sim.Stats().Calls[polyv.EndpointChatToken]; got != 1 {
		t.Errorf("attempts = %d, want 1: no retry past the deadline", got)
	}
}

func TestPerAttemptTimeoutIsRetried(t *testing.T) {
	sim := startSim(t, polyvsim.Options{Latency: time.Second})
	c := newClient(t, sim.URL, func(o *polyv.Options) { o.Timeout = 50 * time.Millisecond })
	_, err := c.ChatToken(context.Background(), viewer)
	if polyv.Classify(err) != polyv.KindTimeout {
		t.Errorf("error = %v, want a timeout", err)
	}
	if got := sim.Sim.Stats().Calls[polyv.EndpointChatToken]; got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
}

func TestNetworkError(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	c := newClient(t, url, nil)
	_, err := c.ChatToken(context.Background(), viewer)
	if got := polyv.Classify(err); got != polyv.KindNetwork {
		t.Errorf("Classify(%v) = %v, want network", err, got)
	}
}

func TestSecretNeverPrinted(t *testing.T) {
	sim := startSim(t, polyvsim.Options{})
	opts := polyv.Options{AppID: testAppID, AppSecret: testSecret, BaseURL: sim.URL}
	c := newClient(t, sim.URL, nil)
	var out strings.Builder
	for _, v := range []any{c, *c, opts, &opts, opts.AppSecret} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x"} {
			fmt.Fprintf(&out, verb+"\n", v)
		}
	}
	// Every error kind the client can return.
	errOpts := []func(*polyv.Options){
		func(o *polyv.Options) { o.AppSecret = testSecret + "x" },
		func(o *polyv.Options) { o.BaseURL = "http://127.0.0.1:1" },
		func(o *polyv.Options) { o.Timeout = time.Nanosecond },
	}
	for _, mod := range errOpts {
		_, err := newClient(t, sim.URL, mod).ChatToken(context.Background(), viewer)
		if err == nil {
			t.Fatal("expected an error")
		}
		fmt.Fprintf(&out, "%v %+v %#v\n", err, err, err)
	}
	_, err := polyv.New(polyv.Options{AppSecret: testSecret, BaseURL: "ftp://x"})
	fmt.Fprintf(&out, "%v\n", err)
	if strings.Contains(out.String(), testSecret) {
		t.Errorf("the secret appears in printed output:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "[redacted]") {
		t.Errorf("printed output shows no redaction marker:\n%s", out.String())
	}
}

func TestNewReportsEveryProblem(t *testing.T) {
	_, err := polyv.New(polyv.Options{BaseURL: "ftp://x", SignMethod: "SHA1"})
	if err == nil {
		t.Fatal("New() error = nil")
	}
	for _, want := range []string{"AppID", "AppSecret", "BaseURL", "SignMethod"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("New() error = %q, does not name %s", err, want)
		}
	}
}

func TestChannelRejected(t *testing.T) {
	for _, tt := range []struct {
		err  *polyv.APIError
		want bool
	}{
		{&polyv.APIError{Code: 403, Message: "illegal channel id: 666"}, true},
		{&polyv.APIError{Code: 400, Message: "param validate error"}, false},
		{&polyv.APIError{Code: 403, Message: "invalid signature."}, false},
		{&polyv.APIError{Code: 500, Message: "illegal channel id"}, false},
	} {
		if got := tt.err.ChannelRejected(); got != tt.want {
			t.Errorf("%q ChannelRejected() = %v, want %v", tt.err.Message, got, tt.want)
		}
	}
}
