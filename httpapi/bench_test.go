package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// BenchmarkHitPath is the server's own work for a local hit, in process
// and without the network: the whole echo stack (observer, recovery, body
// limit, auth, validation, the cache's Peek, the headers and the body)
// beside a bare echo handler writing a body of the same size. The
// difference is what tokencache adds to every hit.
func BenchmarkHitPath(b *testing.B) {
	const target = "/v1/channels/2094979/chat-token?userId=1b448be323&role=viewer&origin=web"
	sim := polyvsim.NewTestServer(polyvsim.Options{})
	b.Cleanup(sim.Close)
	client, err := polyv.New(polyv.Options{AppID: sim.Sim.AppID(), AppSecret: "sim-secret", BaseURL: sim.URL})
	if err != nil {
		b.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(b).Addr()})
	c, err := cache.New(rdb, client, cache.Options{LocalSize: cache.DefaultLocalSize})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	api := New(Options{Cache: c, APIKeys: []string{testKey}, Logger: newTestLogger()})
	warm := do(api, http.MethodGet, target, "")
	if warm.Code != http.StatusOK {
		b.Fatalf("warm-up: %d %s", warm.Code, warm.Body)
	}
	body := warm.Body.Bytes()

	bare := echo.New()
	bare.GET("/v1/channels/:channelId/chat-token", func(c echo.Context) error { return c.JSONBlob(http.StatusOK, body) })

	run := func(b *testing.B, e *echo.Echo) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req := httptest.NewRequestWithContext(context.Background(), http.MethodGet, target, nil)
				req.Header.Set("Authorization", "Bearer "+testKey)
				w := httptest.NewRecorder()
				e.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
	b.Run("bare_echo", func(b *testing.B) { run(b, bare) })
	b.Run("tokencache", func(b *testing.B) { run(b, api) })
}
