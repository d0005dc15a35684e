package httpapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/tokencache/tokencache/cache"
)

func sha(key string) string { s := sha256.Sum256([]byte(key)); return hex.EncodeToString(s[:]) }

// scopedKeys is a viewer-only web backend, a key for two channel families
// that may not delete, and an ops key.
var scopedKeys = `
# comment lines are never keys
keys:
  - name: web
    sha256: ` + sha("web-key") + `
    channels: ["2094979", "30*"]
    roles: [viewer, guest]
    routes: [get, bulk]
  - name: ops
    key: ops-key   # plain form
  - name: viewers-any-route
    key: viewers-key
    roles: [viewer]
  - name: teachers
    key: teachers-key
    roles: [teacher]
  - name: viewers-with-legacy
    key: legacy-key
    roles: [viewer]
    routes: [get, legacy]
`

func newScopedAPI(t *testing.T, c TokenCache, auditLog *bytes.Buffer) *echo.Echo {
	t.Helper()
	ks, err := ParseKeysFile([]byte(scopedKeys))
	if err != nil {
		t.Fatal(err)
	}
	var auditor *Auditor
	if auditLog != nil {
		auditor = NewAuditor(slog.New(slog.NewJSONHandler(auditLog, nil)), []byte("audit-key"))
	}
	return New(Options{Cache: c, Keys: NewKeys(ks), Auditor: auditor, Logger: newTestLogger()})
}

func send(e *echo.Echo, key, method, target, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	return w
}

func TestScopes(t *testing.T) {
	for _, tt := range []struct {
		name, key, method, target string
		status                    int
		message                   string
	}{
		{"exact channel, viewer", "web-key", "GET", "/v1/channels/2094979/chat-token?userId=u&role=viewer", 200, ""},
		{"prefix channel", "web-key", "GET", "/v1/channels/3012/chat-token?userId=u&role=guest", 200, ""},
		{"channel outside", "web-key", "GET", "/v1/channels/2094978/chat-token?userId=u&role=viewer", 403, `channel "2094978"`},
		{"prefix is not substring", "web-key", "GET", "/v1/channels/130/chat-token?userId=u&role=viewer", 403, `channel "130"`},
		{"role outside", "web-key", "GET", "/v1/channels/2094979/chat-token?userId=u&role=admin", 403, `role "admin"`},
		{"route outside", "web-key", "DELETE", "/v1/channels/2094979/chat-token?userId=u&role=viewer", 403, "delete route"},
		{"legacy outside", "web-key", "GET", "/v1/channels/2094979/token", 403, "legacy route"},
		{"unrestricted", "ops-key", "DELETE", "/v1/channels/1/chat-token?userId=u&role=admin", 204, ""},
		{"unrestricted legacy", "ops-key", "GET", "/v1/channels/1/token", 200, ""},
		{"legacy for a viewers' key without routes", "viewers-key", "GET", "/v1/channels/1/token", 403, "legacy route"},
		{"legacy for a teachers' key", "teachers-key", "GET", "/v1/channels/1/token", 200, ""},
		{"legacy listed in routes", "legacy-key", "GET", "/v1/channels/1/token", 200, ""},
		{"unknown key", "nope", "GET", "/v1/channels/1/chat-token?userId=u&role=viewer", 401, ""},
		{"bad input is 400 first", "web-key", "GET", "/v1/channels/2094979/chat-token?role=viewer", 400, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := &fakeCache{}
			w := send(newScopedAPI(t, fc, nil), tt.key, tt.method, tt.target, "")
			if w.Code != tt.status {
				t.Fatalf("status = %d, want %d: %s", w.Code, tt.status, w.Body)
			}
			if tt.status == 403 {
				var body struct{ Error apiError }
				_ = json.Unmarshal(w.Body.Bytes(), &body)
				if body.Error.Code != "permission_denied" || !strings.Contains(body.Error.Message, tt.message) {
					t.Errorf("error = %+v, want permission_denied naming %s", body.Error, tt.message)
				}
				if strings.Contains(w.Body.String(), "30*") || strings.Contains(w.Body.String(), "guest") {
					t.Errorf("the answer reveals the key's scope: %s", w.Body)
				}
			}
			if tt.status >= 400 && fc.calls.Load() != 0 {
				t.Errorf("a refused request cost %d cache calls", fc.calls.Load())
			}
		})
	}
}

func TestBulkScope(t *testing.T) {
	fc := &fakeCache{}
	e := newScopedAPI(t, fc, nil)
	body := `{"requests":[{"userId":"a","role":"viewer"},{"userId":"b","role":"teacher"},{"userId":"c","role":"guest"}]}`
	w := send(e, "web-key", "POST", "/v1/channels/2094979/chat-tokens", body)
	if w.Code != 200 {
		t.Fatalf("status = %d: %s", w.Code, w.Body)
	}
	var out struct {
		Results []struct {
			Token string
			Error *apiError
		}
	}
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	if len(out.Results) != 3 || out.Results[0].Token == "" || out.Results[2].Token == "" {
		t.Fatalf("results = %+v, want tokens for items 1 and 3", out.Results)
	}
	if e := out.Results[1].Error; e == nil || e.Code != "permission_denied" || !strings.Contains(e.Message, `role "teacher"`) {
		t.Errorf("item 2 = %+v, want permission_denied for its role", out.Results[1])
	}
	if fc.calls.Load() != 2 {
		t.Errorf("cache calls = %d, want 2: the refused item costs nothing", fc.calls.Load())
	}
	// A channel outside the scope fails the whole request.
	fc.calls.Store(0)
	if w := send(e, "web-key", "POST", "/v1/channels/999/chat-tokens", body); w.Code != 403 || fc.calls.Load() != 0 {
		t.Errorf("bulk on a channel outside = %d with %d cache calls, want 403 and 0", w.Code, fc.calls.Load())
	}
}

func TestAuditTrail(t *testing.T) {
	var log bytes.Buffer
	fc := &fakeCache{}
	e := newScopedAPI(t, fc, &log)
	send(e, "ops-key", "GET", "/v1/channels/1/chat-token?userId=secret-teacher&role=teacher", "")
	send(e, "ops-key", "GET", "/v1/channels/1/chat-token?userId=secret-viewer&role=viewer", "")
	var records []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(log.String()), "\n") {
		var r map[string]string
		if json.Unmarshal([]byte(line), &r) == nil && r["msg"] == "audit" {
			records = append(records, r)
		}
	}
	if len(records) != 1 {
		t.Fatalf("audit records = %d, want 1 (the teacher's; viewer hits are not logged):\n%s", len(records), log.String())
	}
	r := records[0]
	if r["key"] != "ops" || r["role"] != "teacher" || r["channel"] != "1" || r["user"] == "" || r["outcome"] != "ok" {
		t.Errorf("audit record = %v", r)
	}
	for _, secret := range []string{"secret-teacher", "ops-key", "tok-"} {
		if strings.Contains(log.String(), secret) {
			t.Errorf("the audit log holds %q", secret)
		}
	}
	// The fetch record, as the cache reports it.
	log.Reset()
	a := NewAuditor(slog.New(slog.NewJSONHandler(&log, nil)), []byte("audit-key"))
	ctx := cache.WithCaller(httptest.NewRequest("GET", "/", nil).Context(), cache.Caller{Name: "web", Route: RouteBulk})
	a.Fetch(ctx, cache.Key{ChannelID: "2094979", UserID: "secret-viewer", Role: "viewer", Origin: "web"}, "ok")
	if !strings.Contains(log.String(), `"msg":"audit","key":"web","route":"bulk"`) || strings.Contains(log.String(), "secret-viewer") {
		t.Errorf("fetch record = %s", log.String())
	}
}

func TestKeysFileProblems(t *testing.T) {
	for _, tt := range []struct{ name, file, want string }{
		{"unknown field", "keys:\n  - name: a\n    key: k\n    channel: [\"1\"]\n", `line 4: unknown field "channel" (a key has name`},
		{"wrong type", "keys:\n  - name: a\n    key: k\n    rate: secret-k1\n", "line 4: expected a whole number, found text"},
		{"not a list", "keys: 3\n", "line 1: expected the list of keys, found a number"},
		{"not YAML", "keys: [\n", "not a keys file: yaml:"},
		{"duplicate name", "keys:\n  - {name: a, key: k1}\n  - {name: a, key: k2}\n", "name is used twice"},
		{"duplicate key", "keys:\n  - {name: a, key: k1}\n  - {name: b, sha256: " + sha("k1") + "}\n", "same key"},
		{"bad hash", "keys:\n  - {name: a, sha256: abc}\n", "64 hex digits"},
		{"empty scope", "keys:\n  - {name: a, key: k, roles: []}\n", "empty list"},
		{"unknown role", "keys:\n  - {name: a, key: k, roles: [superuser]}\n", `"superuser" is not valid`},
		{"unknown route", "keys:\n  - {name: a, key: k, routes: [admin]}\n", `"admin" is not valid`},
		{"no key", "keys:\n  - {name: a}\n", "needs sha256"},
		{"bad name", "keys:\n  - {name: A B, key: k}\n", "name must be"},
		{"bad rate", "keys:\n  - {name: a, key: k, rate: 0}\n", "rate must be"},
		{"only comments", "# keys: nothing\n", "no keys"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseKeysFile([]byte(tt.file))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseKeysFile() error = %v, want one naming %q", err, tt.want)
			}
			if err != nil && (strings.Contains(err.Error(), "k1") || strings.Contains(err.Error(), ": k\n")) {
				t.Errorf("the error quotes a key: %v", err)
			}
		})
	}
	// Every problem, one per line.
	_, err := ParseKeysFile([]byte("keys:\n  - {name: a, roles: [x]}\n  - {name: a, key: k, routes: [y]}\n"))
	if err == nil || strings.Count(err.Error(), "\n") < 3 {
		t.Errorf("ParseKeysFile() = %v, want four problems on four lines", err)
	}
}

func TestReloadSwapsKeys(t *testing.T) {
	fc := &fakeCache{}
	old, _ := ParseKeysFile([]byte("keys:\n  - {name: old, key: old-key}\n  - {name: both, key: both-key}\n"))
	keys := NewKeys(old)
	e := New(Options{Cache: fc, Keys: keys, Logger: newTestLogger()})
	get := func(key string) int {
		return send(e, key, "GET", "/v1/channels/1/chat-token?userId=u&role=viewer", "").Code
	}
	if get("old-key") != 200 || get("new-key") != 401 {
		t.Fatal("before reload: old key should work, new key not")
	}
	next, _ := ParseKeysFile([]byte("keys:\n  - {name: new, key: new-key}\n  - {name: both, key: both-key}\n"))
	keys.Store(next)
	if get("old-key") != 401 || get("new-key") != http.StatusOK || get("both-key") != 200 {
		t.Error("after reload: the old key should fail, the new and the kept ones work")
	}
}

// Every DELETE and every legacy token served is audited: key, route and
// channel, never the userId or the token.
func TestDeletesAndLegacyAudited(t *testing.T) {
	var log bytes.Buffer
	e := newScopedAPI(t, &fakeCache{}, &log)
	if w := send(e, "ops-key", "DELETE", "/v1/channels/7/chat-token?userId=secret-viewer&role=viewer", ""); w.Code != 204 {
		t.Fatalf("DELETE = %d", w.Code)
	}
	if w := send(e, "ops-key", "GET", "/v1/channels/8/token", ""); w.Code != 200 {
		t.Fatalf("legacy = %d", w.Code)
	}
	for _, want := range []string{`"key":"ops","route":"delete","channel":"7"`, `"key":"ops","route":"legacy","channel":"8"`} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("no audit record with %s in:\n%s", want, log.String())
		}
	}
	if strings.Contains(log.String(), "secret-viewer") || strings.Contains(log.String(), "tok-") {
		t.Errorf("the audit log holds a userId or a token:\n%s", log.String())
	}
}

// A request with several Authorization headers is refused, even if one of
// them holds a good key.
func TestSeveralAuthorizationHeaders(t *testing.T) {
	e := newScopedAPI(t, &fakeCache{}, nil)
	req := httptest.NewRequest("GET", "/v1/channels/1/chat-token?userId=u&role=viewer", nil)
	req.Header.Add("Authorization", "Bearer nope")
	req.Header.Add("Authorization", "Bearer ops-key")
	w := httptest.NewRecorder()
	e.ServeHTTP(w, req)
	if w.Code != 400 || !strings.Contains(w.Body.String(), "Authorization") {
		t.Errorf("two Authorization headers = %d %s, want 400 naming Authorization", w.Code, w.Body)
	}
}
