package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// Outside -demo nothing insecure or single-instance starts by default: a
// shared Redis is required, and so is encryption at rest unless it is
// turned off on purpose.
func TestSecureDefaultsOutsideDemo(t *testing.T) {
	base := func() map[string]string {
		return map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s", "TOKENCACHE_API_KEYS": "k"}
	}
	_, err := loadConfig(nil, envFunc(base()), io.Discard)
	for _, want := range []string{"REDIS_URL is required", "TOKENCACHE_ENCRYPTION_KEYS", "TOKENCACHE_ENCRYPTION=off"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("no REDIS_URL, no keys: error %v does not say %q", err, want)
		}
	}
	env := base()
	env["REDIS_URL"], env["TOKENCACHE_ENCRYPTION"] = "redis://127.0.0.1:1", "off"
	if _, err := loadConfig(nil, envFunc(env), io.Discard); err != nil {
		t.Errorf("encryption off on purpose: %v", err)
	}
	env["TOKENCACHE_ENCRYPTION"] = "maybe"
	if _, err := loadConfig(nil, envFunc(env), io.Discard); err == nil || !strings.Contains(err.Error(), `TOKENCACHE_ENCRYPTION="maybe"`) {
		t.Errorf("TOKENCACHE_ENCRYPTION=maybe: %v", err)
	}
	env["TOKENCACHE_ENCRYPTION"], env["TOKENCACHE_ENCRYPTION_KEYS"] = "off", "k1:"+strings.Repeat("A", 43)+"="
	if _, err := loadConfig(nil, envFunc(env), io.Discard); err == nil || !strings.Contains(err.Error(), "TOKENCACHE_ENCRYPTION=off") {
		t.Errorf("encryption off with keys: %v", err)
	}
	if _, err := loadConfig([]string{"-demo"}, envFunc(nil), io.Discard); err != nil {
		t.Errorf("-demo: %v", err)
	}
}

// Encryption turned off on purpose says so at start, once, and in /readyz.
func TestEncryptionOffIsReported(t *testing.T) {
	redisSrv := redistest.Start(t)
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "a", AppSecret: "s"})
	t.Cleanup(sim.Close)
	url, _, stderr, _ := startRun(t, nil, map[string]string{
		"TOKENCACHE_ADDR": "127.0.0.1:0", "POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s", "POLYV_BASE_URL": sim.URL,
		"REDIS_URL": "redis://" + redisSrv.Addr, "TOKENCACHE_API_KEYS": "k", "TOKENCACHE_ENCRYPTION": "off",
	})
	if n := strings.Count(stderr.String(), `"level":"WARN","msg":"TOKENCACHE_ENCRYPTION=off`); n != 1 {
		t.Errorf("%d WARN lines say encryption is off, want 1:\n%s", n, stderr)
	}
	var ready map[string]any
	resp, err := http.Get(url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&ready)
	if ready["encryption"] != "off" {
		t.Errorf("/readyz = %v, want encryption: off", ready)
	}
}

// The demo's embedded Redis listens on loopback and requires a password
// generated at start.
func TestDemoRedisNeedsItsPassword(t *testing.T) {
	_, _, stderr, _ := startRun(t, []string{"-demo", "-addr", "127.0.0.1:0"}, nil)
	m := regexp.MustCompile(`"embeddedRedis":"(127\.0\.0\.1:\d+)"`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("the start log does not name the embedded Redis's address:\n%s", stderr)
	}
	c := redis.NewClient(&redis.Options{Addr: m[1], MaxRetries: -1})
	defer c.Close()
	if err := c.Ping(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("PING without the password = %v, want NOAUTH", err)
	}
}
