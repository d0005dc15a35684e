package main

import (
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/redisconn"
	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// The demo's wiring, reached only with -demo: an embedded Redis, an
// in-process Polyv simulator, and generated credentials. Nothing here runs
// in production.

// startEmbeddedRedis starts a miniredis on loopback that requires a password
// made up now.
func startEmbeddedRedis() (redis.UniversalClient, *miniredis.Miniredis, error) {
	mr := miniredis.NewMiniRedis()
	password := randomHex(16)
	mr.RequireAuth(password)
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, nil, fmt.Errorf("start embedded redis: %w", err)
	}
	rdb, err := redisconn.Open(redisconn.Options{URL: "redis://:" + password + "@" + mr.Addr()})
	if err != nil {
		mr.Close()
		return nil, nil, err
	}
	return rdb, mr, nil
}

// startDemo starts an in-process Polyv simulator and fills in generated
// credentials and an API key where the config has none.
func startDemo(cfg *Config) (stop func(), err error) {
	if cfg.AppID == "" {
		cfg.AppID = "demo-app"
	}
	if cfg.AppSecret == "" {
		cfg.AppSecret = polyv.Secret(randomHex(16))
	}
	if len(cfg.EncryptionKeys) == 0 {
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		cfg.EncryptionKeys = []cache.EncryptionKey{{ID: "demo", Key: key}}
	}
	if cfg.Keys.Len() == 0 && cfg.Auth != "none" {
		cfg.APIKeys = []string{"demo-" + randomHex(12)}
		cfg.Keys = httpapi.KeysFromList(cfg.APIKeys)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("demo simulator: %w", err)
	}
	sim := &http.Server{Handler: polyvsim.New(polyvsim.Options{AppID: cfg.AppID, AppSecret: cfg.AppSecret.Reveal()}), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = sim.Serve(ln) }()
	cfg.BaseURL = "http://" + ln.Addr().String()
	return func() { _ = sim.Close() }, nil
}
