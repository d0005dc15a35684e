package httpapi

import (
	"bytes"
	"context"
	"io"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// TestResponsesMatchOpenAPI sends real requests through the real cache and
// simulator and validates every response against openapi.yaml.
func TestResponsesMatchOpenAPI(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPISpec)
	if err != nil {
		t.Fatalf("load spec: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("spec is invalid: %v", err)
	}
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}

	sim := polyvsim.NewTestServer(polyvsim.Options{IllegalChannels: []string{"666"}})
	t.Cleanup(sim.Close)
	client, _ := polyv.New(polyv.Options{AppID: "sim-app", AppSecret: "sim-secret", BaseURL: sim.URL})
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	c, err := cache.New(rdb, client, cache.Options{RateLimit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e := newTestAPI(t, c)

	requests := []struct {
		method, target, body string
		status               int
	}{
		{"GET", chatPath + "?userId=u1&role=viewer&origin=web", "", 200},
		{"GET", chatPath + "?userId=u1&role=viewer&origin=web", "", 200}, // hit
		{"GET", chatPath + "?userId=u1&role=king", "", 400},
		{"GET", "/v1/channels/666/chat-token?userId=u1&role=viewer", "", 422},
		{"DELETE", chatPath + "?userId=u1&role=viewer&origin=web", "", 204},
		{"POST", "/v1/channels/2094979/chat-tokens", `{"requests":[{"userId":"a","role":"viewer"},{"userId":"b","role":"nope"}]}`, 200},
		{"POST", "/v1/channels/2094979/chat-tokens", `{"requests":[]}`, 400},
		{"GET", "/v1/channels/2094979/token", "", 200},
		{"GET", "/healthz", "", 200},
		{"GET", "/readyz", "", 200},
		{"GET", "/metrics", "", 200},
		{"GET", "/openapi.yaml", "", 200},
	}
	for _, r := range requests {
		w := do(e, r.method, r.target, r.body)
		if w.Code != r.status {
			t.Errorf("%s %s = %d, want %d: %s", r.method, r.target, w.Code, r.status, w.Body)
			continue
		}
		validate(t, router, r.method, r.target, r.body, w)
	}

	// Failure statuses, from a failing upstream.
	sim.Sim.SetErrorRate(1)
	w := do(e, "GET", chatPath+"?userId=new&role=viewer", "")
	if w.Code != 502 {
		t.Errorf("with Polyv failing: %d %s", w.Code, w.Body)
	}
	validate(t, router, "GET", chatPath+"?userId=new&role=viewer", "", w)
	sim.Sim.SetErrorRate(0)
	sim.Sim.SetLatency(time.Second)
	e = New(Options{Cache: c, APIKeys: []string{testKey}, Logger: newTestLogger(), RequestTimeout: 50 * time.Millisecond})
	w = do(e, "GET", chatPath+"?userId=slow&role=viewer", "")
	if w.Code != 504 {
		t.Errorf("with Polyv slow: %d %s", w.Code, w.Body)
	}
	validate(t, router, "GET", chatPath+"?userId=slow&role=viewer", "", w)
}

// validate checks one recorded response against the spec.
func validate(t *testing.T, router routers.Router, method, target, body string, w *httptest.ResponseRecorder) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		t.Errorf("%s %s: not in the spec: %v", method, target, err)
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 w.Code,
		Header:                 w.Header(),
		Body:                   io.NopCloser(bytes.NewReader(w.Body.Bytes())),
		Options:                &openapi3filter.Options{IncludeResponseStatus: true},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Errorf("%s %s -> %d does not match the spec: %v", method, target, w.Code, err)
	}
}

func init() {
	// The spec and metrics are text; check their presence, not their grammar.
	openapi3filter.RegisterBodyDecoder("application/yaml", openapi3filter.FileBodyDecoder)
}

// The spec's origin rule is the server's: whatever one accepts, so does the
// other.
func TestOriginRuleMatchesSpec(t *testing.T) {
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPISpec)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(doc.Components.Parameters["origin"].Value.Schema.Value.Pattern)
	for _, origin := range []string{"", "web", "app_2-x", strings.Repeat("a", 32), strings.Repeat("a", 33), "a b", "é", "web;"} {
		specOK := re.MatchString(origin)
		serverOK := validateChat(cache.Key{ChannelID: "1", UserID: "u", Role: "viewer", Origin: origin}) == nil
		if specOK != serverOK {
			t.Errorf("origin %q: the spec accepts it %v, the server %v", origin, specOK, serverOK)
		}
	}
}
