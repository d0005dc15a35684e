package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tokencache/tokencache/internal/testwait"
)

// A reload that fails keeps the keys in force and says so where an operator
// looks: /readyz's config, a counter, the keys' age and the log. A removed
// file is such a failure.
func TestKeysReloadFailureIsLoud(t *testing.T) {
	defer func(d time.Duration) { keysCheckEvery = d }(keysCheckEvery)
	keysCheckEvery = 100 * time.Millisecond
	keysFile := t.TempDir() + "/keys.yaml"
	os.WriteFile(keysFile, []byte("keys:\n  - {name: a, key: a-key}\n"), 0o600)
	url, _, stderr, _ := startRun(t, []string{"-demo"}, map[string]string{"TOKENCACHE_ADDR": "127.0.0.1:0", "TOKENCACHE_API_KEYS_FILE": keysFile})
	config := func() string {
		var ready struct{ Config string }
		resp, err := http.Get(url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&ready)
		return ready.Config
	}
	metric := func(name string) string {
		resp, err := http.Get(url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, name+" ") {
				return strings.TrimPrefix(line, name+" ")
			}
		}
		return ""
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		if !testwait.Until(5*time.Second, cond) {
			t.Fatalf("timed out waiting for %s; /readyz config %q\n%s", what, config(), stderr)
		}
	}
	if c := config(); c != "ok" {
		t.Fatalf("config = %q at start", c)
	}
	if metric("tokencache_keys_reload_errors_total") != "0" || metric("tokencache_keys_loaded_timestamp_seconds") == "" {
		t.Errorf("at start: reload errors %q, keys loaded at %q", metric("tokencache_keys_reload_errors_total"), metric("tokencache_keys_loaded_timestamp_seconds"))
	}
	for i, broken := range []struct {
		do     func()
		reason string
	}{
		{func() { os.WriteFile(keysFile, []byte("keys: [oops"), 0o600) }, "not a keys file"},
		{func() { os.Remove(keysFile) }, "no such file"},
	} {
		broken.do()
		waitFor(fmt.Sprint("failure ", i, " in /readyz"), func() bool {
			return strings.HasPrefix(config(), "keys: stale since ") && strings.Contains(config(), broken.reason)
		})
		if tokenStatus(url, "a-key") != 200 {
			t.Errorf("failure %d dropped the keys in force", i)
		}
		if got := metric("tokencache_keys_reload_errors_total"); got == "0" || got == "" {
			t.Errorf("failure %d: reload errors = %q", i, got)
		}
	}
	if n := strings.Count(stderr.String(), "API keys file not reloaded"); n != 2 {
		t.Errorf("%d reload errors logged for two failures, want 2", n)
	}
	os.WriteFile(keysFile, []byte("keys:\n  - {name: b, key: b-key}\n"), 0o600)
	waitFor("the good file to be taken", func() bool { return config() == "ok" })
	if tokenStatus(url, "b-key") != 200 || tokenStatus(url, "a-key") != 401 {
		t.Error("the good file's keys are not the ones in force")
	}
}

// A file that changes between two reads a moment apart is not taken: it
// may be half written.
func TestKeysFileReadWhileWritten(t *testing.T) {
	path := t.TempDir() + "/keys.yaml"
	os.WriteFile(path, []byte("keys: []\n"), 0o600)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			os.WriteFile(path, []byte(fmt.Sprintf("keys:\n  - {name: k%d, key: key-%d}\n", i, i)), 0o600)
			time.Sleep(5 * time.Millisecond)
		}
	}()
	_, err := readSettled(path, 50*time.Millisecond)
	close(stop)
	<-done
	if err == nil || !strings.Contains(err.Error(), "changed while") {
		t.Errorf("readSettled() of a file being written = %v, want it refused", err)
	}
	b, err := readSettled(path, 10*time.Millisecond)
	if err != nil || !strings.HasPrefix(string(b), "keys:") {
		t.Errorf("readSettled() of a settled file = %q, %v", b, err)
	}
}

// A keys file others can read warns at start when it holds keys themselves,
// and not when it holds only digests or only its owner can read it.
func TestReadableKeysFileWarns(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		body string
		mode os.FileMode
		warn bool
	}{
		{"keys:\n  - {name: a, key: a-key}\n", 0o644, true},
		{"keys:\n  - {name: a, key: a-key}\n", 0o600, false},
		{"keys:\n  - {name: a, sha256: " + strings.Repeat("ab", 32) + "}\n", 0o644, false},
	} {
		path := dir + "/keys.yaml"
		os.WriteFile(path, []byte(tc.body), tc.mode)
		os.Chmod(path, tc.mode)
		cfg, err := loadConfig([]string{"-demo"}, envFunc(map[string]string{"TOKENCACHE_API_KEYS_FILE": path}), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		warned := strings.Contains(strings.Join(cfg.Warnings, "\n"), "other users can read it")
		if warned != tc.warn {
			t.Errorf("mode %#o, %q: warned %v, want %v (%v)", tc.mode, tc.body, warned, tc.warn, cfg.Warnings)
		}
		if strings.Contains(strings.Join(cfg.Warnings, "\n"), "a-key") {
			t.Error("the warning quotes a key")
		}
	}
}
