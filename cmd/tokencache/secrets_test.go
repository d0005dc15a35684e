package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// Every entry point, with a sentinel secret in every secret setting: none
// may appear in any output.
func TestNoSecretInAnyOutput(t *testing.T) {
	const appSecret = "sentinel-app-secret"
	encKey := base64.StdEncoding.EncodeToString([]byte("sentinel-encryption-key-32-bytes"))
	sentinels := []string{appSecret, "sentinel-api-key", "sentinel-redis-pw", encKey, "sentinel-base-pw"}

	redisSrv := redistest.Start(t, "--requirepass", "sentinel-redis-pw")
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "app", AppSecret: appSecret})
	t.Cleanup(sim.Close)
	env := map[string]string{
		"TOKENCACHE_ADDR": "127.0.0.1:0", "POLYV_APP_ID": "app", "POLYV_APP_SECRET": appSecret,
		"POLYV_BASE_URL":             strings.Replace(sim.URL, "http://", "http://user:sentinel-base-pw@", 1),
		"REDIS_URL":                  "redis://:sentinel-redis-pw@" + redisSrv.Addr + "/0",
		"TOKENCACHE_API_KEYS":        "sentinel-api-key",
		"TOKENCACHE_ENCRYPTION_KEYS": "k1:" + encKey,
	}
	var outputs []string
	check := func(where string) {
		t.Helper()
		for _, out := range outputs {
			for _, s := range sentinels {
				if strings.Contains(out, s) {
					t.Errorf("%s: %q appears in:\n%s", where, s, out)
				}
			}
		}
		outputs = nil
	}

	// Usage, a bad flag, and bad config.
	for _, args := range [][]string{{"-h"}, {"-ttl=zz"}, {"-ttl=7h"}} {
		var stdout, stderr strings.Builder
		err := run(context.Background(), args, envFunc(env), &stdout, &stderr)
		outputs = append(outputs, stdout.String(), stderr.String(), errString(err))
		check(strings.Join(args, " "))
	}

	// Start, readyz, a token, a 5xx, shutdown.
	url, stdout, stderr, stop := startRun(t, nil, env)
	get := func(path string) {
		req, _ := http.NewRequest("GET", url+path, nil)
		req.Header.Set("Authorization", "Bearer sentinel-api-key")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		outputs = append(outputs, string(b))
	}
	get("/readyz")
	get("/v1/channels/2094979/chat-token?userId=u&role=viewer")
	sim.Sim.SetErrorRate(1)
	get("/v1/channels/2094979/chat-token?userId=another&role=viewer")
	get("/metrics")
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	outputs = append(outputs, stdout.String(), stderr.String())
	if !strings.Contains(stderr.String(), `"level":"ERROR"`) {
		t.Errorf("no 5xx was logged; the test did not reach that entry point:\n%s", stderr)
	}
	check("running server")
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
