package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/polyv"
	"github.com/tokencache/tokencache/polyv/polyvsim"
)

// benchRedis is a real redis-server when there is one, else miniredis.
func benchRedis(b *testing.B) redis.UniversalClient {
	rdb := realRedis(b)
	return rdb
}

// BenchmarkGet measures the three paths side by side in one run:
// hit_local, hit_redis (local cache off), both again with encryption at
// rest, and a miss through the simulator.
func BenchmarkGet(b *testing.B) {
	b.Run("hit_local", func(b *testing.B) {
		c := newCache(b, benchRedis(b), &fakeUpstream{}, testOptions(nil))
		benchHits(b, c)
	})
	b.Run("hit_redis", func(b *testing.B) {
		c := newCache(b, benchRedis(b), &fakeUpstream{}, testOptions(func(o *Options) { o.LocalSize = 0 }))
		benchHits(b, c)
	})
	sealed := func(o *Options) { o.EncryptionKeys = []EncryptionKey{{ID: "k1", Key: make([]byte, 32)}} }
	b.Run("hit_local_encrypted", func(b *testing.B) {
		c := newCache(b, benchRedis(b), &fakeUpstream{}, testOptions(sealed))
		benchHits(b, c)
	})
	b.Run("hit_redis_encrypted", func(b *testing.B) {
		c := newCache(b, benchRedis(b), &fakeUpstream{}, testOptions(func(o *Options) { sealed(o); o.LocalSize = 0 }))
		benchHits(b, c)
	})
	b.Run("miss_simulator", func(b *testing.B) {
		sim := polyvsim.NewTestServer(polyvsim.Options{})
		b.Cleanup(sim.Close)
		client, err := polyv.New(polyv.Options{AppID: sim.Sim.AppID(), AppSecret: "sim-secret", BaseURL: sim.URL})
		if err != nil {
			b.Fatal(err)
		}
		c := newCache(b, benchRedis(b), client, testOptions(nil))
		var n atomic.Int64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				k := Key{ChannelID: "bench", UserID: fmt.Sprint(n.Add(1)), Role: "viewer"}
				if _, res, err := c.Get(context.Background(), k); err != nil || res != ResultMiss {
					b.Errorf("Get() = %v, %v", res, err)
					return
				}
			}
		})
	})
}

// benchHits reads 1000 warm keys round-robin.
func benchHits(b *testing.B, c *Cache) {
	ctx := context.Background()
	keys := make([]Key, 1000)
	for i := range keys {
		keys[i] = Key{ChannelID: "bench", UserID: fmt.Sprint(i), Role: "viewer", Origin: "web"}
		if _, _, err := c.Get(ctx, keys[i]); err != nil {
			b.Fatal(err)
		}
	}
	var n atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := c.Get(ctx, keys[n.Add(1)%int64(len(keys))]); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDecodeEntry is the decoding a Redis hit pays for the stored value.
func BenchmarkDecodeEntry(b *testing.B) {
	now := time.Now()
	e := entry{Token: &Token{Token: "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", MediaChannelKey: "f1e2d3c4b5a6f7e8d9c0b1a2f3e4d5c6",
		RoomID: "2094979", ChildRoomEnabled: "N", ChatAPIDomain: "apichat.polyv.net", ChatDomain: "chat.polyv.net", IssuedAt: now},
		Until: now.Add(5 * time.Hour)}
	raw := e.encode()
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := decodeEntry(raw); !ok {
			b.Fatal("not decoded")
		}
	}
}
