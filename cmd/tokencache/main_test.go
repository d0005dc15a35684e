package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/internal/syncbuf"
	"github.com/tokencache/tokencache/internal/testwait"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// syncBuffer is a bytes.Buffer safe to write and read at once.
type syncBuffer = syncbuf.Buffer

func envFunc(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// startRun runs the server and returns its URL and output; it stops at cleanup
// and checks that run returned nil.
func startRun(t *testing.T, args []string, env map[string]string) (url string, stdout, stderr *syncBuffer, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr = &syncBuffer{}, &syncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, envFunc(env), stdout, stderr) }()
	re := regexp.MustCompile(`"msg":"ready","url":"(https?://[^"]+)"`)
	var returned bool
	var early error
	ready := testwait.Until(10*time.Second, func() bool {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			url = m[1]
			return true
		}
		select {
		case early = <-done:
			returned = true
		default:
		}
		return returned
	})
	if returned || !ready {
		cancel()
		t.Fatalf("run() returned early (%v) or was not ready in 10 s:\n%s", early, stderr)
	}
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() { cancel(); runErr = <-done })
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return url, stdout, stderr, stop
}

func TestEndToEnd(t *testing.T) {
	redisSrv := redistest.Start(t)
	sim := polyvsim.NewTestServer(polyvsim.Options{AppID: "e2e-app", AppSecret: "e2e-secret-value"})
	t.Cleanup(sim.Close)
	url, _, stderr, stop := startRun(t, nil, map[string]string{
		"TOKENCACHE_ADDR": "127.0.0.1:0", "POLYV_APP_ID": "e2e-app", "POLYV_APP_SECRET": "e2e-secret-value",
		"POLYV_BASE_URL": sim.URL, "REDIS_URL": "redis://" + redisSrv.Addr, "TOKENCACHE_API_KEYS": "k1,k2",
		"TOKENCACHE_ENCRYPTION": "off",
	})

	get := func(path, key string) (*http.Response, []byte) {
		req, _ := http.NewRequest("GET", url+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	if n := strings.Count(stderr.String(), "TOKENCACHE_ENCRYPTION=off: Redis holds tokens"); n != 1 {
		t.Errorf("the server said %d times that encryption is off, want once", n)
	}
	const path = "/v1/channels/2094979/chat-token?userId=1b448be323&role=viewer&origin=web"
	resp, body := get(path, "k2")
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Status") != "tokencache; fwd=miss; stored" {
		t.Fatalf("first GET = %d %s %s", resp.StatusCode, resp.Header.Get("Cache-Status"), body)
	}
	var tok struct{ Token string }
	_ = json.Unmarshal(body, &tok)
	resp, body = get(path, "k1")
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Status") != "tokencache; hit" || !strings.Contains(string(body), tok.Token) {
		t.Fatalf("second GET = %d %s %s", resp.StatusCode, resp.Header.Get("Cache-Status"), body)
	}
	if n := sim.Sim.Stats().Issued; n != 1 {
		t.Errorf("Polyv calls = %d, want 1", n)
	}
	keys, _ := redisSrv.Client(t).Keys(context.Background(), "tc:v1:*").Result()
	if len(keys) == 0 {
		t.Error("nothing stored in the real Redis")
	}
	_, body = get("/metrics", "")
	for _, want := range []string{`tokencache_cache_results_total{result="hit_local"} 1`, `tokencache_cache_results_total{result="miss"} 1`,
		`tokencache_upstream_requests_total{endpoint="get-chat-token",outcome="ok"} 1`, "tokencache_requests_total{", "tokencache_lease_wait_seconds",
		"tokencache_redis_errors_total", "tokencache_upstream_duration_seconds", "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	_, body = get("/readyz", "")
	if !strings.Contains(string(body), `"embeddedRedis":false`) || !strings.Contains(string(body), `"redis":"ok"`) {
		t.Errorf("readyz = %s", body)
	}

	// Graceful shutdown: a request in flight when the signal comes finishes.
	sim.Sim.SetLatency(500 * time.Millisecond)
	called := sim.Sim.Stats().Calls["get-chat-token"]
	inflight := make(chan int, 1)
	go func() {
		resp, _ := get("/v1/channels/2094979/chat-token?userId=slow&role=viewer", "k1")
		inflight <- resp.StatusCode
	}()
	testwait.Eventually(t, 5*time.Second, "the request to reach Polyv", func() bool { return sim.Sim.Stats().Calls["get-chat-token"] > called })
	if err := stop(); err != nil {
		t.Fatalf("run() = %v", err)
	}
	if code := <-inflight; code != 200 {
		t.Errorf("in-flight request = %d, want 200", code)
	}
	if out := stderr.String(); strings.Contains(out, "e2e-secret-value") || !strings.Contains(out, `"msg":"stopped"`) {
		t.Errorf("log leaks the secret or lacks the stop line:\n%s", out)
	}
}

func TestDemoCurlWorks(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is not installed; .ci/run installs it")
		}
		t.Skip("curl is not installed")
	}
	_, stdout, stderr, _ := startRun(t, []string{"-demo", "-addr", "127.0.0.1:0"}, map[string]string{})
	if strings.Contains(stderr.String(), "TOKENCACHE_ENCRYPTION=off") || !strings.Contains(stderr.String(), `"encryptionKeys":["demo"]`) {
		t.Errorf("the demo does not seal tokens:\n%s", stderr)
	}
	line := ""
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, "curl ") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("no curl line in:\n%s", stdout)
	}
	out, err := exec.Command("sh", "-c", line).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	var body struct{ Token, ChannelID string }
	if err := json.Unmarshal(out, &body); err != nil || len(body.Token) != 32 || body.ChannelID != "2094979" {
		t.Errorf("curl printed %s", out)
	}
	// The simulator's address is printed, for tokenload -stats.
	m := regexp.MustCompile(`-stats (http://127\.0\.0\.1:\d+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no simulator address in:\n%s", stdout)
	}
	resp, err := http.Get(m[1] + "/stats")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("the printed simulator address does not answer /stats: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}
}

func TestBindErrorReportedAtOnce(t *testing.T) {
	err := run(context.Background(), []string{"-demo", "-addr", "256.0.0.1:1"}, envFunc(nil), io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "listen") {
		t.Errorf("run() = %v, want a listen error", err)
	}
}

func TestConfigListsEveryProblem(t *testing.T) {
	_, err := loadConfig(nil, envFunc(map[string]string{
		"TOKENCACHE_TTL": "7h", "POLYV_RATE_LIMIT": "lots", "POLYV_SIGN_METHOD": "SHA1", "TOKENCACHE_LOG_FORMAT": "xml",
		"REDIS_URL": "http://x",
	}), io.Discard)
	if err == nil {
		t.Fatal("loadConfig() = nil")
	}
	for _, want := range []string{"POLYV_APP_ID", "POLYV_APP_SECRET", "TOKENCACHE_API_KEYS", "TOKENCACHE_TTL", "POLYV_RATE_LIMIT",
		"POLYV_SIGN_METHOD", "TOKENCACHE_LOG_FORMAT", "REDIS_URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	if n := strings.Count(err.Error(), "\n") + 1; n < 8 {
		t.Errorf("%d lines, want one per problem:\n%v", n, err)
	}
}

func TestConfigFlagsOverrideEnvAndFilesWork(t *testing.T) {
	dir := t.TempDir()
	secretFile, keysFile := dir+"/secret", dir+"/keys"
	os.WriteFile(secretFile, []byte("file-secret\n"), 0o600)
	os.WriteFile(keysFile, []byte("keys:\n  - {name: file-key, key: c}\n"), 0o600)
	cfg, err := loadConfig([]string{"-ttl", "2h", "-refresh-after", "1h", "-polyv-app-id", "flag-app", "-redis-cluster"},
		envFunc(map[string]string{"TOKENCACHE_TTL": "5h", "POLYV_APP_ID": "env-app", "POLYV_APP_SECRET_FILE": secretFile,
			"TOKENCACHE_API_KEYS_FILE": keysFile, "REDIS_URL": "redis://127.0.0.1:1", "TOKENCACHE_ENCRYPTION": "off"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TTL != 2*time.Hour || cfg.AppID != "flag-app" || cfg.AppSecret.Reveal() != "file-secret" ||
		strings.Join(cfg.Keys.Names(), ",") != "file-key" || !cfg.RedisCluster || cfg.BulkShare != 0.5 {
		t.Errorf("config = %+v", cfg)
	}
}

func TestAuthRequiredUnlessNone(t *testing.T) {
	env := map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s", "REDIS_URL": "redis://127.0.0.1:1", "TOKENCACHE_ENCRYPTION": "off"}
	if _, err := loadConfig(nil, envFunc(env), io.Discard); err == nil || !strings.Contains(err.Error(), "TOKENCACHE_AUTH=none") {
		t.Errorf("no keys: %v", err)
	}
	env["TOKENCACHE_AUTH"] = "none"
	if _, err := loadConfig(nil, envFunc(env), io.Discard); err != nil {
		t.Errorf("auth none: %v", err)
	}
}

func TestConfigSecretsMasked(t *testing.T) {
	cfg, err := loadConfig(nil, envFunc(map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "top-secret-1",
		"TOKENCACHE_API_KEYS": "api-key-secret", "REDIS_URL": "redis://user:redis-pass@host:6379/0", "TOKENCACHE_ENCRYPTION": "off"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "%v %+v %s %#v\n", cfg, cfg, cfg, cfg)
	newLogger(Config{LogFormat: "json", LogLevel: "info"}, &out).Info("cfg", "config", cfg)
	for _, secret := range []string{"top-secret-1", "api-key-secret", "redis-pass"} {
		if strings.Contains(out.String(), secret) {
			t.Errorf("%q printed:\n%s", secret, out.String())
		}
	}
}

// TestREADMEConfigTable fails when the README's configuration table drifts
// from the settings in code.
func TestREADMEConfigTable(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := configTable()
	if !strings.Contains(string(readme), want) {
		t.Errorf("README.md's configuration table differs from the code; it should read:\n\n%s", want)
	}
}

func configTable() string {
	var b strings.Builder
	b.WriteString("| variable | flag | default | meaning |\n| --- | --- | --- | --- |\n")
	var c Config
	for _, s := range c.settings() {
		def := "`" + s.def + "`"
		if s.def == "" {
			def = "empty"
		}
		fmt.Fprintf(&b, "| `%s` | `-%s` | %s | %s |\n", s.env, s.flagName(), def, s.help)
	}
	b.WriteString("| | `-demo` | off | start an in-process Polyv simulator and embedded Redis, with generated credentials |\n")
	return b.String()
}

func TestRedisURLErrorHidesPassword(t *testing.T) {
	_, _, err := openRedis(Config{RedisURL: "redis://user:hunter2@host:6379/notanumber"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("openRedis() = %v", err)
	}
}

// TestRedisDeployments serves a token through each kind of REDIS_URL.
func TestRedisDeployments(t *testing.T) {
	master := redistest.Start(t)
	sentinel := redistest.StartSentinel(t, master)
	cluster := redistest.StartCluster(t, 3)
	clusterAddrs := cluster.Options().Addrs
	for _, tc := range []struct {
		name string
		env  map[string]string
	}{
		{"single", map[string]string{"REDIS_URL": "redis://" + master.Addr + "/0"}},
		{"sentinel", map[string]string{"REDIS_URL": "redis://" + sentinel + "?master_name=mymaster"}},
		{"cluster", map[string]string{"REDIS_URL": "redis://" + clusterAddrs[0] + "?addr=" + clusterAddrs[1] + "&addr=" + clusterAddrs[2], "REDIS_CLUSTER": "true"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sim := polyvsim.NewTestServer(polyvsim.Options{})
			t.Cleanup(sim.Close)
			env := map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "POLYV_APP_ID": "sim-app", "POLYV_APP_SECRET": "sim-secret",
				"POLYV_BASE_URL": sim.URL, "TOKENCACHE_API_KEYS": "k", "TOKENCACHE_LOCAL_SIZE": "0",
				"TOKENCACHE_KEY_PREFIX": "tc-" + tc.name + ":", "TOKENCACHE_ENCRYPTION_KEYS": "k1:" + base64.StdEncoding.EncodeToString(make([]byte, 32))}
			for k, v := range tc.env {
				env[k] = v
			}
			url, _, _, _ := startRun(t, nil, env)
			get := func() (int, string) {
				req, _ := http.NewRequest("GET", url+"/v1/channels/1/chat-token?userId=u&role=viewer", nil)
				req.Header.Set("Authorization", "Bearer k")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				return resp.StatusCode, resp.Header.Get("Cache-Status")
			}
			if code, status := get(); code != 200 || status != "tokencache; fwd=miss; stored" {
				t.Errorf("first GET = %d %q, want 200 and a miss", code, status)
			}
			// The store lands just after the answer; then, with the local
			// cache off, every GET is a Redis hit.
			var code int
			var status string
			if !testwait.Until(2*time.Second, func() bool {
				code, status = get()
				return code != 200 || status == "tokencache; hit"
			}) || code != 200 {
				t.Fatalf("no Redis hit in 2 s; the last GET was %d %q", code, status)
			}
			if n := sim.Sim.Stats().Calls["get-chat-token"]; n != 1 {
				t.Errorf("Polyv calls = %d, want 1", n)
			}
			var ready struct{ Redis string }
			req, _ := http.NewRequest("GET", url+"/readyz", nil)
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				_ = json.NewDecoder(resp.Body).Decode(&ready)
				resp.Body.Close()
			}
			if ready.Redis != "ok" {
				t.Errorf("readyz redis = %q", ready.Redis)
			}
		})
	}
}

func TestAccessConfigProblems(t *testing.T) {
	dir := t.TempDir()
	broken := dir + "/broken.yaml"
	os.WriteFile(broken, []byte("# a comment\nkeys:\n  - {name: a, key: k, roles: [superuser]}\n  - {name: a, key: k2}\n"), 0o600)
	base := map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s"}
	for _, tt := range []struct {
		env  map[string]string
		want []string
	}{
		{map[string]string{"TOKENCACHE_AUTH": "none", "TOKENCACHE_API_KEYS": "k"}, []string{"TOKENCACHE_AUTH=none turns auth off, yet API keys are configured"}},
		{map[string]string{"TOKENCACHE_API_KEYS_FILE": broken}, []string{
			`TOKENCACHE_API_KEYS_FILE: key 1 ("a"): roles: "superuser" is not valid`,
			`TOKENCACHE_API_KEYS_FILE: key "a": the name is used twice`}},
		{map[string]string{"TOKENCACHE_API_KEYS": "k", "TOKENCACHE_BULK_SHARE": "1.5"}, []string{"TOKENCACHE_BULK_SHARE=1.5: must be above 0 and at most 1"}},
		{map[string]string{"TOKENCACHE_API_KEYS": "k", "TOKENCACHE_PPROF": "true"}, []string{"TOKENCACHE_PPROF needs TOKENCACHE_ADMIN_ADDR"}},
		// One setting from two sources: neither is taken silently.
		{map[string]string{"TOKENCACHE_API_KEYS": "k", "TOKENCACHE_API_KEYS_FILE": broken, "POLYV_APP_SECRET_FILE": broken, "TOKENCACHE_ENCRYPTION_KEYS": "x", "TOKENCACHE_ENCRYPTION_KEYS_FILE": broken}, []string{
			"TOKENCACHE_API_KEYS and TOKENCACHE_API_KEYS_FILE are both set; set one",
			"POLYV_APP_SECRET and POLYV_APP_SECRET_FILE are both set; set one",
			"TOKENCACHE_ENCRYPTION_KEYS and TOKENCACHE_ENCRYPTION_KEYS_FILE are both set; set one"}},
		// The cache's own rules, worded as settings.
		{map[string]string{"TOKENCACHE_API_KEYS": "k", "TOKENCACHE_LOCAL_SIZE": "-1", "TOKENCACHE_REFRESH_AFTER": "6h", "TOKENCACHE_NEGATIVE_TTL": "-1s"}, []string{
			"TOKENCACHE_LOCAL_SIZE=-1: must be 0 (off) or more",
			"TOKENCACHE_REFRESH_AFTER=6h: must be positive and under TTL (5h45m0s)",
			"TOKENCACHE_NEGATIVE_TTL=-1s: must be positive"}},
	} {
		env := maps.Clone(base)
		maps.Copy(env, tt.env)
		_, err := loadConfig(nil, envFunc(env), io.Discard)
		for _, want := range tt.want {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("loadConfig(%v) = %v, want a line %q", tt.env, err, want)
			}
		}
	}
}

// A secret given as a flag is taken, with a warning that names the flag and
// the file setting to use instead, and never the secret.
func TestSecretFlagWarns(t *testing.T) {
	cfg, err := loadConfig([]string{"-polyv-app-secret", "flag-secret", "-api-keys", "flag-key"},
		envFunc(map[string]string{"POLYV_APP_ID": "a", "REDIS_URL": "redis://127.0.0.1:1", "TOKENCACHE_ENCRYPTION": "off"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	all := strings.Join(cfg.Warnings, "\n")
	if len(cfg.Warnings) != 2 || !strings.Contains(all, "-polyv-app-secret") || !strings.Contains(all, "POLYV_APP_SECRET_FILE") ||
		!strings.Contains(all, "-api-keys") || strings.Contains(all, "flag-secret") || strings.Contains(all, "flag-key") {
		t.Errorf("warnings = %q", cfg.Warnings)
	}
}

// A bad POLYV_TIMEOUT is reported once, with its own value, not again
// through the fill timeout the cache derives from it.
func TestPolyvTimeoutReportedOnce(t *testing.T) {
	_, err := loadConfig(nil, envFunc(map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s",
		"TOKENCACHE_API_KEYS": "k", "POLYV_TIMEOUT": "-1s"}), io.Discard)
	if err == nil || strings.Count(err.Error(), "POLYV_TIMEOUT") != 1 {
		t.Errorf("loadConfig() = %v, want one line about POLYV_TIMEOUT", err)
	}
}

// Changing the keys file under a running server swaps the keys: the old one
// stops working, the new one works, and a key in both never fails.
func TestKeysFileReload(t *testing.T) {
	keysFile := t.TempDir() + "/keys.yaml"
	write := func(keys ...string) {
		var b strings.Builder
		b.WriteString("keys:\n")
		for _, k := range keys {
			fmt.Fprintf(&b, "  - {name: %s, key: %s-key}\n", k, k)
		}
		if err := os.WriteFile(keysFile, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("old", "both")
	url, _, stderr, _ := startRun(t, []string{"-demo"}, map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_API_KEYS_FILE": keysFile})
	status := func(key string) int { return tokenStatus(url, key) }
	if status("old-key") != 200 || status("new-key") != 401 {
		t.Fatal("before the change: old-key should work and new-key not")
	}
	stopBoth := make(chan struct{})
	bothFailed := make(chan int, 1)
	go func() {
		failed := 0
		for {
			select {
			case <-stopBoth:
				bothFailed <- failed
				return
			default:
			}
			if status("both-key") != 200 {
				failed++
			}
		}
	}()
	write("new", "both")
	if !testwait.Until(10*time.Second, func() bool { return status("new-key") == 200 }) {
		t.Fatalf("the new key never worked:\n%s", stderr)
	}
	if status("old-key") != 401 {
		t.Error("the old key still works after the reload")
	}
	// A broken file keeps the keys in force and logs one error.
	os.WriteFile(keysFile, []byte("keys: [oops"), 0o600)
	time.Sleep(2 * keysCheckEvery)
	if status("new-key") != 200 {
		t.Error("a broken file dropped the keys in force")
	}
	close(stopBoth)
	if n := <-bothFailed; n != 0 {
		t.Errorf("%d requests with the kept key failed during the reload", n)
	}
	if n := strings.Count(stderr.String(), "API keys file not reloaded"); n != 1 {
		t.Errorf("%d reload errors logged for one broken file, want 1", n)
	}
}

// SIGHUP reloads the keys file at once; the periodic check is off here.
func TestKeysReloadOnSIGHUP(t *testing.T) {
	defer func(d time.Duration) { keysCheckEvery = d }(keysCheckEvery)
	keysCheckEvery = time.Hour
	keysFile := t.TempDir() + "/keys.yaml"
	os.WriteFile(keysFile, []byte("keys:\n  - {name: old, key: old-key}\n"), 0o600)
	url, _, _, _ := startRun(t, []string{"-demo"}, map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_API_KEYS_FILE": keysFile})
	status := func(key string) int { return tokenStatus(url, key) }
	os.WriteFile(keysFile, []byte("keys:\n  - {name: hup, key: hup-key}\n"), 0o600)
	time.Sleep(200 * time.Millisecond)
	if status("hup-key") != 401 {
		t.Fatal("the keys were reloaded without a signal")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !testwait.Until(5*time.Second, func() bool { return status("hup-key") == 200 }) {
		t.Fatal("SIGHUP did not reload the keys")
	}
	if status("old-key") != 401 {
		t.Error("the old key works after the reload")
	}
}

// SIGHUP without a keys file is logged and ignored: it never stops the
// server.
func TestSIGHUPWithoutKeysFile(t *testing.T) {
	url, _, stderr, _ := startRun(t, []string{"-demo"}, map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_API_KEYS": "k"})
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !testwait.Until(5*time.Second, func() bool { return strings.Contains(stderr.String(), "SIGHUP ignored") }) {
		t.Fatalf("no log line for the SIGHUP:\n%s", stderr.String())
	}
	if got := tokenStatus(url, "k"); got != 200 {
		t.Errorf("after SIGHUP the server answers %d, want 200", got)
	}
}

// tokenStatus is the status of one chat-token request to url with key, or
// 0 when the request fails. It never stops the test, so a goroutine may call it.
func tokenStatus(url, key string) int {
	req, _ := http.NewRequest("GET", url+"/v1/channels/2094979/chat-token?userId=u&role=viewer", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
