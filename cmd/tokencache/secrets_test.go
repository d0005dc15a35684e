package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"regexp"
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

	// Start, readyz, a token, a 5xx, metrics, pprof, shutdown: with the
	// secrets in the environment, as flags, and in files.
	dir := t.TempDir()
	writeFile := func(name, body string) string {
		path := dir + "/" + name
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	files := map[string]string{
		"POLYV_APP_SECRET_FILE":           writeFile("secret", appSecret),
		"TOKENCACHE_API_KEYS_FILE":        writeFile("keys.yaml", "keys:\n  - {name: k, key: sentinel-api-key}\n"),
		"TOKENCACHE_ENCRYPTION_KEYS_FILE": writeFile("enc", "k1:"+encKey),
	}
	flags := []string{"-polyv-app-secret", appSecret, "-api-keys", "sentinel-api-key", "-encryption-keys", "k1:" + encKey,
		"-redis-url", env["REDIS_URL"]}
	for _, way := range []string{"environment", "flags", "files"} {
		runEnv := map[string]string{"TOKENCACHE_ADMIN_ADDR": "127.0.0.1:0", "TOKENCACHE_PPROF": "true"}
		var args []string
		for k, v := range env {
			runEnv[k] = v
		}
		switch way {
		case "flags":
			for _, k := range []string{"POLYV_APP_SECRET", "TOKENCACHE_API_KEYS", "TOKENCACHE_ENCRYPTION_KEYS", "REDIS_URL"} {
				delete(runEnv, k)
			}
			args = flags
		case "files":
			for _, k := range []string{"POLYV_APP_SECRET", "TOKENCACHE_API_KEYS", "TOKENCACHE_ENCRYPTION_KEYS"} {
				delete(runEnv, k)
			}
			for k, v := range files {
				runEnv[k] = v
			}
		}
		sim.Sim.SetErrorRate(0)
		url, stdout, stderr, stop := startRun(t, args, runEnv)
		m := regexp.MustCompile(`"adminUrl":"(http://[^"]+)"`).FindStringSubmatch(stderr.String())
		if m == nil {
			t.Fatalf("%s: no admin URL in the start log", way)
		}
		get := func(url string) {
			req, _ := http.NewRequest("GET", url, nil)
			req.Header.Set("Authorization", "Bearer sentinel-api-key")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			outputs = append(outputs, string(b))
		}
		get(m[1] + "/readyz")
		get(url + "/v1/channels/2094979/chat-token?userId=u&role=viewer")
		sim.Sim.SetErrorRate(1)
		get(url + "/v1/channels/2094979/chat-token?userId=another-" + way + "&role=viewer")
		get(m[1] + "/metrics")
		for _, page := range []string{"", "cmdline", "goroutine?debug=2", "heap?debug=1"} {
			get(m[1] + "/debug/pprof/" + page)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		outputs = append(outputs, stdout.String(), stderr.String())
		if !strings.Contains(stderr.String(), `"level":"ERROR"`) {
			t.Errorf("%s: no 5xx was logged; the test did not reach that entry point:\n%s", way, stderr)
		}
		check("running server, secrets in " + way)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
