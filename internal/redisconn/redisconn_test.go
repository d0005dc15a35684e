package redisconn_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/internal/redisconn"
	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/testcerts"
	"github.com/tokencache/tokencache/polyv"
)

// instantUpstream answers at once with a new token.
type instantUpstream struct{ n atomic.Int64 }

func (u *instantUpstream) ChatToken(context.Context, polyv.ChatTokenRequest) (polyv.ChatToken, error) {
	return polyv.ChatToken{Token: fmt.Sprint("tok-", u.n.Add(1)), MediaChannelKey: "m"}, nil
}

func (u *instantUpstream) ChannelToken(context.Context, string) (polyv.ChannelToken, error) {
	return polyv.ChannelToken{Token: fmt.Sprint("tok-", u.n.Add(1)), MediaChannelKey: "m"}, nil
}

func newCache(t *testing.T, srv *redistest.Server) *cache.Cache {
	t.Helper()
	c, err := cache.New(srv.Client(t), &instantUpstream{}, cache.Options{RateLimit: 100000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// slowest runs n Gets of new keys, one after another, and returns the
// longest one.
func slowest(t *testing.T, c *cache.Cache, n int, timeout time.Duration) time.Duration {
	t.Helper()
	var worst time.Duration
	for i := range n {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		start := time.Now()
		_, _, _ = c.Get(ctx, cache.Key{ChannelID: "c", UserID: fmt.Sprint(time.Now().UnixNano(), i), Role: "viewer"})
		worst = max(worst, time.Since(start))
		cancel()
	}
	return worst
}

// A dead Redis costs each request at most a few hundred milliseconds, even
// before the circuit opens. The bound is generous, so that it only catches
// retries and dial loops, never a slow machine.
func TestKilledRedisCostsLittle(t *testing.T) {
	srv := redistest.Start(t)
	c := newCache(t, srv)
	srv.Kill()
	if worst := slowest(t, c, 10, 10*time.Second); worst > time.Second {
		t.Errorf("slowest Get() with Redis killed took %v, want under 1s", worst)
	}
}

// A stalled Redis never holds a caller past its own deadline.
func TestStalledRedisRespectsTheCallersDeadline(t *testing.T) {
	srv := redistest.Start(t, "--enable-debug-command", "local")
	c := newCache(t, srv)
	admin := srv.Client(t)
	stalled := make(chan error, 1)
	go func() { stalled <- admin.Do(context.Background(), "DEBUG", "SLEEP", "2").Err() }()
	time.Sleep(100 * time.Millisecond) // DEBUG SLEEP is under way
	if worst := slowest(t, c, 3, 100*time.Millisecond); worst > 400*time.Millisecond {
		t.Errorf("slowest Get() with a 100ms deadline on a stalled Redis took %v", worst)
	}
	<-stalled
}

// rediss:// with a private CA and a client certificate, against a
// redis-server that speaks only TLS and requires client certificates.
func TestRedisTLS(t *testing.T) {
	certs := testcerts.Write(t)
	srv := redistest.StartTLS(t, certs.CA, certs.ServerCert, certs.ServerKey)
	url := "rediss://" + srv.Addr
	ping := func(o redisconn.Options) error {
		rdb, err := redisconn.Open(o)
		if err != nil {
			return err
		}
		defer rdb.Close()
		return rdb.Ping(context.Background()).Err()
	}
	if err := ping(redisconn.Options{URL: url, TLSCAFile: certs.CA, TLSCertFile: certs.ClientCert, TLSKeyFile: certs.ClientKey}); err != nil {
		t.Errorf("with the CA and a client certificate: %v", err)
	}
	if err := ping(redisconn.Options{URL: url, TLSCAFile: certs.CA}); err == nil {
		t.Error("a client without a certificate got in")
	}
	if err := ping(redisconn.Options{URL: url, TLSCertFile: certs.ClientCert, TLSKeyFile: certs.ClientKey}); err == nil {
		t.Error("a server certificate from an unknown CA was trusted")
	}
	if _, err := redisconn.Open(redisconn.Options{URL: "redis://" + srv.Addr, TLSCAFile: certs.CA}); err == nil {
		t.Error("REDIS_TLS_CA_FILE was accepted with a redis:// URL")
	}
}

func TestRedactURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"redis://:pw@host:6379/0", "redis://[redacted]@host:6379/0"},
		{"rediss://user:pw@host", "rediss://[redacted]@host"},
		{"redis://host?master_name=m&password=pw&sentinel_password=spw", "redis://host?master_name=m&password=[redacted]&sentinel_password=[redacted]"},
		{"redis://host:6379", "redis://host:6379"},
	} {
		if got := redisconn.RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// A password holding URL delimiters never shows in an error, whatever the
// parser made of the URL.
func TestOpenErrorHidesAnAwkwardPassword(t *testing.T) {
	for _, secret := range []string{"SEC?RET1", "SEC#RET2", "SEC/RET3", "SEC@RET4"} {
		_, err := redisconn.Open(redisconn.Options{URL: "redis://user:" + secret + "@127.0.0.1:6379/0"})
		if err != nil && (strings.Contains(err.Error(), "SEC") || strings.Contains(err.Error(), "RET")) {
			t.Errorf("Open() with password %q = %v", secret, err)
		}
	}
}
